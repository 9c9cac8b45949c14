"""EEVE against simpler ways to teach SmolLM2-135M Korean: same data, same training tokens, same seeds.

    python bench/compare_methods.py [--scale N] [--out bench/out/compare] [--gpu] [--results bench/RESULTS.md]
        [--methods a,b] [--nproc N] [--min-frequency N] [--intermediate-vocab-size N] [--korean-weight W] [--seed N]

Methods, each trained by megaeeve/train.py (DeepSpeed ZeRO-3) from the real pretrained SmolLM2-135M:

  (a) eeve       expanded vocabulary, EEVE initialisation, the seven EEVE stages (megaeeve/stages.py)
  (b) full-eeve  expanded vocabulary, EEVE initialisation, all parameters trained
  (c) full-mean  expanded vocabulary, mean initialisation (LLaMA-Factory's: mean of all base rows plus
                 small noise; tools/extend_model.py --init mean), all parameters trained
  (d) no-expand  the base tokenizer (no new tokens; extend_model --allow-no-new-tokens), all parameters
                 trained: plain continued pretraining
  (e) eeve-distill  as (a), RUN.yaml `schedule: eeve+distill`: stages 1-3 learn the new rows by distilling the
                 base model's likelihoods (megaeeve/training/objectives.py), stages 4-7 as (a)
  (f) fit        expanded vocabulary, `megaeeve extend --init fit` (EEVE's rows fitted to the base model:
                 megaeeve/model/fit.py, the default), the seven EEVE stages
  (g) full-fit   as (f), all parameters trained
  (h) full-fit-lr10  as (g), the new tokens' rows at 10x the lr (stage setting `added_rows_lr_scale`)
  (i) full-fit-frozen-new  as (g), the new tokens' rows frozen at the fitted init (base rows and body train)
  (j) full-fit-rank  as (g), stage 0's new output rows fitted through a rank-16 map shared by every new token
                (--fit-output-rank 16 --fit-output-steps 600 --fit-samples 256)
  (k) full-fit-rank-mixed  as (j), every stage's objective `mixed`: half next-token loss, half distillation of
                the base model's likelihood of each token's pieces (the teacher's forward counted in FLOPs)
  (l) full-fit-rank-map  as (j), every stage also training the new output rows through a rank-16 map shared by
                every new token (stage setting `output_map`, role output_map, at 6x the lr: fit_output_rows' step)
  (m) full-fit-rank-frozen-new  as (j), the new tokens' rows frozen at stage 0's (base rows and body train)
  (n) full-fit-rank-frozen-new-wsd  as (m), warmup-stable-decay over the stages: each stage still warms up (a fresh
                engine), but only the last one decays; the others stay at the peak lr
  (o) full-fit-rank-frozen-new-wsd2  as (n), the cooldown over the last two stages: one cosine from the peak to 10%,
                each stage its half of it
  (p) full-fit-rank-slow-new-wsd2  as (o), the new tokens' rows trained too, at 0.1x the lr (the input fit leaves
                the rows of the new tokens it never saw at EEVE's mean; (m)-(o) keep them there)

Every method trains seven stages of the same number of steps (the same tokens, the same seeds, so
(a) and (b) see the very same batches in each stage); each stage is a fresh engine with a 10% warmup
and a cosine decay to 10% of its lr, the schedule of the default pipeline's EEVE stages. (a) uses
EEVE's roles and lrs per stage; (b), (c), (d) train all parameters at --full-lr in every stage (their
"one stage" is cut into seven so that every method is measured at the same points, each at the end of
a decayed schedule; (e) sees (a)'s batches). The same Korean text costs (d) about 2.7x more tokens, so (d) then trains
--same-text-stages more stages until it has seen as many Korean training tokens' worth of text as the
others (same text; the blend then holds proportionally more English for it too).

After stage 0 and every stage, tools/evaluate.py measures bits per character on held-out Korean and
English text (the same characters for every tokenizer). Training FLOPs come from each step's metrics (the
student's, plus the teacher's forward in (e)); break-even is the first point where Korean bits/char falls
below the base model's (stage 0 of (d), which is the base model). Korean: konlpy's corpora plus five Debian
packages (bench/korean_debian.py: gimp-help-ko, texlive-lang-korean, firefox-esr-l10n-ko,
thunderbird-l10n-ko, libreoffice-l10n-ko), every 10th document of each source held out; English:
CPython's pydoc topics, likewise split. The tokenizer is expanded on the Korean training split only
(intermediate vocabulary 8000, min frequency 30: about 2,700 new tokens; --min-frequency 300 keeps about 480).

Everything lands in --out, one directory per step; a step whose output exists is skipped, so a rerun
resumes. Intermediate stage weights are deleted once evaluated and no longer needed (--keep-weights
keeps them). At the end the script prints the tables, writes compare_methods.json and a PNG plot, and
replaces the "## Method comparison" section of --results.

Default budget (--scale 1): 7 stages x 2 steps x 1,024 tokens per method on 2 CPU ranks, about 40
minutes on 2 cores. --scale N multiplies the steps; --gpu trains bf16 on the visible CUDA devices with
ds_configs/zero3.json and sequences of 512 tokens (32 sequences per device and step).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import write_results  # noqa: E402
from bench.compare_results import report, section  # noqa: E402
from bench.compare_runner import METHODS, Compare, CompareConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "compare")
    p.add_argument("--scale", type=float, default=1.0,
                   help=f"multiply the steps per stage ({CompareConfig.steps_per_stage} at 1)")
    p.add_argument("--gpu", action="store_true", help="bf16 ZeRO-3 on the visible CUDA devices, sequences of 512")
    p.add_argument("--methods", default=",".join(m.key for m in METHODS),
                   help="comma-separated subset of " + ", ".join(m.key for m in METHODS))
    p.add_argument("--full-lr", type=float, default=CompareConfig.full_lr, help="lr of (b), (c), (d)")
    p.add_argument("--same-text-stages", type=int, default=CompareConfig.same_text_stages,
                   help="extra stages of (d) up to the others' Korean text (0: none)")
    p.add_argument("--eval-chars", type=int, default=CompareConfig.eval_chars,
                   help="held-out characters per language")
    p.add_argument("--min-frequency", type=int, default=CompareConfig.min_frequency,
                   help="the expanded tokenizer's: new tokens emitted fewer times over the corpus are dropped "
                        "(higher: fewer new tokens)")
    p.add_argument("--intermediate-vocab-size", type=int, default=CompareConfig.intermediate_vocab_size,
                   help="the expanded tokenizer's intermediate BPE vocabulary")
    p.add_argument("--korean-weight", type=float, default=CompareConfig.korean_weight,
                   help="Korean's share of the training sequences (English: the rest)")
    p.add_argument("--seed", type=int, default=CompareConfig.seed,
                   help="every stage's seed (data order, init noise): rerun a method at another to see its spread")
    p.add_argument("--keep-weights", action="store_true", help="keep every stage's final/ weights")
    p.add_argument("--nproc", type=int, help="training processes on CPU (default 2; 1 runs one process with every "
                                              "core as threads)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: tables, plot and --results from what is there")
    p.add_argument("--results", default=str(REPO / "bench" / "RESULTS.md"), help="'' to not write")
    p.add_argument("--plot", default=str(REPO / "bench" / "compare_methods.png"),
                   help="copy of the plot beside --results ('' for none)")
    args = p.parse_args(argv)
    methods = tuple(k.strip() for k in args.methods.split(",") if k.strip())
    unknown = set(methods) - {m.key for m in METHODS}
    if unknown or not methods:
        p.error(f"--methods: unknown {sorted(unknown)}; choose from {[m.key for m in METHODS]}")
    try:
        cc = CompareConfig(out=args.out, scale=args.scale, gpu=args.gpu, full_lr=args.full_lr,
                           same_text_stages=args.same_text_stages, eval_chars=args.eval_chars,
                           keep_weights=args.keep_weights, methods=methods, nproc=args.nproc,
                           min_frequency=args.min_frequency, intermediate_vocab_size=args.intermediate_vocab_size,
                           korean_weight=args.korean_weight, seed=args.seed)
    except ValueError as e:
        p.error(str(e))
    cmp = Compare(cc)
    if not args.report_only:
        cmp.run()
    res = report(cmp)
    if args.results:
        png = None
        if args.plot:
            png = Path(args.plot)
            shutil.copyfile(cmp.root / "compare_methods.png", png)
        write_results(section(res, png), Path(args.results))
        print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
