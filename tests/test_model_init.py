"""New-row initialisation: which base pieces a new token's rows come from (EEVE, for byte-level and metaspace
BPE), and the mean / random baselines."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from megaeeve import assets
from megaeeve.errors import InitError
from megaeeve.model.init import eeve_rows, mean_rows, random_rows, token_pieces


@pytest.fixture(scope="module")
def metaspace_base(english_docs) -> Tokenizer:
    """A small SentencePiece-style BPE (Llama-2 / SOLAR layout: "▁" marks a word start)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.train_from_iterator(english_docs[:200], trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>"]))
    return tok


def _append(base: Tokenizer, tokens: list[str]) -> Tokenizer:
    data = json.loads(base.to_str())
    for token in tokens:
        assert token not in data["model"]["vocab"]
        data["model"]["vocab"][token] = len(data["model"]["vocab"])
    return Tokenizer.from_str(json.dumps(data))


def test_metaspace_word_internal_token_gets_no_word_start_piece(metaspace_base):
    expanded = _append(metaspace_base, ["▁expressionism", "essionism"])
    n = metaspace_base.get_vocab_size()
    start, internal = token_pieces(metaspace_base, expanded, range(n, n + 2))
    assert "".join(metaspace_base.id_to_token(i) for i in start) == "▁expressionism"
    assert "".join(metaspace_base.id_to_token(i) for i in internal) == "essionism"
    # decode + encode would have split "▁essionism": the word-start marker is not part of this token
    assert metaspace_base.encode(expanded.decode([n + 1])).tokens[0].startswith("▁")


def test_byte_level_partial_character_and_added_tokens():
    base = assets.gpt2_tokenizer()
    expanded = _append(base, ["ëĮ"])  # first two UTF-8 bytes of "대"
    expanded.add_tokens(["<|im_start|>", " 헌법"])
    n = base.get_vocab_size()
    partial, special, word = token_pieces(base, expanded, range(n, n + 3))
    assert "".join(base.id_to_token(i) for i in partial) == "ëĮ"
    assert special == base.encode("<|im_start|>", add_special_tokens=False).ids
    assert word == base.encode(" 헌법").ids


def test_eeve_rows_rule():
    base_in, base_out, bias = torch.randn(10, 3), torch.randn(10, 3), torch.randn(10)
    rows_in, rows_out, rows_bias = eeve_rows(base_in, base_out, bias, [[1, 4, 4], [7]])
    torch.testing.assert_close(rows_in, torch.stack([base_in[[1, 4, 4]].mean(0), base_in[7]]))
    assert torch.equal(rows_out, base_out[[1, 7]]) and torch.equal(rows_bias, bias[[1, 7]])


def test_token_without_base_pieces_is_an_error(metaspace_base):
    expanded = _append(metaspace_base, [""])
    n = metaspace_base.get_vocab_size()
    with pytest.raises(InitError, match=f"new token id {n}"):
        token_pieces(metaspace_base, expanded, range(n, n + 1))


def test_mean_rows_rule():
    """LLaMA-Factory's noisy mean: mean of the base rows + N(0, 1/hidden) noise, drawn once per row and side."""
    base_in, base_out, bias = torch.randn(50, 16), torch.randn(50, 16) + 3, torch.randn(50)
    rows_in, rows_out, rows_bias = mean_rows(base_in, base_out, bias, 4000)
    for rows, base in ((rows_in, base_in), (rows_out, base_out)):
        noise = rows - base.mean(0)
        assert rows.shape == (4000, 16) and abs(noise.mean()) < 0.01 and abs(noise.std() - 0.25) < 0.01
    assert not torch.allclose(rows_in - base_in.mean(0), rows_out - base_out.mean(0))
    assert torch.equal(rows_bias, bias.mean().expand(4000))
    assert torch.equal(mean_rows(base_in, base_out, None, 4000)[0], rows_in)  # fixed seed: reproducible


def test_random_rows_rule():
    rows_in, rows_out, rows_bias = random_rows(4000, 8, 0.02, bias=True)
    for rows in (rows_in, rows_out):
        assert rows.shape == (4000, 8) and abs(rows.mean()) < 0.001 and abs(rows.std() - 0.02) < 0.001
    assert not torch.equal(rows_in, rows_out) and torch.equal(rows_bias, torch.zeros(4000))
    assert random_rows(3, 8, 0.02, bias=False)[2] is None
