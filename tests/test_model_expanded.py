"""The extended model on a tokenizer from the real tools/expand_vocab.py pipeline (phi-2 base, Korean)."""

from __future__ import annotations


import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from megaeeve import assets
from megaeeve.model import export_hf, extend_model, load_model_dir
from megaeeve.model.checkpoint import MODEL_FILE
from megaeeve.vocab import ExpandConfig, expand_vocab
from _model_helpers import save_model, tiny_phi


@pytest.fixture(scope="module")
def extended(module_tmp, phi2_tokenizer_dir, korean_split):
    tmp = module_tmp("expanded-model")
    corpus = assets.write_jsonl(korean_split[0][:400], tmp / "ko.jsonl")
    expand_vocab(ExpandConfig(str(phi2_tokenizer_dir), [str(corpus)], str(tmp / "tokenizer"),
                              intermediate_vocab_size=600, min_frequency=5, progress=False), log=lambda *a: None)
    base = tiny_phi()
    meta = extend_model(save_model(base, tmp / "base"), phi2_tokenizer_dir, tokenizer=tmp / "tokenizer",
                        output=tmp / "stage0")
    return tmp, base, meta


def test_real_expansion_extends_exactly(extended, korean_split, english_docs):
    tmp, base, meta = extended
    assert meta.base_vocab_size == 50295 and meta.num_added > 100
    tok = Tokenizer.from_file(str(tmp / "stage0" / "tokenizer.json"))
    base_tok = Tokenizer.from_file(str(tmp / "stage0" / "base_tokenizer" / "tokenizer.json"))
    split = load_model_dir(tmp / "stage0")
    english = torch.tensor([tok.encode(english_docs[3][:300]).ids[:48]])
    assert english.max() < meta.base_vocab_size
    with torch.no_grad():
        assert torch.equal(split(english).logits[..., :meta.base_vocab_size], base(english).logits[..., :50295])
    # every new BPE token's input row is the mean of base rows of pieces spelling exactly its bytes
    weights = load_file(str(tmp / "stage0" / MODEL_FILE))
    emb = base.model.embed_tokens.weight
    for new_id in range(50295, 50295 + meta.num_added, 37):
        text = tok.id_to_token(new_id)
        pieces = [t.id for t in base_tok.model.tokenize(text)]
        assert "".join(base_tok.id_to_token(i) for i in pieces) == text
        torch.testing.assert_close(weights["model.embed_tokens.added"][new_id - 50295], emb[pieces].mean(0),
                                   rtol=0, atol=1e-7)


def test_real_expansion_exports(extended, korean_split):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp, _, meta = extended
    export_hf(tmp / "stage0", tmp / "exported")
    model = AutoModelForCausalLM.from_pretrained(str(tmp / "exported")).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tmp / "exported"))
    ids = tokenizer(korean_split[1][0][:120], return_tensors="pt").input_ids
    assert ids.max() >= meta.base_vocab_size  # the Korean text uses new tokens
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits[..., :meta.vocab_size],
                                   load_model_dir(tmp / "stage0")(ids).logits[..., :meta.vocab_size],
                                   rtol=1e-6, atol=1e-6)
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 4 and out.max() < meta.vocab_size
