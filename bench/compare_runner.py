"""The method comparison of bench/compare_methods.py as a pipeline: its methods, its settings and its steps.

The default pipeline's steps where they fit (corpus, base model, tokenizer, datasets), plus the comparison's
own: the Debian Korean corpus, the base tokenizer alone, one stage-0 directory per initialisation, the base
tokenizer's datasets, and per method a RUN.yaml, its stages and an evaluation after each. Every step is
timed (timings.json, cpu.json). bench/bench_init.py reuses the set-up steps; compare_results.py reads
what the steps leave in --out.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from megaeeve import assets
from megaeeve.atomic import atomic_dir, atomic_file, write_json
from megaeeve.pipeline import Pipeline, PipelineConfig, Step, command
from megaeeve.stages import BASE_ROLES, ROLES as ALL_ROLES, cooldown_lrs

REPO = Path(__file__).resolve().parents[1]

STAGES = 7
LANGS = ("ko", "en")


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    stage0: str  # directory name under --out
    data: str  # dataset directory under --out (tokenized with this method's tokenizer)
    roles: tuple[str, ...] | None  # None: a preset stage table
    schedule: str = "eeve"  # the preset (megaeeve.stages.SCHEDULES) when roles is None
    added_rows_lr_scale: float = 1.0  # the stages' setting: the new tokens' rows at this multiple of the lr
    objective: str = "lm"  # every stage's objective when roles is set (megaeeve.stages.OBJECTIVES)
    output_map: dict | None = None  # every stage's `output_map` (megaeeve.stages.OutputMapSpec) when roles is set
    # warmup-stable-decay over the stages: 0, every stage decays on its own (the pipeline's); K, the stages before
    # the last K hold the peak lr and the last K share one cosine cooldown to 10% (cooldown_lrs)
    cooldown_stages: int = 0


METHODS = (
    Method("eeve", "(a) EEVE, 7 stages", "stage-0", "data", None),
    Method("full-eeve", "(b) all parameters, EEVE init", "stage-0", "data", ALL_ROLES),
    Method("full-mean", "(c) all parameters, mean init", "stage-0-mean", "data", ALL_ROLES),
    Method("no-expand", "(d) no expansion (base tokenizer)", "stage-0-base", "data-base", BASE_ROLES),
    Method("eeve-distill", "(e) EEVE, stages 1-3 distilled", "stage-0", "data", None, "eeve+distill"),
    Method("fit", "(f) fitted init, 7 EEVE stages", "stage-0-fit", "data", None),
    Method("full-fit", "(g) all parameters, fitted init", "stage-0-fit", "data", ALL_ROLES),
    Method("full-fit-lr10", "(h) as (g), new rows at 10x lr", "stage-0-fit", "data", ALL_ROLES,
           added_rows_lr_scale=10.0),
    Method("full-fit-frozen-new", "(i) as (g), new rows frozen", "stage-0-fit", "data", BASE_ROLES),
    Method("full-fit-rank", "(j) as (g), output rows through a shared rank-16 map", "stage-0-fit-rank16", "data",
           ALL_ROLES),
    Method("full-fit-rank-mixed", "(k) as (j), next-token loss + distillation from the base", "stage-0-fit-rank16",
           "data", ALL_ROLES, objective="mixed"),
    Method("full-fit-rank-map", "(l) as (j), new output rows also through a trained rank-16 map",
           "stage-0-fit-rank16", "data", (*ALL_ROLES, "output_map"), output_map={"rank": 16, "lr_scale": 6.0}),
    Method("full-fit-rank-frozen-new", "(m) as (j), the new tokens' rows frozen", "stage-0-fit-rank16", "data",
           BASE_ROLES),
    Method("full-fit-rank-frozen-new-wsd", "(n) as (m), the lr decayed in the last stage only", "stage-0-fit-rank16",
           "data", BASE_ROLES, cooldown_stages=1),
    Method("full-fit-rank-frozen-new-wsd2", "(o) as (n), the lr decayed over the last two stages",
           "stage-0-fit-rank16", "data", BASE_ROLES, cooldown_stages=2),
    Method("full-fit-rank-slow-new-wsd2", "(p) as (o), the new rows trained at 0.1x the lr", "stage-0-fit-rank16",
           "data", ALL_ROLES, added_rows_lr_scale=0.1, cooldown_stages=2),
)
# Every stage-0 directory a method reads: the tokenizer it extends and `megaeeve extend`'s flags. Only those of
# the chosen methods are made (an input fit is 20 minutes on 2 CPU cores), and always the base: the reference.
STAGE0 = {
    "stage-0": ("tokenizer", ("--init", "eeve")),  # the card's
    "stage-0-fit": ("tokenizer", ("--init", "fit", "--fit-output-steps", "0")),  # without the output map, as measured
    "stage-0-mean": ("tokenizer", ("--init", "mean")),
    "stage-0-base": ("base-tokenizer", ("--allow-no-new-tokens",)),
    "stage-0-fit-rank16": ("tokenizer", ("--init", "fit", "--fit-output-steps", "600", "--fit-output-rank", "16",
                                         "--fit-samples", "256", "--fit-english-samples", "64")),
}
BASE_STAGE0 = "stage-0-base"


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
    korean_weight: float = 0.7  # Korean's share of the training sequences (the default pipeline's blend)
    methods: tuple[str, ...] = tuple(m.key for m in METHODS)

    def __post_init__(self) -> None:
        if not 0 < self.korean_weight < 1:
            raise ValueError(f"korean_weight {self.korean_weight}: Korean's share of the blend must lie in (0, 1)")

    @property
    def steps(self) -> int:
        return max(1, round(self.steps_per_stage * self.scale))

    @property
    def weights(self) -> dict[str, float]:
        return {"ko": self.korean_weight, "en": round(1 - self.korean_weight, 10)}


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

    def options(self) -> dict[str, str]:
        """The pipeline's options and the comparison's own that shape what a step writes: a rerun that changes one
        of them in the same --out is refused (Pipeline.check_options) instead of mixing two settings in one table.
        --methods may grow between runs: a method's steps are its own."""
        own = ("scale", "full_lr", "korean_weight", "same_text_stages", "eval_chars", "seed")
        return {**super().options(), **{f"compare_{k}": str(getattr(self.cc, k)) for k in own}}

    # -- steps ---------------------------------------------------------------------------------------
    def steps(self) -> list[Step]:
        r = self.root
        parent = {s.name: s for s in super().steps()}
        steps = [Step("korean-debian", r / "korean-debian", self.write_korean_debian), parent["corpus"],
                 parent["base"], parent["tokenizer"],
                 Step("base-tokenizer", r / "base-tokenizer", self.write_base_tokenizer),
                 *[self.extend_step(name, r / STAGE0[name][0], r / name, *STAGE0[name][1]) for name in self.stage0s],
                 parent["data-ko"], parent["data-en"],
                 *[self.data_step(f"data-base-{lang}", lang, r / "base-tokenizer", r / "data-base" / lang)
                   for lang in LANGS]]
        for stage0 in self.stage0s:
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

    @property
    def stage0s(self) -> list[str]:
        """The stage-0 directories the chosen methods read, and the base model's, in STAGE0's order."""
        return [name for name in STAGE0 if name == BASE_STAGE0 or any(m.stage0 == name for m in self.methods)]

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
        from bench import korean_debian

        korean_debian.build(self.root / "korean-debian", self.root / "debs")

    def write_corpus(self) -> None:
        """Korean: konlpy + the Debian packages; English: pydoc. Every 10th document of each source is
        held out; the eval texts take held-out documents round-robin over the sources."""
        from bench import korean_debian

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
            "data": {"sources": [{"prefix": str(data / lang), "weight": self.cc.weights[lang], "name": lang}
                                 for lang in LANGS],
                     "valid_fraction": 0.05, "new_token_bias": 0.0, "cache_dir": str(self.root / "index-cache")},
            "training": {"eval_every": 0, "eval_samples": 8, "checkpoint_every": 10**9, "keep_checkpoints": 1,
                         "report_to": [], "progress_bar": False},
        }
        lr_schedule = {"warmup_ratio": 0.1, "min_lr_ratio": 0.1}
        if m.added_rows_lr_scale != 1:
            lr_schedule["added_rows_lr_scale"] = m.added_rows_lr_scale
        if m.roles is None:
            run["schedule"] = m.schedule
            run["stages"] = {n: {"steps": s, **lr_schedule} for n in range(1, STAGES + 1)}
        else:
            steps = [s] * STAGES
            if self.stage_count(m) > STAGES:  # (d): on to the others' Korean text
                extra = max(0, round((self.korean_ratio() - 1) * STAGES * s))
                k = self.stage_count(m) - STAGES
                steps += [extra // k + (i < extra % k) for i in range(k)]
            run["default_stages"] = False
            objective = {"objective": m.objective} if m.objective != "lm" else {}
            if m.output_map:
                objective["output_map"] = dict(m.output_map)
            lrs = cooldown_lrs(len(steps), m.cooldown_stages, lr_schedule["min_lr_ratio"])
            run["stages"] = {n: {"trainable": list(m.roles), "lr": self.cc.full_lr * start, "steps": max(1, k),
                                 **lr_schedule, **({"min_lr_ratio": end / start} if lrs else {}), **objective,
                                 "description": f"all parameters, part {n}"}
                             for n, (k, (start, end)) in enumerate(zip(steps, lrs or [(1, 1)] * len(steps)), 1)}
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
            self.call(name, command("evaluate", "--model", model_dir,
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

