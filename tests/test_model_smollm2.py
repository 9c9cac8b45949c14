"""The real SmolLM2-135M (gguf, Llama, tied embeddings) extended: exact base logits, untied, EEVE rows."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from megaeeve import assets
from transformers import AutoModelForCausalLM

from megaeeve.model import export_hf, extend_model, load_model_dir
from megaeeve.model.checkpoint import MODEL_FILE
from megaeeve.model.extend import describe, load_base_model
from megaeeve.tokenizer_io import load_tokenizer
from _model_helpers import expand


def same_logits(got: torch.Tensor, base: torch.Tensor) -> None:
    """The base tokens' logits of the extended model are the base model's, up to the order of the fp32 sums: the
    split head (and the export's padded lm_head) writes them into a buffer 49,216 columns wide where the base's
    is 49,152, and on some CPUs the BLAS then takes another kernel (bitwise equal on the AMD EPYC VMs, up to 3e-5 on
    an Intel Xeon one, for logits of magnitude ~10-20). The tiny models' tests stay bitwise."""
    torch.testing.assert_close(got, base, rtol=0, atol=1e-4)
    torch.testing.assert_close(got.log_softmax(-1), base.log_softmax(-1), rtol=0, atol=1e-4)


@pytest.mark.slow
def test_smollm2_gguf_extension(tmp_path):
    gguf = assets.smollm2_gguf()
    base_tok = load_tokenizer(gguf)
    (tmp_path / "base-tok").mkdir()
    base_tok.save(str(tmp_path / "base-tok" / "tokenizer.json"))
    expanded = expand(base_tok, tmp_path / "expanded")
    base = load_base_model(gguf).eval()  # what --base-model FILE.gguf loads (~20 s): once, shared with the check
    meta = extend_model(gguf, tmp_path / "base-tok" / "tokenizer.json", tokenizer=expanded,
                        output=tmp_path / "stage0", model=base)
    assert (meta.base_vocab_size, meta.num_added, meta.padded_vocab_size) == (49152, 7, 49216)
    assert meta.tied_untied and "untied" in describe(meta)

    split = load_model_dir(tmp_path / "stage0")
    ids = torch.tensor([base_tok.encode("The capital of South Korea is Seoul, and").ids])
    with torch.no_grad():
        base_logits, split_logits = base(ids).logits, split(ids).logits
    same_logits(split_logits[..., :49152], base_logits)
    weights = load_file(str(tmp_path / "stage0" / MODEL_FILE))
    emb = base.model.embed_tokens.weight
    pieces = base_tok.encode(" 대한민국", add_special_tokens=False).ids
    torch.testing.assert_close(weights["model.embed_tokens.added"][0], emb[pieces].mean(0), rtol=0, atol=1e-6)
    assert torch.equal(weights["lm_head.added"][0], emb[pieces[0]])

    export_hf(tmp_path / "stage0", tmp_path / "exported")
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "exported")).eval()
    assert plain.lm_head.weight.data_ptr() != plain.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        same_logits(plain(ids).logits[..., :49152], base_logits)
