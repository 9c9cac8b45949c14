"""A stage's objective (RUN.yaml `stages.N.objective`): next-token loss, distillation from the base model, or both.

Extension costs quality before any training, though the base model already knows the new language through
its byte pieces. Each new token is a run of consecutive base tokens (its pieces: megaeeve/model/pieces.py), so
the base model's summed log-likelihood of the pieces is a target for the expanded model's log-likelihood of the
token, at every position (ALM, Minixhofer, Vulić, Ponti 2025, arXiv 2503.20083, with an exact alignment
instead of ALM's approximate one):

- `lm`: mean next-token cross entropy.
- `distill`: ALM's binarised KL between the teacher's and the student's chunk probabilities at every student
  position, plus an optional hidden-state term at chunk ends (`DistillSpec.hidden_weight`).
- `mixed`: (1 - weight) * lm + weight * distill.

Packing: the teacher reads the student sample with every new id replaced by its pieces. An expansion is
several times longer than the sample (about 3.5 base ids per token on Korean), so it is cut into windows no
longer than the teacher's context (`max_position_embeddings`) as `megaeeve evaluate` cuts documents
(megaeeve/eval/score.py: windows): each piece is scored once, in the first window or with at least half a
window of context before it, and a position past the context is never scored by an extrapolating model. The
windows of a micro-batch are right-padded to the longest and run in one forward (causal attention: the
padding after a window changes none of its positions; one forward per call keeps ZeRO-3 ranks in step).

Every objective returns per-sample means of its terms, `lm` always, so evaluation can weight samples and the
training loop logs the terms of a distilling stage.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple, Protocol

import torch
import torch.nn.functional as F

from megaeeve.model.pieces import PieceTable
from megaeeve.model.split import SplitLMHead
from megaeeve.stages import DistillSpec

if TYPE_CHECKING:  # an annotation only: importing the plan pulls in DeepSpeed through training.checkpoint
    from megaeeve.training.plan import StagePlan

EPS = 1e-6  # chunk log-probabilities (after the temperature) are clamped to <= -EPS: log(1 - p) stays finite


class TeacherChunks(NamedTuple):
    chunks: torch.Tensor  # [batch, seq] per student position: the teacher's summed log-probability of the next token
    hidden: torch.Tensor | None  # [batch, seq, hidden] its final state after each token's last piece, if captured
    flops: float  # the teacher's forward over its windows, padding included


class ObjectiveOutput(NamedTuple):
    loss: torch.Tensor  # the scalar to backpropagate: mean over the batch
    tokens: int  # predicted positions
    metrics: dict[str, torch.Tensor]  # term -> per-sample means [batch], detached; "lm" (cross entropy) always
    extra_flops: float = 0.0  # FLOPs spent outside the student (the teacher's forward, its padding included)


class Objective(Protocol):
    def __call__(self, model: Any, tokens: torch.Tensor) -> ObjectiveOutput:
        """`model`: the student (engine or module); `tokens`: samples [batch, seq + 1]."""


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log P(label | context) [batch, seq] in fp32, over every column of `logits` [batch, seq, vocab]."""
    flat = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none")
    return -flat.view(labels.shape)


def lm_objective(model: Any, tokens: torch.Tensor) -> ObjectiveOutput:
    """Mean next-token cross entropy."""
    tokens = tokens.to(model.device)
    labels = tokens[:, 1:]
    nll = -token_logprobs(model(input_ids=tokens[:, :-1], use_cache=False).logits, labels)
    return ObjectiveOutput(nll.mean(), labels.numel(), {"lm": nll.detach().mean(1)})


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate on both sides of log(1/2) (Maechler 2012)."""
    return torch.where(x < -math.log(2), torch.log1p(-x.exp()), torch.log(-torch.expm1(x)))


def binarised_kl(teacher: torch.Tensor, student: torch.Tensor, temperature: float) -> torch.Tensor:
    """temperature * KL(Bernoulli(p_t) || Bernoulli(p_s)), elementwise, for chunk log-probabilities log p
    scaled by 1 / temperature.

    Chunk likelihoods of different outcomes do not form a distribution, so ALM compares each as the
    Bernoulli "this chunk comes next" against "it does not". A high temperature lifts every chunk's p
    towards 1, so improbable chunks count too; in the limit the loss is the generalised KL of the
    negative log-likelihoods a (teacher) and b (student), b - a + a log(a / b), whose gradient in b is
    1 - a / b: that of cross entropy while the student is far below the teacher, vanishing at it. The
    factor `temperature` keeps that scale whatever the temperature (as Hinton et al. scale soft targets).
    Zero exactly when the two are equal.
    """
    t = (teacher / temperature).clamp(max=-EPS)
    s = (student / temperature).clamp(max=-EPS)
    return temperature * (t.exp() * (t - s) + -torch.expm1(t) * (_log1mexp(t) - _log1mexp(s)))


@contextlib.contextmanager
def final_states(model: Any, capture: bool) -> Iterator[list[torch.Tensor]]:
    """While open, the hidden states entering the model's lm_head (any architecture), if `capture`."""
    states: list[torch.Tensor] = []
    head = next(m for m in model.modules() if isinstance(m, SplitLMHead))
    handle = head.register_forward_pre_hook(lambda _, args: states.append(args[0])) if capture else None
    try:
        yield states
    finally:
        if handle is not None:
            handle.remove()


@dataclass
class ChunkDistillation:
    """Objectives `distill` and `mixed` against a frozen teacher (megaeeve/training/teacher.py)."""

    teacher: Any  # the base model: a ZeRO-3 inference engine or a module, logits over the expanded layout
    table: PieceTable
    spec: DistillSpec
    lm_weight: float  # 0 for `distill`, 1 - spec.weight for `mixed`
    base_vocab_size: int
    teacher_flops: Callable[[int], float] = field(init=False)  # forward FLOPs per token at a sequence length
    context: int = field(init=False)  # the teacher's max_position_embeddings: the longest window it reads

    def __post_init__(self) -> None:
        from megaeeve.model import parameter_roles
        from megaeeve.training.throughput import forward_flops_per_token

        module = getattr(self.teacher, "module", self.teacher)  # an inference engine wraps the module
        self.teacher_flops = functools.partial(forward_flops_per_token, module, parameter_roles(module))
        self.context = module.config.max_position_embeddings

    def teacher_chunks(self, tokens: torch.Tensor, capture: bool) -> TeacherChunks:
        """Per student position i: the teacher's summed log P(pieces of token i + 1 | pieces before) [batch, seq]
        in fp32, and (if `capture`) its final hidden state after the last piece of token i [batch, seq, hidden],
        each piece scored in the one window (score.windows) that scores it."""
        from megaeeve.eval.score import windows

        expansion = self.table.expand(tokens)
        ids, seq = expansion.ids, tokens.shape[1] - 1
        # Windows of context + 1 ids: the last one of each is only a target, so the teacher reads <= context.
        cut = [w for row, n in enumerate(expansion.ends[:, -1].tolist())
               for w in windows(row, ids[row, :n].tolist(), self.context + 1, self.context // 2)]
        width = max(len(w.ids) for w in cut)
        padded = torch.tensor([w.ids + [0] * (width - len(w.ids)) for w in cut], device=ids.device)
        inputs, targets = padded[:, :-1], padded[:, 1:]
        # Every scored input position j of window k (it predicts window id j + 1) and the sample position it is.
        scored = [(k, j, w.doc, w.start + j) for k, w in enumerate(cut) for j in range(w.first - 1, len(w.ids) - 1)]
        k, j, row, at = torch.tensor(scored, device=ids.device).unbind(1)
        with torch.no_grad(), final_states(self.teacher, capture) as states:
            logits = self.teacher(input_ids=inputs, use_cache=False).logits[..., :self.base_vocab_size].float()
            lp = logits.gather(-1, targets[..., None]).squeeze(-1) - logits.logsumexp(-1)
            piece = lp.new_zeros(len(ids), ids.shape[1] - 1).index_put_((row, at), lp[k, j])  # predicts ids[:, 1:]
            # Sum each token's pieces; bucket 0 (the first token, never predicted) and seq + 1 (padding) are dropped.
            chunks = piece.new_zeros(len(ids), seq + 2).scatter_add_(1, expansion.owner[:, 1:], piece)[:, 1:seq + 1]
            hidden = None
            if capture:
                state = states[0].new_zeros(len(ids), ids.shape[1] - 1, states[0].shape[-1])
                state.index_put_((row, at), states[0][k, j])
                last = (expansion.ends[:, :seq] - 1).unsqueeze(-1).expand(-1, -1, state.shape[-1])
                hidden = state.gather(1, last)
        return TeacherChunks(chunks, hidden, inputs.numel() * self.teacher_flops(inputs.shape[1]))

    def __call__(self, model: Any, tokens: torch.Tensor) -> ObjectiveOutput:
        tokens = tokens.to(model.device)
        labels = tokens[:, 1:]
        capture = self.spec.hidden_weight > 0
        with final_states(model, capture) as states:
            student = token_logprobs(model(input_ids=tokens[:, :-1], use_cache=False).logits, labels)
        teacher, teacher_states, teacher_flops = self.teacher_chunks(tokens, capture)
        distill = binarised_kl(teacher, student, self.spec.temperature).mean(1)
        lm = -student.mean(1)
        metrics = {"lm": lm, "distill": distill}
        target = distill
        if capture:  # squared error relative to the teacher's state norm: no scale to tune per model
            diff = (states[0].float() - teacher_states.float()).square().sum((1, 2))
            metrics["hidden"] = diff / teacher_states.float().square().sum((1, 2))
            target = target + self.spec.hidden_weight * metrics["hidden"]
        loss = self.lm_weight * lm + (1 - self.lm_weight) * target
        return ObjectiveOutput(loss.mean(), labels.numel(), {k: v.detach() for k, v in metrics.items()},
                               teacher_flops)


def stage_objective(plan: StagePlan) -> Objective:
    """The planned stage's objective; a distilling one loads its teacher from the run's stage-0 directory."""
    stage = plan.stage
    if stage.objective == "lm":
        return lm_objective
    from megaeeve.model.checkpoint import read_pieces
    from megaeeve.training.teacher import load_teacher

    model_dir, meta = plan.cfg.model, plan.run_meta
    table = PieceTable(read_pieces(model_dir, meta), meta.base_vocab_size, plan.device)
    teacher = load_teacher(model_dir, meta, ds_config=plan.ds_config, dtype=plan.dtype,
                           attn_implementation=plan.cfg.training.attn_implementation, device=plan.device)
    lm_weight = 1 - stage.distill.weight if stage.objective == "mixed" else 0.0
    return ChunkDistillation(teacher, table, stage.distill, lm_weight, meta.base_vocab_size)
