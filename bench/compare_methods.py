"""EEVE against simpler ways to teach SmolLM2-135M Korean: same data, same training tokens, same seeds.

    python bench/compare_methods.py [--scale N] [--out bench/out/compare] [--gpu] [--results bench/RESULTS.md]

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
CPython's pydoc topics, likewise split. The tokenizer is expanded on the Korean training split only.

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
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import yaml  # noqa: E402

from megaeeve import assets  # noqa: E402
from megaeeve.atomic import atomic_dir, atomic_file, write_json  # noqa: E402
from megaeeve.pipeline import Pipeline, PipelineConfig, Step, _command  # noqa: E402

SECTION = "## Method comparison"
STAGES = 7
ALL_ROLES = ["input_original", "input_added", "output_original", "output_added", "body"]
BASE_ROLES = ["input_original", "output_original", "body"]
LANGS = ("ko", "en")
WEIGHTS = {"ko": 0.7, "en": 0.3}  # the default pipeline's blend


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    stage0: str  # directory name under --out
    data: str  # dataset directory under --out (tokenized with this method's tokenizer)
    roles: list[str] | None  # None: a preset stage table
    schedule: str = "eeve"  # the preset (megaeeve.stages.SCHEDULES) when roles is None


METHODS = (
    Method("eeve", "(a) EEVE, 7 stages", "stage-0", "data", None),
    Method("full-eeve", "(b) all parameters, EEVE init", "stage-0", "data", ALL_ROLES),
    Method("full-mean", "(c) all parameters, mean init", "stage-0-mean", "data", ALL_ROLES),
    Method("no-expand", "(d) no expansion (base tokenizer)", "stage-0-base", "data-base", BASE_ROLES),
    Method("eeve-distill", "(e) EEVE, stages 1-3 distilled", "stage-0", "data", None, "eeve+distill"),
    Method("fit", "(f) fitted init, 7 EEVE stages", "stage-0-fit", "data", None),
    Method("full-fit", "(g) all parameters, fitted init", "stage-0-fit", "data", ALL_ROLES),
)


@dataclass(frozen=True)
class CompareConfig:
    out: Path
    scale: float = 1.0
    steps_per_stage: int = 2  # at --scale 1
    full_lr: float = 1e-4  # (b), (c), (d); about the mean of EEVE's seven stage lrs (9.3e-5)
    same_text_stages: int = 2  # extra stages of (d) up to the same Korean text
    eval_chars: int = 3000  # held-out characters per language
    gpu: bool = False
    keep_weights: bool = False
    seed: int = 1234
    intermediate_vocab_size: int = 8000
    min_frequency: int = 30
    nproc: int | None = None  # training ranks (default: the pipeline's, 2 on CPU)
    methods: tuple[str, ...] = tuple(m.key for m in METHODS)

    @property
    def steps(self) -> int:
        return max(1, round(self.steps_per_stage * self.scale))


class Compare(Pipeline):
    """The comparison as a pipeline: the default pipeline's steps where they fit, plus this bench's own."""

    def __init__(self, cc: CompareConfig) -> None:
        gpu = dict(nproc=_cuda_devices(), seq_length=512, ds_config=REPO / "ds_configs" / "zero3.json") if cc.gpu else {}
        if cc.nproc and not cc.gpu:
            gpu = dict(nproc=cc.nproc)
        super().__init__(PipelineConfig(run_dir=cc.out, intermediate_vocab_size=cc.intermediate_vocab_size,
                                        min_frequency=cc.min_frequency, **gpu))
        self.cc = cc
        self.timings = self.root / "timings.json"
        self.cpu = self.root / "cpu.json"

    @property
    def result(self) -> Path:
        return self.root / "compare_methods.json"

    # -- steps ---------------------------------------------------------------------------------------
    def steps(self) -> list[Step]:
        r = self.root
        parent = {s.name: s for s in super().steps()}
        steps = [Step("korean-debian", r / "korean-debian", self.write_korean_debian), parent["corpus"],
                 parent["base"], parent["tokenizer"],
                 Step("base-tokenizer", r / "base-tokenizer", self.write_base_tokenizer),
                 self.extend_step("stage-0", r / "tokenizer", r / "stage-0", "--init", "eeve"),  # the card's
                 self.extend_step("stage-0-fit", r / "tokenizer", r / "stage-0-fit", "--init", "fit"),
                 self.extend_step("stage-0-mean", r / "tokenizer", r / "stage-0-mean", "--init", "mean"),
                 self.extend_step("stage-0-base", r / "base-tokenizer", r / "stage-0-base", "--allow-no-new-tokens"),
                 parent["data-ko"], parent["data-en"],
                 *[self.data_step(f"data-base-{lang}", lang, r / "base-tokenizer", r / "data-base" / lang)
                   for lang in LANGS]]
        for stage0 in sorted({m.stage0 for m in self.methods}):
            steps.append(self.eval_step(f"eval-{stage0}", r / stage0, self.eval_file(stage0)))
        for m in self.methods:
            run_yaml = self.method_dir(m) / "run.yaml"
            steps.append(Step(f"{m.key}.run.yaml", run_yaml, lambda m=m: self.write_method_config(m)))
            for n in range(1, self.stage_count(m) + 1):
                stage = self.stage_step(f"{m.key}.stage-{n}", run_yaml, n, self.method_dir(m) / f"stage-{n}")
                steps.append(Step(stage.name, stage.output, lambda m=m, n=n, run=stage.run: self.train(m, n, run)))
                steps.append(self.eval_step(f"{m.key}.eval-{n}", self.method_dir(m) / f"stage-{n}" / "final",
                                            self.eval_file(m.key, n)))
        return [self.timed(s) for s in steps]

    def timed(self, step: Step) -> Step:
        """The step, recording its wall seconds (timings.json) and the CPU seconds of its processes with the
        load average at its end (cpu.json): on a shared machine CPU seconds are the steadier cost."""
        def run() -> None:
            t, cpu = time.time(), _children_cpu()
            step.run()
            for path, value in ((self.timings, round(time.time() - t, 1)),
                                (self.cpu, [round(_children_cpu() - cpu, 1), round(os.getloadavg()[0], 2)])):
                record = json.loads(path.read_text()) if path.exists() else {}
                record[step.name] = value
                write_json(path, record)

        return dataclasses.replace(step, run=run)

    # -- paths ---------------------------------------------------------------------------------------
    @property
    def methods(self) -> list[Method]:
        return [m for m in METHODS if m.key in self.cc.methods]

    def method_dir(self, m: Method) -> Path:
        return self.root / "methods" / m.key

    def eval_file(self, name: str, stage: int | None = None) -> Path:
        return self.root / "eval" / (f"{name}.json" if stage is None else f"{name}/stage-{stage}.json")

    def eval_text(self, lang: str) -> Path:
        return self.corpus / f"{lang}_eval.jsonl"

    def stage_count(self, m: Method) -> int:
        return STAGES + (self.cc.same_text_stages if m.key == "no-expand" else 0)

    # -- corpus --------------------------------------------------------------------------------------
    def write_korean_debian(self) -> None:
        import korean_debian

        korean_debian.build(self.root / "korean-debian", self.root / "debs")

    def write_corpus(self) -> None:
        """Korean: konlpy + the Debian packages; English: pydoc. Every 10th document of each source is
        held out; the eval texts take held-out documents round-robin over the sources."""
        import korean_debian

        sources = {"konlpy": assets.korean_documents()}
        debian = self.root / "korean-debian"
        for name in korean_debian.PACKAGES:
            sources[name] = korean_debian.read_documents(debian / f"{name}.jsonl")
        splits = {name: assets.split_held_out(docs) for name, docs in sources.items()}
        en_train, en_held = assets.split_held_out(assets.english_documents())
        en_held_paras = [p.strip() for doc in en_held for p in doc.split("\n\n") if len(p.strip()) >= 40]
        ko_eval = round_robin([held for _, held in splits.values()], self.cc.eval_chars)
        en_eval = round_robin([en_held_paras], self.cc.eval_chars)
        stats = {name: {"documents": len(docs), "characters": sum(map(len, docs)),
                        "train_characters": sum(map(len, splits[name][0])),
                        "held_out_characters": sum(map(len, splits[name][1]))} for name, docs in sources.items()}
        stats["pydoc (English)"] = {"documents": len(en_train) + len(en_held),
                                    "train_characters": sum(map(len, en_train)),
                                    "held_out_characters": sum(map(len, en_held))}
        with atomic_dir(self.corpus) as tmp:
            files = {"ko_train": [d for train, _ in splits.values() for d in train],
                     "ko_held_out": [d for _, held in splits.values() for d in held],
                     "en_train": en_train, "en_held_out": en_held, "ko_eval": ko_eval, "en_eval": en_eval}
            for name, docs in files.items():
                assets.write_jsonl(docs, tmp / f"{name}.jsonl")
            write_json(tmp / "corpus.json", {"sources": stats, "files": {
                name: {"documents": len(docs), "characters": sum(map(len, docs))} for name, docs in files.items()}})

    def write_base_tokenizer(self) -> None:
        """The base tokenizer alone (the base model directory also holds weights, which a tokenizer
        directory must not)."""
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(self.base_tokenizer)
        with atomic_dir(self.root / "base-tokenizer") as tmp:
            tok.save_pretrained(str(tmp))

    # -- training ------------------------------------------------------------------------------------
    def korean_ratio(self) -> float:
        """Korean training tokens with the base tokenizer per token with the expanded one (same text)."""
        def tokens(prefix: Path) -> int:
            return json.loads(prefix.with_suffix(".manifest.json").read_text())["tokens_written"]

        return tokens(self.root / "data-base" / "ko") / tokens(self.root / "data" / "ko")

    def write_method_config(self, m: Method) -> None:
        c, s = self.cfg, self.cc.steps
        data = self.root / m.data
        run = {
            "run_dir": str(self.method_dir(m)),
            "model": str(self.root / m.stage0),
            "seq_length": c.seq_length,
            "seed": self.cc.seed,
            "data": {"sources": [{"prefix": str(data / lang), "weight": WEIGHTS[lang], "name": lang} for lang in LANGS],
                     "valid_fraction": 0.05, "new_token_bias": 0.0, "cache_dir": str(self.root / "index-cache")},
            "training": {"eval_every": 0, "eval_samples": 8, "checkpoint_every": 10**9, "keep_checkpoints": 1,
                         "report_to": [], "progress_bar": False},
        }
        schedule = {"warmup_ratio": 0.1, "min_lr_ratio": 0.1}
        if m.roles is None:
            run["schedule"] = m.schedule
            run["stages"] = {n: {"steps": s, **schedule} for n in range(1, STAGES + 1)}
        else:
            steps = [s] * STAGES
            if self.stage_count(m) > STAGES:  # (d): on to the others' Korean text
                extra = max(0, round((self.korean_ratio() - 1) * STAGES * s))
                k = self.stage_count(m) - STAGES
                steps += [extra // k + (i < extra % k) for i in range(k)]
            run["default_stages"] = False
            run["stages"] = {n: {"trainable": list(m.roles), "lr": self.cc.full_lr, "steps": max(1, k), **schedule,
                                 "description": f"all parameters, part {n}"} for n, k in enumerate(steps, 1)}
        self.method_dir(m).mkdir(parents=True, exist_ok=True)
        with atomic_file(self.method_dir(m) / "run.yaml", "w") as f:
            yaml.safe_dump(run, f, sort_keys=False)

    def train(self, m: Method, n: int, run) -> None:
        """One stage, then free its disk: its resume checkpoints, and the previous stage's weights once
        they were evaluated (the previous stage hands off to this one only)."""
        run()
        stage_dir = self.method_dir(m) / f"stage-{n}"
        shutil.rmtree(stage_dir / "checkpoints", ignore_errors=True)
        previous = self.method_dir(m) / f"stage-{n - 1}" / "final"
        if n > 1 and not self.cc.keep_weights and self.eval_file(m.key, n - 1).exists():
            shutil.rmtree(previous, ignore_errors=True)

    def eval_step(self, name: str, model_dir: Path, output: Path) -> Step:
        def run() -> None:
            output.parent.mkdir(parents=True, exist_ok=True)
            self.call(name, _command("evaluate", "--model", model_dir,
                                     *[x for lang in LANGS for x in ("--text", f"{lang}={self.eval_text(lang)}")],
                                     "--gen-tokens", 0, "--output", output))

        return Step(name, output, run)


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cuda_devices() -> int:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device is visible")
    os.environ["DS_ACCELERATOR"] = "cuda"
    return torch.cuda.device_count()


def round_robin(groups: list[list[str]], chars: int, max_doc_chars: int = 2000) -> list[str]:
    """Documents taken in turn from each group (each cut to `max_doc_chars` at a line or sentence end)
    until `chars` characters are collected."""
    out, total, i = [], 0, 0
    iters = [iter(g) for g in groups]
    while total < chars and iters:
        it = iters[i % len(iters)]
        doc = next(it, None)
        if doc is None:
            iters.remove(it)
            continue
        if len(doc) > max_doc_chars:
            cut = max(doc.rfind("\n", 0, max_doc_chars), doc.rfind(". ", 0, max_doc_chars))
            doc = doc[:cut + 1 if cut > 0 else max_doc_chars].rstrip()
        out.append(doc)
        total += len(doc)
        i += 1
    return out


# -- results -----------------------------------------------------------------------------------------
def _stage_numbers(stage_dir: Path, world: int) -> dict:
    """Tokens per dataset, training seconds and FLOPs of one finished stage, from its metrics (every step
    logged: the bench's runs keep log_every 1)."""
    samples = {lang: 0 for lang in LANGS}
    train_s = flops = 0.0
    for line in (stage_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "train":
            train_s += rec["step_time_s"]
            flops += rec["tflops_per_device"] * 1e12 * world * rec["step_time_s"]  # the step's FLOPs, teacher included
            for lang in LANGS:
                samples[lang] += rec.get(f"samples_{lang}", 0)
    return {"samples": samples, "train_s": train_s, "flops": flops}


def collect(cmp: Compare) -> dict:
    """Per method: the evaluation points with cumulative training tokens and characters seen."""
    root, seq = cmp.root, cmp.cfg.seq_length
    corpus = json.loads((cmp.corpus / "corpus.json").read_text())["files"]
    chars_per_token = {}
    for data in ("data", "data-base"):
        chars_per_token[data] = {lang: corpus[f"{lang}_train"]["characters"] /
                                 json.loads((root / data / f"{lang}.manifest.json").read_text())["tokens_written"]
                                 for lang in LANGS}
    timings = json.loads(cmp.timings.read_text()) if cmp.timings.exists() else {}
    methods = {}
    for m in cmp.methods:
        if not cmp.eval_file(m.stage0).exists():
            continue
        first = json.loads(cmp.eval_file(m.stage0).read_text())
        points = [{"stage": 0, "tokens": 0, "ko_chars_seen": 0, "en_chars_seen": 0, "train_s": 0.0, "flops": 0.0,
                   **_eval_numbers(first)}]
        tokens = {lang: 0 for lang in LANGS}
        train_s = flops = 0.0
        for n in range(1, cmp.stage_count(m) + 1):
            stage_dir = cmp.method_dir(m) / f"stage-{n}"
            if not cmp.eval_file(m.key, n).exists():
                break
            numbers = _stage_numbers(stage_dir, cmp.cfg.nproc)
            for lang in LANGS:
                tokens[lang] += numbers["samples"][lang] * seq
            train_s += numbers["train_s"]
            flops += numbers["flops"]
            points.append({"stage": n, "tokens": sum(tokens.values()),
                           **{f"{lang}_chars_seen": round(tokens[lang] * chars_per_token[m.data][lang]) for lang in LANGS},
                           "train_s": round(train_s, 1), "flops": flops,
                           **_eval_numbers(json.loads(cmp.eval_file(m.key, n).read_text()))})
        wall = sum(v for k, v in timings.items() if k.startswith(f"{m.key}.stage-"))
        methods[m.key] = {"label": m.label, "stage0": m.stage0, "points": points, "stage_wall_s": round(wall, 1)}
    base = json.loads(cmp.eval_file("stage-0-base").read_text()) if cmp.eval_file("stage-0-base").exists() else None
    base_ko = base and _eval_numbers(base).get("ko_bits_per_char")
    for m in methods.values():
        m["break_even"] = break_even(m["points"], base_ko)
    return {"methods": methods, "base_ko_bits_per_char": base_ko, "chars_per_train_token": chars_per_token, "korean_token_ratio": cmp.korean_ratio(),
            "corpus": json.loads((cmp.corpus / "corpus.json").read_text()),
            "expansion": _expansion(root / "tokenizer"), "settings": settings(cmp), "timings": timings,
            "cpu": json.loads(cmp.cpu.read_text()) if cmp.cpu.exists() else {}}


def break_even(points: list[dict], base_ko: float | None) -> dict | None:
    """The first point after stage 0 whose Korean bits/char is below the base model's, or how far the last
    point still is from it."""
    if base_ko is None or len(points) < 2:
        return None
    hit = next((p for p in points[1:] if p["ko_bits_per_char"] < base_ko), None)
    if hit is not None:
        return {"reached": True, "stage": hit["stage"], "tokens": hit["tokens"], "flops": hit["flops"]}
    last = points[-1]
    return {"reached": False, "stage": last["stage"], "tokens": last["tokens"], "flops": last["flops"],
            "bits_per_char_left": last["ko_bits_per_char"] - base_ko}


def _eval_numbers(ev: dict) -> dict:
    texts = ev["texts"]
    return {f"{lang}_{k}": texts[lang][k] for lang in LANGS for k in ("bits_per_char", "chars_per_token")
            if lang in texts and k in texts[lang]}


def _expansion(tok_dir: Path) -> dict:
    rep = json.loads((tok_dir / "expansion_report.json").read_text())
    return {"base_vocab_size": rep["base_vocab_size"], "new_tokens": rep["vocab_size"] - rep["base_vocab_size"],
            "chars_per_token": rep.get("chars_per_token")}


def settings(cmp: Compare) -> dict:
    from megaeeve.training.config import batch_shape
    from megaeeve.training.plan import read_ds_config

    batch = batch_shape(read_ds_config(cmp.cfg.ds_config), cmp.cfg.nproc, str(cmp.cfg.ds_config))
    return {"scale": cmp.cc.scale, "steps_per_stage": cmp.cc.steps, "stages": STAGES, "nproc": cmp.cfg.nproc,
            "global_batch": batch.global_batch, "seq_length": cmp.cfg.seq_length,
            "tokens_per_step": batch.global_batch * cmp.cfg.seq_length, "full_lr": cmp.cc.full_lr,
            "same_text_stages": cmp.cc.same_text_stages, "ds_config": cmp.cfg.ds_config.name,
            "eval_chars": cmp.cc.eval_chars, "seed": cmp.cc.seed, "blend": WEIGHTS,
            "intermediate_vocab_size": cmp.cc.intermediate_vocab_size, "min_frequency": cmp.cc.min_frequency}


def _fmt(x: float | None, digits: int = 3) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def point_at(points: list[dict], stage: int) -> dict | None:
    return next((p for p in points if p["stage"] == stage), None)


def tables(res: dict) -> str:
    methods = res["methods"]
    lines = ["| method | Korean bits/char: start | after 7 stages (same tokens) | English bits/char: start "
             "| after 7 stages | Korean chars/token | training s (7 stages) | training FLOPs (7 stages) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key, m in methods.items():
        p0, p7 = m["points"][0], point_at(m["points"], STAGES)
        flops = f"{p7['flops']:.3g}" if p7 else ""
        lines.append(f"| {m['label']} | {_fmt(p0.get('ko_bits_per_char'))} | {_fmt(p7 and p7.get('ko_bits_per_char'))} "
                     f"| {_fmt(p0.get('en_bits_per_char'))} | {_fmt(p7 and p7.get('en_bits_per_char'))} "
                     f"| {_fmt(p0.get('ko_chars_per_token'), 2)} | {_fmt(p7 and p7['train_s'], 0)} | {flops} |")
    d = methods.get("no-expand")
    last = d["points"][-1] if d else None
    if last and last["stage"] > STAGES:
        lines.append(f"| (d) same Korean text ({last['tokens']:,} tokens, {last['stage']} stages) | "
                     f"{_fmt(d['points'][0].get('ko_bits_per_char'))} | {_fmt(last.get('ko_bits_per_char'))} "
                     f"| {_fmt(d['points'][0].get('en_bits_per_char'))} | {_fmt(last.get('en_bits_per_char'))} "
                     f"| {_fmt(last.get('ko_chars_per_token'), 2)} | {_fmt(last['train_s'], 0)} | {last['flops']:.3g} |")
    out = ["\n".join(lines)]
    if res.get("base_ko_bits_per_char") is not None:
        rows = [f"| method | break-even: Korean bits/char below the base model's ({res['base_ko_bits_per_char']:.3f}) |",
                "|---|---|"]
        for m in methods.values():
            b = m.get("break_even")
            if b is None:
                continue
            where = f"{b['tokens']:,} training tokens, {b['flops']:.3g} FLOPs (stage {b['stage']})"
            rows.append(f"| {m['label']} | " + (f"reached after {where}" if b["reached"] else
                        f"not reached: {b['bits_per_char_left']:.3f} bits/char above it after {where}") + " |")
        out.append("\n".join(rows))
    longest = max((m["points"] for m in methods.values()), key=len)
    for lang, name in (("ko", "Korean"), ("en", "English")):
        n = len(longest)
        head = " | ".join(f"{p['tokens'] / 1000:.1f}k" for p in longest)
        rows = [f"| {name} bits/char after (training tokens) | {head} |", "|---|" + "---:|" * n]
        for m in methods.values():
            vals = [_fmt(p.get(f"{lang}_bits_per_char")) for p in m["points"]] + [""] * (n - len(m["points"]))
            rows.append(f"| {m['label']} | " + " | ".join(vals) + " |")
        out.append("\n".join(rows))
    if last and last["stage"] > STAGES:
        out.append(f"(d)'s stages {STAGES + 1}-{last['stage']} take it from {point_at(d['points'], STAGES)['tokens']:,} "
                   f"to {last['tokens']:,} training tokens: the Korean text the others saw in their 7 stages.")
    return "\n\n".join(out)


def plot(res: dict, path: Path) -> None:
    from megaeeve.report import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    for key, m in res["methods"].items():
        pts = m["points"]
        kw = dict(marker="o", markersize=3, label=m["label"])
        axes[0].plot([p["tokens"] / 1000 for p in pts], [p.get("ko_bits_per_char") for p in pts], **kw)
        axes[1].plot([p["flops"] / 1e12 for p in pts], [p.get("ko_bits_per_char") for p in pts], **kw)
        axes[2].plot([p["ko_chars_seen"] / 1000 for p in pts], [p.get("ko_bits_per_char") for p in pts], **kw)
        axes[3].plot([p["tokens"] / 1000 for p in pts], [p.get("en_bits_per_char") for p in pts], **kw)
    if res.get("base_ko_bits_per_char") is not None:
        for ax in axes[:3]:
            ax.axhline(res["base_ko_bits_per_char"], color="gray", linestyle="--", linewidth=1, label="base model")
    for ax, title, xlabel in ((axes[0], "Korean, same training tokens", "training tokens (thousands)"),
                              (axes[1], "Korean, same training FLOPs", "training FLOPs (10^12, teacher included)"),
                              (axes[2], "Korean, same training text", "Korean training characters seen (thousands)"),
                              (axes[3], "English (held-out pydoc)", "training tokens (thousands)")):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("bits per character (held-out)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    st = res["settings"]
    fig.suptitle(f"SmolLM2-135M, {st['stages']} stages x {st['steps_per_stage']} steps x {st['tokens_per_step']:,} "
                 f"tokens per method", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def machine() -> str:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{os.cpu_count()} CPU cores ({cpu}), {mem:.0f} GiB RAM{gpu}, torch {torch.__version__}, Python {platform.python_version()}"


def section(res: dict, png: Path | None) -> str:
    st, corpus = res["settings"], res["corpus"]
    wall_s = sum(res["timings"].values())
    cpu = res.get("cpu") or {}
    cost = f"{wall_s / 60:.0f} minutes end to end (the steps' wall times summed)" if wall_s else ""
    if cpu:
        loads = [v[1] for v in cpu.values()]
        cost += (f", {sum(v[0] for v in cpu.values()) / 60:.0f} CPU-minutes of its processes (load average at the "
                 f"steps' ends {min(loads):.1f}-{max(loads):.1f})")
    ko_train = corpus["files"]["ko_train"]["characters"]
    src = ", ".join(f"{k} {v['characters']:,}" for k, v in corpus["sources"].items() if "characters" in v)
    total_tokens = st["tokens_per_step"] * st["steps_per_stage"] * STAGES
    text = [SECTION, "",
            f"Machine: {machine()}. `python bench/compare_methods.py --scale {st['scale']:g}`"
            + (f"; {cost}." if cost else "."), "",
            f"Budget per method: {STAGES} stages x {st['steps_per_stage']} steps x {st['tokens_per_step']:,} tokens "
            f"({st['global_batch']} sequences of {st['seq_length']} on {st['nproc']} ranks, {st['ds_config']}) = "
            f"{total_tokens:,} training tokens, blend Korean {WEIGHTS['ko']} / English {WEIGHTS['en']} by sequences, "
            f"seed {st['seed']}. Each stage: 10% warmup, cosine to 10% of its lr. (a): EEVE's roles and lrs "
            f"(2e-4, 2e-4, 1e-4, 5e-5, 5e-5, 2e-5, 2e-5); (e): the same with stages 1-3 distilled from the base model "
            f"(`schedule: eeve+distill`; its FLOPs include the teacher's forward); (b)-(d): all parameters at "
            f"{st['full_lr']:g} in every stage. "
            f"(d) then trains {st['same_text_stages']} more stages up to the Korean text the others saw "
            f"(Korean tokens base/expanded: {res['korean_token_ratio']:.2f}).", "",
            f"Korean text: {src} characters (Debian packages via bench/korean_debian.py; {ko_train:,} for training); "
            f"held-out eval: {corpus['files']['ko_eval']['characters']:,} Korean and "
            f"{corpus['files']['en_eval']['characters']:,} English characters (tools/evaluate.py). Tokenizer: "
            f"+{res['expansion']['new_tokens']:,} Korean tokens (intermediate {st['intermediate_vocab_size']}, "
            f"min frequency {st['min_frequency']}).", "", tables(res)]
    if png is not None:
        text += ["", f"![bits per character]({png.name})"]
    return "\n".join(text) + "\n"


def report(cmp: Compare) -> dict:
    res = collect(cmp)
    write_json(cmp.result, res)
    png = cmp.root / "compare_methods.png"
    plot(res, png)
    print("\n" + tables(res))
    print(f"\nplot: {png}; numbers: {cmp.result}")
    return res


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
    cc = CompareConfig(out=args.out, scale=args.scale, gpu=args.gpu, full_lr=args.full_lr,
                       same_text_stages=args.same_text_stages, eval_chars=args.eval_chars,
                       keep_weights=args.keep_weights, methods=methods, nproc=args.nproc)
    cmp = Compare(cc)
    if not args.report_only:
        cmp.run()
    res = report(cmp)
    if args.results:
        from bench_preprocess import write_results

        png = None
        if args.plot:
            png = Path(args.plot)
            shutil.copyfile(cmp.root / "compare_methods.png", png)
        write_results(section(res, png), Path(args.results))
        print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
