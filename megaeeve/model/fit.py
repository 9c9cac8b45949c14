"""Stage-0 rows fitted to the base model, so that an extended model starts where its base is.

EEVE's initialisation (init.py) costs bits before any training: in a byte-level BPE most new tokens of a
script begin with one of a handful of base pieces (SmolLM2 + 3,982 Korean tokens: 13 first pieces, one shared
by 1,110 tokens), every token of such a group gets the same logit as its first piece, and each copy adds that
piece's whole probability mass. Cheap corrections, each usable alone:

- ``group_log_shares``: a mass-preserving output prior. G(p) = {p} and every new token whose first piece is
  p; member s gets the logit offset log pi_s, pi_s its share of G(p)'s emissions by the expanded tokenizer
  (the counts of expand_vocab's final counting pass, smoothed). The shares of a group sum to 1, so the
  group's total probability is the base's probability of p and the softmax normaliser is unchanged: every
  base token outside the groups keeps exactly the base model's probability.
- ``model_log_shares``: the same groups with shares from the base model instead of counts (the likelihood of each
  token's pieces after the first where it occurs); measured far worse than counts, kept to reproduce that.
- ``fold_direction``: a model without an lm_head bias (Llama, Qwen, Mistral, SmolLM2) cannot carry an offset
  in plain transformers. The offset b_s is folded into the row as b_s * u, u the least-squares direction
  with u . h ~= 1 over the base's final hidden states (Cho et al., arXiv 2406.01468); ``FoldReport`` says how
  far u . h strays from 1, which is what the fold costs.
- ``renormed_inputs``: EEVE's new input row is the mean of its pieces' rows (SmolLM2's Korean tokens: 5.4
  byte-level pieces on average), and averaging shrinks it (to 0.65 of a base row's mean norm), so the base model
  reads a weak, blurred vector where it used to read several pieces. Rescaled to the base rows' mean norm, the
  same direction costs 0.27 bits/char less on held-out Korean at stage 0 (bench/init_cost_split.py). What the
  input rows cost is most of the stage-0 cost (that bench: +1.8 of +2.4 bits/char), and no static choice of row
  removes it.
- ``fit_input_rows``: the new input rows optimised so that the model's next-token distribution after a new
  token is the base's after the token's pieces, in contexts from the corpus; the base is the teacher and
  nothing else moves. It removes about half of what the input rows cost (bench/RESULTS.md).
- ``fit_output_rows``: the new output rows (and new bias entries) fitted by softmax regression on the model's
  own final hidden states over corpus text: next-token cross entropy over the expanded vocabulary with the
  base rows frozen, whose part of the normaliser is computed once. An L2 pull towards the starting rows
  keeps tokens seen a few times near their prior.

Everything works on the plain base model and row tensors (new input rows reach it as ``inputs_embeds``), in
one process, before the stage-0 directory is written.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict as dataclasses_asdict
from dataclasses import dataclass, fields, replace
from typing import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from megaeeve.model.pieces import Expansion, PieceTable

Log = Callable[[str], None]


@dataclass
class Rows:
    """The rows being fitted: base rows (read only) and new rows (replaced by the fits), fp32."""

    base_input: torch.Tensor  # [base, hidden]
    base_output: torch.Tensor  # [base, hidden]
    base_bias: torch.Tensor | None  # [base]
    added_input: torch.Tensor  # [new, hidden]
    added_output: torch.Tensor  # [new, hidden]
    added_bias: torch.Tensor | None  # [new]
    input_scale: float | None = None
    """What the model's embedding multiplies its rows by (Gemma: sqrt(hidden); architectures.embedding_scale).
    transformers applies it inside the embedding module, so input vectors given as inputs_embeds carry it."""

    def _tensors(self, op: Callable[[torch.Tensor], torch.Tensor]) -> Rows:
        return replace(self, **{f.name: op(getattr(self, f.name)) for f in fields(self)
                                if isinstance(getattr(self, f.name), torch.Tensor)})

    def to(self, device: torch.device | str) -> Rows:
        """The same rows on `device`."""
        return self._tensors(lambda t: t.to(device))

    def detached(self) -> Rows:
        """The same rows cut from any autograd graph (a base model's weights require grad)."""
        return self._tensors(torch.Tensor.detach)

    @property
    def base_vocab_size(self) -> int:
        return self.base_input.shape[0]

    def input_embeds(self, ids: torch.Tensor, added: torch.Tensor | None = None) -> torch.Tensor:
        """Input vectors of expanded ids [batch, seq] (`added`: other new input rows, e.g. a trainable copy)."""
        added = self.added_input if added is None else added
        base = self.base_vocab_size
        out = F.embedding(ids.clamp(max=base - 1), self.base_input)
        if len(added):
            new = F.embedding((ids - base).clamp(min=0), added)
            out = torch.where((ids < base).unsqueeze(-1), out, new)
        if self.input_scale is None:
            return out
        return out * torch.tensor(self.input_scale, dtype=out.dtype, device=out.device)


# -- the output prior -------------------------------------------------------------------------------------
def first_piece_groups(pieces: Sequence[Sequence[int]], base_vocab_size: int) -> dict[int, list[int]]:
    """First base piece -> the new ids that begin with it."""
    groups: dict[int, list[int]] = {}
    for k, ids in enumerate(pieces):
        groups.setdefault(int(ids[0]), []).append(base_vocab_size + k)
    return groups


def group_log_shares(pieces: Sequence[Sequence[int]], base_vocab_size: int, counts: Mapping[int, float],
                     smoothing: float = 0.5) -> dict[int, float]:
    """log pi_s for every member s of every group G(p) = {p} + {new t : first piece p}; shares sum to 1 per group.

    `counts`: how often the expanded tokenizer emits each id on the corpus (missing ids count 0); each count is
    raised by `smoothing` so that an unseen token keeps a small share rather than -inf.
    """
    shares: dict[int, float] = {}
    for first, members in first_piece_groups(pieces, base_vocab_size).items():
        ids = [first, *members]
        c = torch.tensor([float(counts.get(i, 0)) + smoothing for i in ids], dtype=torch.float64)
        shares.update(zip(ids, (c / c.sum()).log().tolist()))
    return shares


def within_context(table: PieceTable, ids: torch.Tensor, context: int) -> tuple[torch.Tensor, Expansion]:
    """Samples [b, n] cut to the longest prefix (at least 2 tokens) whose pieces fit `context` positions in every
    row, with their expansion: the base model reads the pieces, several per token."""
    expansion = table.expand(ids)
    if expansion.ids.shape[1] > context:
        ids = ids[:, :max(2, int((expansion.ends <= context).all(0).sum()))]
        expansion = table.expand(ids)
    return ids, expansion


def _rest_log_likelihoods(model: nn.Module, rows: Rows, table: PieceTable, tokens: torch.Tensor) -> torch.Tensor:
    """For every position of expanded samples [b, n]: the base model's log-likelihood of that token's pieces after
    its first, given everything before them (0 for a single-piece token), [b, n] fp32."""
    e = table.expand(tokens)  # callers keep the pieces within the model's context (within_context)
    logits = model(inputs_embeds=rows.input_embeds(e.ids), use_cache=False).logits[..., :rows.base_vocab_size]
    # step[i]: log q(ids[i] | ids[:i]) (0 at position 0); as a prefix sum, a token's rest is one difference
    step = (logits[:, :-1].gather(-1, e.ids[:, 1:, None]).squeeze(-1) - logits[:, :-1].logsumexp(-1)).float()
    prefix = F.pad(step, (2, 0)).cumsum(1)  # prefix[i] = sum of step[0 .. i-1] over positions 0 .. i-1
    starts = e.ends - table.lengths[tokens]
    return prefix.gather(1, e.ends) - prefix.gather(1, starts + 1)


def model_log_shares(model: nn.Module, rows: Rows, *, table: PieceTable, samples: torch.Tensor,
                     pieces: Sequence[Sequence[int]], context: int, batch: int = 4) -> tuple[dict[int, float], dict]:
    """log pi_s for every member s of every group G(p), from the base model instead of counts: a new token t gets
    the weight exp(mean over its occurrences in `samples` of log q(t's pieces after the first | context, first
    piece)), the base's likelihood of the rest of t once it has emitted t's first piece; the first piece itself,
    which has no rest, gets weight 1; the weights of a group are normalised to sum to 1 (mass-preserving, as the
    count shares). A token that never occurs in the samples gets its rest's likelihood with no context but its
    first piece (one base forward over every token's pieces). Returns the shares and a record (how many new
    tokens were scored in context)."""
    base = rows.base_vocab_size
    total = torch.zeros(len(pieces), dtype=torch.float64)
    occurrences = torch.zeros(len(pieces), dtype=torch.float64)
    with torch.no_grad():
        for chunk in samples.split(batch):
            chunk, _ = within_context(table, chunk, context)
            rest = _rest_log_likelihoods(model, rows, table, chunk).double()
            new = chunk >= base
            total.index_add_(0, chunk[new] - base, rest[new])
            occurrences.index_add_(0, chunk[new] - base, torch.ones_like(rest[new]))
        new_ids = torch.arange(base, base + len(pieces))
        alone = torch.cat([_rest_log_likelihoods(model, rows, table, ids[:, None]).double()[:, 0]
                           for ids in new_ids.split(256)])
    log_weight = torch.where(occurrences > 0, total / occurrences.clamp(min=1), alone)
    shares: dict[int, float] = {}
    for first, members in first_piece_groups(pieces, base).items():
        w = torch.cat([torch.zeros(1, dtype=torch.float64), log_weight[torch.tensor(members) - base]])
        shares.update(zip([first, *members], (w - w.logsumexp(0)).tolist()))
    return shares, {"new_tokens_in_context": int((occurrences > 0).sum()), "new_tokens": len(pieces)}


def offsets_tensor(shares: Mapping[int, float], vocab_size: int) -> torch.Tensor:
    """The per-id logit offsets [vocab] (0 outside the groups), fp32."""
    out = torch.zeros(vocab_size, dtype=torch.float64)
    for i, v in shares.items():
        out[i] = v
    return out.float()


@dataclass(frozen=True)
class FoldReport:
    """How well u . h ~= 1 holds on the sampled final hidden states (mean and std of u . h)."""

    mean: float
    std: float
    samples: int


def fold_direction(hidden: torch.Tensor, ridge: float = 1e-4) -> tuple[torch.Tensor, FoldReport]:
    """u minimising sum (u . h - 1)^2 + ridge * n * |u|^2 over the rows h of `hidden` [n, d]."""
    h = hidden.double()
    gram = h.T @ h + ridge * len(h) * torch.eye(h.shape[1], dtype=h.dtype)
    u = torch.linalg.solve(gram, h.sum(0))
    fit = h @ u
    return u.float(), FoldReport(float(fit.mean()), float(fit.std()), len(h))


def apply_offsets(rows: Rows, shares: Mapping[int, float], u: torch.Tensor | None) -> Rows:
    """Rows carrying the offsets: in the lm_head bias when there is one, else folded as offset * u into the rows."""
    base = rows.base_vocab_size
    off = offsets_tensor(shares, base + rows.added_output.shape[0])
    out = replace(rows, base_output=rows.base_output.clone(), added_output=rows.added_output.clone(),
                  base_bias=None if rows.base_bias is None else rows.base_bias.clone(),
                  added_bias=None if rows.added_bias is None else rows.added_bias.clone())
    if rows.base_bias is not None:
        out.base_bias += off[:base]
        out.added_bias += off[base:]
    else:
        if u is None:
            raise ValueError("a model without an lm_head bias needs the fold direction u")
        out.base_output += off[:base, None] * u
        out.added_output += off[base:, None] * u
    return out


# -- running the base model on expanded ids -----------------------------------------------------------------
@contextlib.contextmanager
def head_inputs(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """While open, the tensors entering the model's output embedding (its final hidden states), any architecture."""
    states: list[torch.Tensor] = []
    handle = model.get_output_embeddings().register_forward_pre_hook(lambda _, args: states.append(args[0]))
    try:
        yield states
    finally:
        handle.remove()


def final_hidden(model: nn.Module, rows: Rows, samples: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """Final hidden states [n, seq, d] of expanded-id samples [n, seq] with `rows`' input rows, no grad."""
    out = []
    with torch.no_grad():
        for chunk in samples.split(batch):
            with head_inputs(model) as states:
                model(inputs_embeds=rows.input_embeds(chunk), use_cache=False)
            out.append(states[0].float())
    return torch.cat(out)


def samples_from(encoded: Sequence[Sequence[int]], length: int, limit: int) -> torch.Tensor:
    """At most `limit` samples [n, length] of consecutive ids, documents joined in order (a sample spans
    document ends as a packed training sample does)."""
    flat = [i for ids in encoded for i in ids]
    n = min(limit, len(flat) // length)
    if n == 0:
        raise ValueError(f"the fitting text has {len(flat)} tokens, fewer than one sample of {length}")
    return torch.tensor(flat[:n * length], dtype=torch.long).view(n, length)


# -- the new input rows' norm --------------------------------------------------------------------------------
def renormed_inputs(rows: Rows, scale: float) -> Rows:
    """The new input rows in the same directions, each at `scale` x the base input rows' mean norm."""
    target = scale * rows.base_input.norm(dim=1).mean()
    added = rows.added_input / rows.added_input.norm(dim=1, keepdim=True).clamp(min=1e-12) * target
    return replace(rows, added_input=added)


# -- fitting the input rows to the base's next-token distribution ----------------------------------------------
def fit_input_rows(model: nn.Module, rows: Rows, *, table: PieceTable, samples: torch.Tensor, steps: int,
                   context: int, lr: float = 3e-2, batch: int = 4, device: torch.device | str = "cpu",
                   log: Log | None = None) -> Rows:
    """New input rows moved for `steps` Adam steps so that the model's next-token distribution after each token of
    the expanded samples is the base's after the same token's pieces: KL(base || model) over the base vocabulary,
    the whole model run, nothing but the new input rows moving. With the mass-preserving prior, the base rows'
    distribution at stage 0 is the distribution over first-piece groups, so this is the stage-0 loss with the base
    as the teacher.

    Measured on SmolLM2-135M (bench/RESULTS.md): matching the hidden states of the first 4 layers instead
    (AweDist, arXiv 2505.20133) raised held-out Korean bits/char at a learning rate that moves the rows and left it
    unchanged at one that does not; the next-token distribution is what bits/char score. `lr` is relative to a
    base input row's typical element. Samples are taken in a shuffled order, `batch` a step (wrapping round),
    each cut so that the base's input (its pieces) fits `context` positions. Only rows of new ids that occur in
    them move. The fit runs on `device` (the model is moved there and back); the rows come back on the CPU.
    """
    model.requires_grad_(False).to(device)
    try:
        fitted = _fit_input_rows(model, rows.to(device), table.to(device), samples.to(device), steps=steps,
                                 context=context, lr=lr, batch=batch, log=log)
    finally:
        model.to("cpu")
    return replace(rows, added_input=fitted.cpu())


def _fit_input_rows(model: nn.Module, rows: Rows, table: PieceTable, samples: torch.Tensor, *, steps: int,
                    context: int, lr: float, batch: int, log: Log | None) -> torch.Tensor:
    added = rows.added_input.clone().requires_grad_(True)
    opt = torch.optim.Adam([added], lr=lr * float(rows.base_input.norm(dim=1).mean()) / math.sqrt(rows.base_input.shape[1]))
    seen = torch.zeros(len(added), dtype=torch.bool, device=added.device)
    base = rows.base_vocab_size  # the base model's rows past it (phi-2's padding) are never predicted
    started = time.perf_counter()
    # Shuffled once (fixed seed): samples come in corpus order, and a run of batches from one source would pull
    # the rows towards it and then away again.
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(0)).to(samples.device)
    for step in range(steps):
        ids = samples[order[(step * batch + torch.arange(batch, device=samples.device)) % len(samples)]]
        ids, expansion = within_context(table, ids, context)
        seen[ids[ids >= base] - base] = True
        with torch.no_grad():
            logits = model(inputs_embeds=rows.input_embeds(expansion.ids), use_cache=False).logits[..., :base]
            index = (expansion.ends - 1).unsqueeze(-1).expand(-1, -1, base)
            teacher = logits.gather(1, index)[:, 1:].float().log_softmax(-1)
            del logits
        # Position 0 is left out: there the model holds its attention-sink state while the teacher's matching
        # position, the end of the first token's pieces, is an ordinary one.
        student = model(inputs_embeds=rows.input_embeds(ids, added), use_cache=False).logits[:, 1:, :base].float()
        loss = F.kl_div(student.log_softmax(-1), teacher, log_target=True, reduction="sum") / teacher.shape[:2].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log and (step % 10 == 0 or step == steps - 1):
            per_step = (time.perf_counter() - started) / (step + 1)
            log(f"fit input rows: step {step + 1}/{steps}, KL to the base {loss.item():.4f} nats/token, "
                f"{int(seen.sum()):,} of {len(added):,} new rows seen, {per_step:.1f} s/step, "
                f"ETA {per_step * (steps - step - 1) / 60:.1f} min")
    return added.detach()


# -- fitting the output rows (softmax regression on final hidden states) ---------------------------------------
def fit_output_rows(model: nn.Module, rows: Rows, *, samples: torch.Tensor, steps: int, lr: float = 1e-2,
                    l2: float = 1.0, rank: int = 0, batch: int = 1024, log: Log | None = None) -> Rows:
    """New output rows (and new bias entries) fitted for `steps` Adam steps to next-token cross entropy over the
    expanded vocabulary on the model's final hidden states of `samples` (base rows frozen), with an L2 pull
    of weight `l2` towards the starting rows, relative to their mean squared norm.

    `rank` > 0 fits a map shared by every new token instead of free rows: row_t = start_t + x_t A B^T, x_t the new
    input row of t at unit norm, A and B [hidden, rank] (B starts at 0: the start rows exactly). Free rows give
    each token its own 576 numbers to learn from the few contexts it occurs in, and learn those contexts (held-out
    text got worse); the map learns from every new token at once which input-side features the final hidden
    state selects, so a group's members, which share their first piece's row, get logits that depend on the
    context. The new bias entries stay as they are, and `l2` is not applied: the rank is the limit."""
    hidden = final_hidden(model, rows, samples[:, :-1]).flatten(0, 1)
    targets = samples[:, 1:].flatten()
    base = rows.base_vocab_size
    with torch.no_grad():  # the base rows' part of every position's normaliser, once
        lse, target_logit = [], []
        for h, y in zip(hidden.split(4096), targets.split(4096)):
            z = h @ rows.base_output.T
            if rows.base_bias is not None:
                z += rows.base_bias
            lse.append(z.logsumexp(-1))
            target_logit.append(z.gather(1, y.clamp(max=base - 1)[:, None]).squeeze(1))
        lse_base, base_target = torch.cat(lse), torch.cat(target_logit)
    start = rows.added_output
    scale = float(start.square().sum(1).mean())
    gen = torch.Generator().manual_seed(0)
    row_lr = lr * math.sqrt(scale / start.shape[1])  # a row element's typical size: the map's rows and free rows alike
    bias = None
    if rank:
        features = rows.added_input / rows.added_input.norm(dim=1, keepdim=True).clamp(min=1e-12)
        a = (torch.randn(start.shape[1], rank, generator=gen) / math.sqrt(start.shape[1])).requires_grad_(True)
        b = torch.zeros(start.shape[1], rank, requires_grad=True)
        params = [a, b]

        def rows_now() -> torch.Tensor:
            return start + features @ a @ b.T
    else:
        weight = start.clone().requires_grad_(True)
        bias = None if rows.added_bias is None else rows.added_bias.clone().requires_grad_(True)
        params = [weight] + ([bias] if bias is not None else [])

        def rows_now() -> torch.Tensor:
            return weight
    opt = torch.optim.Adam(params, lr=row_lr)
    for step in range(steps):
        pick = torch.randint(len(hidden), (min(batch, len(hidden)),), generator=gen)
        h, y = hidden[pick], targets[pick]
        new_rows = rows_now()
        z_new = h @ new_rows.T
        if bias is not None:
            z_new = z_new + bias
        lse_all = torch.logaddexp(lse_base[pick], z_new.logsumexp(-1))
        is_new = y >= base
        z_y = torch.where(is_new, z_new.gather(1, (y - base).clamp(min=0)[:, None]).squeeze(1), base_target[pick])
        nll = (lse_all - z_y).mean()
        loss = nll + (0 if rank else l2 * (new_rows - start).square().sum(1).mean() / scale)  # rank: the map's own limit
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log and (step % 50 == 0 or step == steps - 1):
            log(f"fit output rows: step {step + 1}/{steps}, cross entropy {nll.item():.4f}")
    with torch.no_grad():
        fitted = rows_now().detach()
    return replace(rows, added_output=fitted, added_bias=rows.added_bias if bias is None else bias.detach())


# -- the whole fitted initialisation ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FitSettings:
    """`megaeeve extend --init fit`: EEVE's rows, then the corrections above, in this order."""

    prior: str = "counts"
    """Output prior: `counts` (shares of the expansion report's emission counts), `model` (model_log_shares: shares
    from the base's likelihood of each token's pieces after the first, over the fitting samples) or `none`. On
    SmolLM2, held-out Korean at stage 0 without the input fit: +1.84 bits/char over the base with counts, +5.50 with
    model (bench/RESULTS.md: the base reads Korean bytes so badly that the first piece alone keeps most of a group)."""
    smoothing: float = 0.5
    """Added to every count of a group before the shares are taken."""
    input_norm: float = 1.0
    """New input rows rescaled to this multiple of the base input rows' mean norm (0: keep the mean's own norm,
    EEVE's). On SmolLM2, held-out Korean at stage 0: 5.830 bits/char at the mean's norm, 5.557 at 1.0, 5.523 at
    1.25, 5.505 at 1.5 (bench/init_cost_split.py; 1.0 is the default because it is the principled value, the
    others were picked on the held-out text itself)."""
    input_steps: int = 150
    """Adam steps of fit_input_rows (0: keep the mean of the pieces). On SmolLM2-135M with 3,982 Korean tokens,
    held-out Korean at stage 0 cost +2.13 bits/char over the base before the fit, +1.36 after 50 steps, +1.16
    after 100, +1.03 after 150, +0.96 after 200 (another domain: +1.35, +0.47, +0.26, +0.19, +0.13;
    bench/init_cost_split.py's scoring, 8 samples of 64 tokens a step). 150 is the fewest steps that halve EEVE's
    cost in bench/bench_init.py (+0.99 against EEVE's +1.99; +1.08 after 100). A step is a forward of the base over the
    samples' pieces and a forward and backward of the model over the samples: about 9 s for SmolLM2-135M on 2
    CPU cores (not measured on a GPU)."""
    input_batch: int = 4
    """Samples per step of fit_input_rows; it reads input_steps x input_batch samples (wrapping round when the text
    has fewer)."""
    output_steps: int = 600
    """Adam steps of fit_output_rows (0: the first piece's row plus the prior). With free rows (output_rank 0) 300
    steps on SmolLM2 lowered held-out Korean of the fitting text's domain by 0.7 bits/char but raised it on other
    text by 0.1-0.8 (bench/RESULTS.md): free rows learn the fitting sample's contexts; through the shared map
    (output_rank, the default) they do not."""
    output_l2: float = 1.0
    """fit_output_rows' pull towards the starting rows (relative to their mean squared norm); on SmolLM2 1.0 beat
    0.1 and 0.01 on held-out Korean of both domains and on English."""
    output_rank: int = 16
    """fit_output_rows through a shared map of this rank (row_t = start_t + x_t A B^T, x_t t's input row) instead of
    free rows (0); output_l2 is then not applied. On SmolLM2, rank 16 with 600 steps, 256 samples and 64 English
    samples (the defaults then; now 128 English samples, below) against the same init without the map, at stage 0 (bench/RESULTS.md "Stage-0
    initialisation"): the pipeline's text, held-out Korean of the tokenizer's domain 6.414 bits/char against 7.573,
    of another domain 6.397 against 6.411, English +0.0048 over the base against +0.0011; compare_methods' text 4.618
    against 4.729, English +0.008 (+0.017 with 16 English samples); and 0.117 lower after 53,760 tokens of
    all-parameter training ("Break-even")."""
    sample_length: int = 128
    """Tokens per fitting sample."""
    samples: int = 256
    """Samples of target-language text for fit_output_rows (the first quarter also places the fold direction)."""
    english_samples: int = 128
    """Samples of English text: the fold direction and fit_output_rows see these too, so that the new rows
    learn to stay out of English contexts. On compare_methods' text the rank-16 map kept English +0.0131 bits/char
    over the base with 64 (over the 0.01 target), +0.0097 with 128, at +0.015 on Korean (bench/RESULTS.md,
    "Break-even")."""
    device: str = "auto"
    """Where fit_input_rows runs: auto (the first GPU when there is one, else the CPU), cpu, cuda or cuda:N."""

    def torch_device(self) -> torch.device:
        """`device` resolved."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


PRIORS = ("counts", "model", "none")


def fit_rows(model: nn.Module, rows: Rows, *, table: PieceTable, target: torch.Tensor, english: torch.Tensor,
             shares: Mapping[int, float] | None, settings: FitSettings, context: int,
             log: Log | None = None) -> tuple[Rows, dict]:
    """Rescale the new input rows (settings.input_norm), apply the prior (shares, None for none), then fit the
    input rows on `target` samples and the output rows on the first settings.samples of them and `english`
    (expanded ids [n, length]; `context`: the model's positions); returns the rows and a record of what was
    done."""
    record: dict = {"settings": dataclasses_asdict(settings)}
    rows, every = rows.detached(), target
    target = target[:settings.samples]
    if settings.input_norm:
        rows = renormed_inputs(rows, settings.input_norm)
    if shares is not None:
        u = None
        if rows.base_bias is None:
            base_ids = torch.cat([table.expand(target[: max(1, len(target) // 4)]).ids[:, :target.shape[1]],
                                  english])
            hidden = final_hidden(model, rows, base_ids).flatten(0, 1)
            u, fold = fold_direction(hidden)
            record["fold"] = dataclasses_asdict(fold)
        rows = apply_offsets(rows, shares, u)
    if settings.input_steps:
        rows = fit_input_rows(model, rows, table=table, samples=every, steps=settings.input_steps, context=context,
                              batch=settings.input_batch, device=settings.torch_device(), log=log)
    if settings.output_steps:
        rows = fit_output_rows(model, rows, samples=torch.cat([target, english]), steps=settings.output_steps,
                               l2=settings.output_l2, rank=settings.output_rank, log=log)
    return rows, record
