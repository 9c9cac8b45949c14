"""--init fit (megaeeve/model/fit.py): the mass-preserving output prior, the fold, the input and output fits.

The prior's promise is exact: every base token outside the first-piece groups keeps the base model's
probability. It is checked against the base model's own log-softmax on real text, through a real lm_head bias
(tiny Phi) and on the real SmolLM2-135M's logits with the offsets added (before the fold). The fits' promise is
an outcome: lower held-out Korean bits/char than EEVE's rows at stage 0, scored as `megaeeve evaluate` scores.
"""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from megaeeve import assets
from megaeeve.model import export_hf, extend_model, load_model_dir, read_model_meta
from megaeeve.model.checkpoint import read_pieces
from megaeeve.model.fit import FitSettings, first_piece_groups, group_log_shares, offsets_tensor
from megaeeve.model.extend import load_base_model, report_counts
from megaeeve.model.init import token_pieces
from megaeeve.tokenizer_io import load_tokenizer
from megaeeve.vocab import ExpandConfig, expand_vocab
from _model_helpers import expand, save_model, tiny_phi

REPO = Path(__file__).resolve().parents[1]
PRIOR_ONLY = FitSettings(input_steps=0, output_steps=0)


def _expand(base_tok_dir, docs: list[str], out: Path) -> Path:
    corpus = assets.write_jsonl(docs, out.parent / f"{out.name}-ko.jsonl")
    expand_vocab(ExpandConfig(str(base_tok_dir), [str(corpus)], str(out), intermediate_vocab_size=600, min_frequency=5,
                              progress=False), log=lambda *a: None)
    return out


@pytest.fixture(scope="module")
def phi(tmp_path_factory, phi2_tokenizer_dir, korean_split):
    tmp = tmp_path_factory.mktemp("fit-phi")
    tokenizer = _expand(phi2_tokenizer_dir, korean_split[0][:400], tmp / "tokenizer")
    base = tiny_phi()
    base_dir = save_model(base, tmp / "base")
    return {"tmp": tmp, "tokenizer": tokenizer, "base": base.eval(), "base_dir": base_dir,
            "base_tok_dir": phi2_tokenizer_dir, "corpus": tmp / "tokenizer-ko.jsonl"}


def test_report_counts_first_pieces_as_an_independent_count_does(phi):
    """expansion_report.json's first_piece_counts and new-token frequencies equal a plain re-count."""
    report = json.loads((phi["tokenizer"] / "expansion_report.json").read_text())
    expanded = Tokenizer.from_file(str(phi["tokenizer"] / "tokenizer.json"))
    base = load_tokenizer(phi["base_tok_dir"])
    docs = [json.loads(line)["text"] for line in phi["corpus"].open()]
    ids = np.concatenate([e.ids for e in expanded.encode_batch(docs, add_special_tokens=False)])
    recount = np.bincount(ids, minlength=expanded.get_vocab_size())
    first = report["new_token_ids"]["first"]
    pieces = token_pieces(base, expanded, range(first, report["vocab_size"]))
    assert set(map(int, report["first_piece_counts"])) == set(first_piece_groups(pieces, first))
    assert {int(i): n for i, n in report["first_piece_counts"].items()} == {
        int(i): int(recount[int(i)]) for i in report["first_piece_counts"]}
    counts = report_counts(phi["tokenizer"])
    assert all(counts[t["id"]] == recount[t["id"]] for t in report["new_tokens"])


def _log_probs(model, ids: torch.Tensor, vocab: int) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits[..., :vocab].float().log_softmax(-1)


def test_prior_keeps_every_base_probability_outside_the_groups_through_a_bias(phi, english_docs, korean_split):
    """Tiny Phi (lm_head bias): on base-tokenized English and Korean, every base token outside the groups has the
    base model's log-probability to fp32 precision, and each group's members sum to the base's first piece."""
    out = phi["tmp"] / "stage0-prior"
    meta = extend_model(phi["base_dir"], phi["base_tok_dir"], tokenizer=phi["tokenizer"], output=out,
                        model=phi["base"], init="fit",
                        fit=PRIOR_ONLY)
    assert meta.init == "fit" and meta.fit["settings"]["output_steps"] == 0 and "fold" not in meta.fit
    split = load_model_dir(out)
    groups = first_piece_groups(read_pieces(out, meta), meta.base_vocab_size)
    base_tok = load_tokenizer(phi["base_tok_dir"])
    outside = torch.ones(meta.base_vocab_size, dtype=torch.bool)
    outside[list(groups)] = False
    for text in (english_docs[5][:400], korean_split[1][0][:200]):
        ids = torch.tensor([base_tok.encode(text).ids[:96]])
        new, old = _log_probs(split, ids, meta.vocab_size), _log_probs(phi["base"], ids, meta.base_vocab_size)
        assert (new[..., :meta.base_vocab_size][..., outside] - old[..., outside]).abs().max() < 2e-5
        for first, members in groups.items():
            together = new[..., [first, *members]].logsumexp(-1)
            assert (together - old[..., first]).abs().max() < 2e-5
        assert (new[..., meta.base_vocab_size:] - old[..., :1]).abs().max() > 0.1  # the new tokens did change


def test_new_input_rows_are_the_means_direction_at_a_base_rows_norm(phi, tmp_path):
    """--init fit keeps EEVE's direction for a new input row (the mean of its pieces, computed here from the base
    model's own embedding and the base tokenizer) at the base input rows' mean norm times input_norm; 0 keeps
    EEVE's row as it is."""
    base_emb = phi["base"].get_input_embeddings().weight.detach().float()
    expanded = Tokenizer.from_file(str(phi["tokenizer"] / "tokenizer.json"))
    for norm in (1.0, 1.5, 0.0):
        out = tmp_path / f"norm-{norm}"
        meta = extend_model(phi["base_dir"], phi["base_tok_dir"], tokenizer=phi["tokenizer"], output=out,
                            model=phi["base"], init="fit", fit=FitSettings(input_norm=norm))
        pieces = token_pieces(load_tokenizer(phi["base_tok_dir"]), expanded, range(meta.base_vocab_size, meta.vocab_size))
        mean = torch.stack([base_emb[p].mean(0) for p in pieces])
        expected = mean if not norm else mean / mean.norm(dim=1, keepdim=True) * base_emb.norm(dim=1).mean() * norm
        with torch.no_grad():
            rows = load_model_dir(out).get_input_embeddings()(torch.arange(meta.base_vocab_size, meta.vocab_size)[None])
        assert (rows[0].float() - expected).abs().max() < 1e-5, norm
        assert (mean.norm(dim=1) < base_emb.norm(dim=1).mean()).float().mean() > 0.5  # the mean does shrink


def test_fit_settings_are_refused_clearly(phi, tmp_path, capsys):
    tool = runpy.run_path(str(REPO / "tools" / "extend_model.py"))["main"]
    args = ["--base-model", str(phi["base_dir"]), "--base-tokenizer", str(phi["base_tok_dir"])]
    handmade = expand(load_tokenizer(phi["base_tok_dir"]), tmp_path / "handmade")  # its report has no counts
    assert tool(args + ["--tokenizer", str(handmade), "--output", str(tmp_path / "a")]) == 2
    assert "--prior none" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    with pytest.raises(SystemExit):
        tool(args + ["--tokenizer", str(phi["tokenizer"]), "--output", str(tmp_path / "b"), "--fit-output-steps", "-1"])
    assert "--fit-output-steps must be >= 0" in capsys.readouterr().err
    missing = tmp_path / "missing.jsonl"
    assert tool(args + ["--tokenizer", str(phi["tokenizer"]), "--output", str(tmp_path / "c"),
                        "--fit-text", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory, korean_split):
    tmp = tmp_path_factory.mktemp("fit-smollm2")
    from transformers import AutoTokenizer

    gguf = assets.smollm2_gguf()  # its tokenizer as the pipeline converts it: bos/eos kept, as evaluation needs
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(tmp / "base-tok"))
    tokenizer = _expand(tmp / "base-tok", korean_split[0], tmp / "tokenizer")
    return {"tmp": tmp, "gguf": gguf, "base": load_base_model(gguf).eval(), "tokenizer": tokenizer,
            "base_tok": tmp / "base-tok"}


@pytest.mark.slow
def test_prior_is_exact_on_smollm2_before_the_fold(smollm2, english_docs, korean_split):
    """SmolLM2 has no lm_head bias: the offsets added to its real logits keep every base token outside the
    groups exact; the model directory folds them into the rows and records how well u . h ~= 1 held."""
    s = smollm2
    out = s["tmp"] / "stage0-prior"
    meta = extend_model(s["gguf"], s["base_tok"], tokenizer=s["tokenizer"], output=out, model=s["base"], init="fit",
                        fit=PRIOR_ONLY)
    fold = meta.fit["fold"]
    assert abs(fold["mean"] - 1) < 0.05 and fold["samples"] > 1000
    pieces = read_pieces(out, meta)
    shares = group_log_shares(pieces, meta.base_vocab_size, report_counts(s["tokenizer"]))
    offsets = offsets_tensor(shares, meta.vocab_size)
    firsts = torch.tensor([p[0] for p in pieces])
    groups = first_piece_groups(pieces, meta.base_vocab_size)
    outside = torch.ones(meta.base_vocab_size, dtype=torch.bool)
    outside[list(groups)] = False
    base_tok = load_tokenizer(s["base_tok"])
    for text in (english_docs[7][:500], korean_split[1][1][:200]):
        ids = torch.tensor([base_tok.encode(text).ids[:128]])
        with torch.no_grad():
            z = s["base"](ids).logits.double()  # the base's fp32 logits, the softmax in fp64: only the shares count
        expanded = torch.cat([z, z[..., firsts]], -1) + offsets.double()
        new, old = expanded.log_softmax(-1), z.log_softmax(-1)
        assert (new[..., :meta.base_vocab_size][..., outside] - old[..., outside]).abs().max() < 1e-6
        folded = _log_probs(load_model_dir(out), ids, meta.vocab_size)
        assert (folded[..., :meta.base_vocab_size][..., outside] - old[..., outside]).abs().max() > 0  # a fold costs


@pytest.mark.slow
def test_fit_keeps_english_where_eeve_does_not_and_exports_as_scored(smollm2, korean_split, english_docs):
    """Stage 0 with --init fit's defaults (EEVE's rows + the prior, folded into SmolLM2's rows) stays within 0.01
    bits/char of the base on English, where EEVE's rows lose more; the plain-transformers export scores what the
    split directory scores (the fold lives in the rows, nothing is lost on the way out)."""
    from transformers import AutoModelForCausalLM

    from megaeeve.eval import EvalSettings, evaluate_model, load_hf_tokenizer

    s = smollm2
    held = {"ko": [d[:300] for d in korean_split[1][:6]], "en": [english_docs[-1][:1500]]}
    settings = EvalSettings(context=512, gen_tokens=0)
    scores = {}
    for init in ("eeve", "fit"):
        out = s["tmp"] / f"stage0-{init}"
        extend_model(s["gguf"], s["base_tok"], tokenizer=s["tokenizer"], output=out, model=s["base"], init=init)
        res = evaluate_model(load_model_dir(out), load_hf_tokenizer(out), held, settings)
        scores[init] = {k: r.bits_per_char for k, r in res.items()}
    base = evaluate_model(s["base"], load_hf_tokenizer(s["base_tok"]), held, settings)["en"].bits_per_char
    assert abs(scores["fit"]["en"] - base) < min(0.01, abs(scores["eeve"]["en"] - base) / 2), (scores, base)
    export_hf(s["tmp"] / "stage0-fit", s["tmp"] / "export-fit")
    plain = AutoModelForCausalLM.from_pretrained(str(s["tmp"] / "export-fit")).eval()
    exported = evaluate_model(plain, load_hf_tokenizer(s["tmp"] / "export-fit"), held, settings)
    assert abs(exported["ko"].bits_per_char - scores["fit"]["ko"]) < 1e-3
    assert abs(exported["en"].bits_per_char - scores["fit"]["en"]) < 1e-3
    assert read_model_meta(s["tmp"] / "stage0-fit").init == "fit"
