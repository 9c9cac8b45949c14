"""Where EEVE's stage-0 cost on Korean sits: in the output rows' constant shares, or in the new input rows.

    python bench/init_cost_split.py [--dir bench/out/init/compare-smollm2] [--results bench/RESULTS.md]

Reads what `bench/bench_init.py --setups compare --models smollm2` left in --dir (the base model, the expanded
tokenizer with its expansion report, the held-out texts) and scores the held-out Korean three ways, on the
same characters and the same tokens (the expanded tokenizer's; every new token is the run of base pieces the
base tokenizer gives the same text, checked per document):

  base           the base model reading its own pieces: a new token t costs sum_j -log q(p_j | context, p_<j)
  output side    the base model's context (it read every piece), the stage-0 output: t costs
                 -log q(p_1 | context) - log pi_t, pi_t its count share of the first-piece group (the prior)
  stage 0        the stage-0 model as `--init fit` builds it with the prior carried exactly (no fold): the base
                 reads one input row per new token; the same output

so that output side - base is what the constant shares cost and stage 0 - output side what the new input rows
cost. A fourth line, "output side, oracle shares", takes the shares from the held-out text's own counts (no
smoothing): the best any constant share could do there, a bound on what a better prior (e.g. the base model's
likelihood of a token's remaining pieces) can win. The stage-0 line is repeated for several input rows:

  mean           EEVE's: the mean of the pieces' input rows
  mean, renormed the same direction at the base rows' mean norm (averaging 2-6 piece vectors shrinks it)
  first, last    one piece's row

`--models DIR ...` scores further expanded models on the same tokens (a stage-0 directory, a trained stage's
final/, an export) and splits each one's distance to the base by where it falls: on the spans it reads as new
tokens (the base pays for their pieces) and on those it reads as base tokens. After training, this says whether
what is left to win is the new tokens' prediction or the text around them.

Bits are summed over every token but each document's first; bits/char divide by the documents' characters.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine, write_results  # noqa: E402

SECTION = "## Stage-0 cost: output side and input side"
LN2 = math.log(2)


def input_rows(emb, pieces: list[list[int]]) -> dict:
    """The candidate new input rows [new, hidden], by name."""
    import torch

    mean = torch.stack([emb[p].mean(0) for p in pieces])
    base_norm = emb.norm(dim=1).mean()
    renormed = mean / mean.norm(dim=1, keepdim=True) * base_norm
    return {"mean": mean, "mean, renormed": renormed, "first": emb[[p[0] for p in pieces]],
            "last": emb[[p[-1] for p in pieces]]}


def next_token_log_probs(model, ids, vocab: int):
    """log p(ids[k] | ids[<k]) for k >= 1 under a causal LM, fp32, the softmax over the tokenizer's `vocab` ids
    only (as `megaeeve evaluate` scores: a padded model's extra rows are no tokens)."""
    return model(ids[None]).logits[0, :-1, :vocab].float().log_softmax(-1).gather(1, ids[1:, None])[:, 0]


def split(model, base_tok, new_tok, pieces: list[list[int]], shares: dict[int, float], docs: list[str],
          rows: dict, models: dict | None = None) -> dict:
    """Bits of the scorings (base, output side with count and oracle shares, stage 0 per input rows; each of
    `models` on the new-token spans and on the base-token spans, with the base's bits on the same spans) and the
    characters they cover."""
    import torch

    from megaeeve.model.fit import group_log_shares

    emb = model.get_input_embeddings().weight.detach()
    base, vocab = (t.get_vocab_size(with_added_tokens=True) for t in (base_tok, new_tok))
    total = {"chars": 0, "tokens": 0, "new tokens": 0, "documents": 0, "base": 0.0, "output side": 0.0,
             "output side, oracle shares": 0.0, **{f"stage 0, {k}": 0.0 for k in rows},
             **{f"{who} on {span} spans": 0.0 for who in ("base", *(models or {})) for span in ("new", "base")}}
    counts: dict[int, int] = {}
    for enc in new_tok.encode_batch(docs, add_special_tokens=False):
        for i in enc.ids[1:]:
            counts[i] = counts.get(i, 0) + 1
    oracle = group_log_shares(pieces, base, counts, smoothing=0.0)
    for text in docs:
        bids = base_tok.encode(text, add_special_tokens=False).ids
        eids = new_tok.encode(text, add_special_tokens=False).ids
        runs = [[i] if i < base else pieces[i - base] for i in eids]
        if len(eids) < 2 or [i for r in runs for i in r] != bids:
            continue  # not the base's own segmentation (never seen on this text; counted below)
        starts = torch.tensor([0] + [len(r) for r in runs]).cumsum(0)
        with torch.no_grad():
            ids = torch.tensor(bids)
            # q[k] = log q(bids[k] | bids[<k]); the first is unscored
            q = torch.cat([torch.zeros(1), next_token_log_probs(model, ids, base)])
            firsts = torch.tensor([r[0] for r in runs[1:]])
            offset = torch.tensor([shares.get(i, 0.0) for i in eids[1:]], dtype=torch.float32)
            total["base"] -= float(q[starts[1]:].sum()) / LN2
            total["output side"] -= float((q[starts[1:-1]] + offset).sum()) / LN2
            best = torch.tensor([oracle.get(i, 0.0) for i in eids[1:]], dtype=torch.float32)
            total["output side, oracle shares"] -= float((q[starts[1:-1]] + best).sum()) / LN2
            for name, added in rows.items():
                x = torch.stack([emb[i] if i < base else added[i - base] for i in eids])
                lp = model(inputs_embeds=x[None]).logits[0, :-1, :base].float().log_softmax(-1)
                total[f"stage 0, {name}"] -= float((lp.gather(1, firsts[:, None])[:, 0] + offset).sum()) / LN2
            new = torch.tensor([i >= base for i in eids[1:]])
            per_token = {"base": -torch.stack([q[a:b].sum() for a, b in zip(starts[1:-1], starts[2:])]) / LN2}
            expanded = torch.tensor(eids)
            for name, other in (models or {}).items():
                per_token[name] = -next_token_log_probs(other, expanded, vocab) / LN2
            for who, bits in per_token.items():
                total[f"{who} on new spans"] += float(bits[new].sum())
                total[f"{who} on base spans"] += float(bits[~new].sum())
        total["chars"] += len(text)
        total["tokens"] += len(eids) - 1
        total["new tokens"] += int(new.sum())
        total["documents"] += 1
    total["documents seen"] = len(docs)
    return total


def table(results: dict[str, dict]) -> str:
    lines = ["| held-out text | scoring | bits/char | vs base | vs the scoring it builds on (base, then output side) |", "|---|---|---:|---:|---:|"]
    for text, t in results.items():
        keys = ["base", "output side", *[k for k in t if k.startswith(("output side, ", "stage 0, "))]]
        above = None
        for k in keys:
            v = t[k] / t["chars"]
            b = t["base"] / t["chars"]
            step = "" if above is None else f"{v - above:+.3f}"
            lines.append(f"| {text} | {k} | {v:.3f} | {v - b:+.3f} | {step} |")
            above = v if k in ("base", "output side") else above
    return "\n".join(lines)


def span_table(results: dict[str, dict], models: list[str]) -> str:
    """Each model's distance to the base, split into the spans it reads as new tokens and as base tokens."""
    lines = ["| held-out text | model | bits/char | vs base | on new-token spans: bits/char (base) | vs base there "
             "| on base-token spans: bits/char (base) | vs base there |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for text, t in results.items():
        c = t["chars"]
        for name in models:
            cells = []
            for span in ("new", "base"):
                mine, base = t[f"{name} on {span} spans"] / c, t[f"base on {span} spans"] / c
                cells += [f"{mine:.3f} ({base:.3f})", f"{mine - base:+.3f}"]
            total = (t[f"{name} on new spans"] + t[f"{name} on base spans"]) / c
            lines.append(f"| {text} | {name} | {total:.3f} | {total - t['base'] / c:+.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", type=Path, default=REPO / "bench" / "out" / "init" / "compare-smollm2",
                   help="bench_init's compare setup for SmolLM2 (base/, tokenizer/, corpus/)")
    p.add_argument("--models", nargs="*", default=[], metavar="DIR",
                   help="expanded models to split the same way (stage-0 directories, trained stages' final/, exports)")
    p.add_argument("--results", default=str(REPO / "bench" / "RESULTS.md"), help="'' to not write")
    args = p.parse_args(argv)

    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    from megaeeve.model.extend import report_counts
    from megaeeve.model.fit import group_log_shares
    from megaeeve.model.init import token_pieces

    base_tok = Tokenizer.from_file(str(args.dir / "base" / "tokenizer.json"))
    new_tok = Tokenizer.from_file(str(args.dir / "tokenizer" / "tokenizer.json"))
    base = base_tok.get_vocab_size(with_added_tokens=True)
    pieces = token_pieces(base_tok, new_tok, range(base, new_tok.get_vocab_size(with_added_tokens=True)))
    shares = group_log_shares(pieces, base, report_counts(args.dir / "tokenizer"))
    model = AutoModelForCausalLM.from_pretrained(args.dir / "base", dtype=torch.float32).eval()
    rows = input_rows(model.get_input_embeddings().weight.detach(), pieces)
    from megaeeve.eval.load import load_any_model

    others = {str(d): load_any_model(d, device="cpu") for d in args.models}
    results = {}
    for name, file in (("Korean", "ko_eval.jsonl"), ("English", "en_eval.jsonl")):
        docs = [json.loads(line)["text"] for line in (args.dir / "corpus" / file).read_text().splitlines()]
        results[name] = split(model, base_tok, new_tok, pieces, shares, docs, rows if name == "Korean" else
                              {"mean": rows["mean"]}, others)
        t = results[name]
        print(f"{name}: {t['documents']} of {t['documents seen']} documents in the base's segmentation, "
              f"{t['chars']:,} characters, {t['tokens']:,} tokens scored ({t['new tokens']:,} new)")
    text = table(results)
    if others:
        text += "\n\n" + span_table(results, list(others))
    print(text)
    if args.results:
        k = results["Korean"]
        body = (f"{SECTION}\n\nMachine: {machine(with_torch=True)}. `python bench/init_cost_split.py` "
                f"on bench_init's compare setup "
                f"(SmolLM2-135M, {len(pieces):,} new tokens; held-out Korean: {k['chars']:,} characters, "
                f"{k['tokens']:,} tokens of which {k['new tokens']:,} new).\n\n{text}\n")
        write_results(body, Path(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
