"""SplitEmbedding / SplitLMHead against a plain nn.Embedding / nn.Linear holding the merged rows."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from megaeeve.model.split import SplitEmbedding, SplitLMHead, _SplitLinear

BASE, ADDED, PADDING, HIDDEN = 11, 5, 3, 4


def _pair(bias: bool, padding: int):
    torch.manual_seed(0)
    emb, head = SplitEmbedding(BASE, ADDED, padding, HIDDEN, torch.float64), SplitLMHead(
        BASE, ADDED, padding, HIDDEN, bias, torch.float64)
    for p in [*emb.parameters(), *head.parameters()]:
        nn.init.normal_(p)
    plain_emb = nn.Embedding(BASE + ADDED + padding, HIDDEN, dtype=torch.float64)
    plain_head = nn.Linear(HIDDEN, BASE + ADDED + padding, bias=bias, dtype=torch.float64)
    with torch.no_grad():
        zeros = torch.zeros(padding, HIDDEN, dtype=torch.float64)
        plain_emb.weight.copy_(torch.cat([emb.original, emb.added, zeros]))
        plain_head.weight.copy_(torch.cat([head.original, head.added, zeros]))
        if bias:
            plain_head.bias.copy_(torch.cat([head.bias_original, head.bias_added, zeros[:, 0] - torch.inf]))
    return emb, head, plain_emb, plain_head


@pytest.mark.parametrize("bias,padding", [(True, PADDING), (False, PADDING), (True, 0)])
def test_split_matches_merged_values_and_gradients(bias, padding):
    emb, head, plain_emb, plain_head = _pair(bias, padding)
    ids = torch.tensor([[0, 3, BASE - 1, BASE, BASE + ADDED - 1, 7], [BASE + 2, 1, 2, BASE + 1, 9, 10]])
    targets = torch.tensor([[3, BASE, 1, 0, BASE + 4, 2], [5, BASE + 3, 4, 8, 6, BASE]])
    losses = []
    for e, h in ((emb, head), (plain_emb, plain_head)):
        logits = h(e(ids) * 0.5)  # the split's -inf padding columns change nothing; the plain head's would
        losses.append((logits, F.cross_entropy(logits[..., :BASE + ADDED].flatten(0, 1), targets.flatten())))
        losses[-1][1].backward()
    (split_logits, split_loss), (plain_logits, plain_loss) = losses
    real = BASE + ADDED
    torch.testing.assert_close(split_logits[..., :real], plain_logits[..., :real])
    assert torch.isneginf(split_logits[..., real:]).all()
    torch.testing.assert_close(split_loss, plain_loss)
    for split_mod, plain_mod, weight in ((emb, plain_emb, "weight"), (head, plain_head, "weight"),
                                         *([(head, plain_head, "bias")] if bias else [])):
        prefix = "" if weight == "weight" else "bias_"
        grad = getattr(plain_mod, weight).grad
        torch.testing.assert_close(getattr(split_mod, prefix + "original").grad, grad[:BASE])
        torch.testing.assert_close(getattr(split_mod, prefix + "added").grad, grad[BASE:real])
    if padding:
        assert not emb(torch.tensor([real + padding - 1])).any()


def test_lm_head_gradcheck():
    _, head, _, _ = _pair(True, PADDING)
    hidden = torch.randn(2, 3, HIDDEN, dtype=torch.float64, requires_grad=True)

    def real_logits(h, *params):
        return _SplitLinear.apply(h, *params, PADDING)[..., :BASE + ADDED]

    params = [p.detach().clone().requires_grad_() for p in (head.original, head.added, head.bias_original,
                                                            head.bias_added)]
    assert torch.autograd.gradcheck(real_logits, (hidden, *params))


def test_frozen_original_gets_no_gradient():
    emb, head, _, _ = _pair(True, PADDING)
    for p in (emb.original, head.original, head.bias_original):
        p.requires_grad_(False)
    head(emb(torch.tensor([[1, BASE, BASE + 2]])))[..., :BASE + ADDED].logsumexp(-1).sum().backward()
    assert emb.original.grad is None and head.original.grad is None and head.bias_original.grad is None
    assert head.added.grad.abs().sum() > 0 and emb.added.grad[[0, 2]].abs().sum() > 0


@pytest.mark.parametrize("bias", [True, False])
def test_no_added_rows(bias):
    """num_added = 0: no `added` parameter at all; values and gradients are those of the base rows."""
    torch.manual_seed(0)
    emb, head = SplitEmbedding(BASE, 0, PADDING, HIDDEN, torch.float64), SplitLMHead(BASE, 0, PADDING, HIDDEN, bias,
                                                                                        torch.float64)
    assert emb.added is None and head.added is None and head.bias_added is None
    assert {n for n, _ in head.named_parameters()} == ({"original", "bias_original"} if bias else {"original"})
    for p in [*emb.parameters(), *head.parameters()]:
        nn.init.normal_(p)
    ids = torch.tensor([[0, 3, BASE - 1, BASE + 1], [BASE, 1, 2, 9]])  # BASE.. are padding ids
    hidden = emb(ids)
    assert torch.equal(hidden[0, :3], emb.original[[0, 3, BASE - 1]]) and not hidden[0, 3].any()
    logits = head(hidden.detach().requires_grad_())
    expected = hidden @ head.original.t() + (head.bias_original if bias else 0)
    torch.testing.assert_close(logits[..., :BASE], expected)
    assert logits.shape[-1] == BASE + PADDING and torch.isneginf(logits[..., BASE:]).all()
    params = [head.original.detach().clone().requires_grad_(),
              head.bias_original.detach().clone().requires_grad_() if bias else None]
    h = torch.randn(2, 3, HIDDEN, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda h, w, *b: _SplitLinear.apply(h, w, None, b[0] if b else None, None, PADDING)[..., :BASE],
        (h, params[0], *([params[1]] if bias else [])))
