"""The run report: what a run did, as markdown with PNG plots (run_dir/report/).

Any run: one made by `megaeeve pipeline` or stages trained by hand or through SLURM from a RUN.yaml. Reads
only the run's own outputs: its RUN.yaml, the expansion report (in stage-0, which holds the expanded
tokenizer's files, or the pipeline's tokenizer/), stage-N/metrics.jsonl and DONE, stage-N/checkpoints, the
model directories, and where the pipeline made them eval/*.json (tools/evaluate.py) and export/. The frozen-parameter
check (megaeeve/training/frozen.py) is recomputed from the weights on disk, independently of the trainer's own
bookkeeping: each stage's last DeepSpeed checkpoint against the stage's input.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

from megaeeve.atomic import atomic_dir
from megaeeve.training.frozen import frozen_check

PROMPTS = ("대한민국의 모든 국민은", "The import statement")  # the default run's languages: target, English
PROMPT_CHARS = 24
TEXT_LABELS = {"held_out": "target language (held out)", "other_domain": "target language, another domain",
               "english": "English (held out)"}


def prompt_from(document: str, chars: int = PROMPT_CHARS) -> str:
    """A greedy prompt from the start of a document: its first `chars` characters, cut back to the last space
    within them when there is one (a prompt that ends inside a word asks the model to finish that word)."""
    head = " ".join(document.split())[:chars]
    return head.rsplit(" ", 1)[0] if " " in head[1:] and len(head) == chars else head


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def stage_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """Completed stages (those with DONE), in stage order."""
    found = []
    for d in run_dir.glob("stage-*"):
        suffix = d.name.split("-", 1)[1]
        if suffix.isdigit() and int(suffix) > 0 and (d / "DONE").is_file():
            found.append((int(suffix), d))
    return sorted(found)


def read_evals(run_dir: Path) -> dict[str, dict[str, Any]]:
    """eval/NAME.json (tools/evaluate.py) -> NAME -> text -> numbers, for base and stage-N, in stage order."""
    found = {p.stem: json.loads(p.read_text(encoding="utf-8"))["texts"] for p in (run_dir / "eval").glob("*.json")
             if p.stem == "base" or p.stem.removeprefix("stage-").isdigit()}
    return {name: found[name] for name in sorted(found, key=lambda n: -1 if n == "base" else int(n[len("stage-"):]))}


def pyplot() -> ModuleType:
    """matplotlib's pyplot on the file-only Agg backend: reports are rendered on machines with no screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_tokenizer(expansion: dict[str, Any], out: Path) -> None:
    plt = pyplot()
    rounds = expansion["rounds"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    xs = [r["round"] for r in rounds]
    ax1.plot(xs, [r["new_tokens"] for r in rounds], "o-", label="new tokens")
    ax1.bar([x - 0.15 for x in xs], [len(r["dropped"]) for r in rounds], width=0.3, color="tab:red", label="dropped")
    ax1.bar([x + 0.15 for x in xs], [len(r["added"]) for r in rounds], width=0.3, color="tab:green",
            label="characters added")
    ax1.set_xlabel("refinement round")
    ax1.set_ylabel("tokens")
    ax1.set_title("Tokenizer growth per round")
    ax1.set_xticks(xs)
    ax1.legend()
    cpt = expansion.get("chars_per_token") or {}
    names = [n for n in TEXT_LABELS if cpt.get(n)]
    for i, name in enumerate(names):
        b, e = cpt[name]["base_chars_per_token"], cpt[name]["expanded_chars_per_token"]
        ax2.bar([i - 0.2], [b], width=0.4, color="tab:gray", label="base" if i == 0 else None)
        ax2.bar([i + 0.2], [e], width=0.4, color="tab:blue", label="expanded" if i == 0 else None)
        ax2.text(i - 0.2, b, f"{b:.2f}", ha="center", va="bottom")
        ax2.text(i + 0.2, e, f"{e:.2f}", ha="center", va="bottom")
    ax2.set_xticks(range(len(names)), [TEXT_LABELS[n] for n in names])
    ax2.set_ylabel("characters per token")
    ax2.set_title("Compression before / after")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _plot_losses(stages: list[tuple[int, list[dict[str, Any]]]], out: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 4.5))
    offset = 0
    eval_series: dict[str, tuple[list[float], list[float]]] = {}
    for number, records in stages:
        train = [r for r in records if r["kind"] == "train"]
        ax.plot([offset + r["step"] for r in train], [r["loss"] for r in train], color="tab:gray", lw=1,
                label="train loss" if offset == 0 else None)
        for r in records:
            if r["kind"] != "eval":
                continue
            for key, value in r.items():
                if key.startswith("eval_loss_"):
                    xs, ys = eval_series.setdefault(key[len("eval_loss_"):], ([], []))
                    xs.append(offset + r["step"])
                    ys.append(value)
        last = max((r["step"] for r in records), default=0)
        ax.axvline(offset, color="black", lw=0.6, ls=":")
        ax.text(offset + last / 2, 1.0, f"stage {number}", transform=ax.get_xaxis_transform(), ha="center",
                va="bottom", fontsize=8)
        offset += last
    for name, (xs, ys) in sorted(eval_series.items()):
        ax.plot(xs, ys, "o-", ms=3, label=f"eval loss ({name})")
    ax.set_xlabel("optimizer step (all stages, in order)")
    ax.set_ylabel("cross-entropy loss")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _plot_bits_per_char(evals: dict[str, dict[str, Any]], out: Path) -> None:
    plt = pyplot()
    stages = [n for n in evals if n != "base"]
    texts = list(evals[stages[0]])
    fig, axes = plt.subplots(1, len(texts), figsize=(5.5 * len(texts), 4), squeeze=False)
    for ax, text in zip(axes[0], texts):
        xs = list(range(len(stages)))
        ax.plot(xs, [evals[n][text]["bits_per_char"] for n in stages], "o-", label="extended model")
        if "base" in evals:
            ax.axhline(evals["base"][text]["bits_per_char"], color="tab:gray", ls="--", label="base model")
        ax.set_xticks(xs, [n.removeprefix("stage-") for n in stages])
        ax.set_xlabel("after stage (0: extended, untrained)")
        ax.set_ylabel("bits per character")
        ax.set_title(TEXT_LABELS.get(text, text))
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def generate(model_path: str, tokenizer_path: str, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy continuations (any model kind megaeeve.eval loads)."""
    from megaeeve.eval import greedy, load_any_model, load_hf_tokenizer

    return greedy(load_any_model(model_path), load_hf_tokenizer(tokenizer_path), prompts, max_new_tokens)


# Where bench/compare_methods.py measured break-even (bench/RESULTS.md, "Break-even", method (o) = the schedule
# frozen-new-wsd): SmolLM2-135M came level with its base's held-out Korean after this many training tokens.
BREAK_EVEN_TOKENS = 107_520


def _eval_section(evals: dict[str, dict[str, Any]], trained_tokens: int) -> list[str]:
    """Bits/char per model and text, what stage 0 changed on English, generation speed base vs final."""
    texts = list(next(iter(evals.values())))
    labels = [TEXT_LABELS.get(t, t) for t in texts]
    md = ["## Held-out evaluation", "",
          "Bits per character (lower is better) on held-out documents that occur nowhere in the training text, "
          "each model with its own tokenizer (tools/evaluate.py; `eval/*.json`). Scored: " + "; ".join(
              f"{label} {e['characters']:,} characters in {e['documents']:,} documents"
              for label, e in zip(labels, next(iter(evals.values())).values())) + ".", ""]
    header = ["model"] + [f"{label}: {what}" for label in labels for what in ("bits/char", "chars/token")]
    rows = [[name] + [f"{e[t][k]:.4f}" if k == "bits_per_char" else f"{e[t][k]:.2f}"
                      for t in texts for k in ("bits_per_char", "chars_per_token")] for name, e in evals.items()]
    md += [_md_table(header, rows), "", "![bits per character](bits_per_char.png)", ""]
    final = [n for n in evals if n != "base"][-1]
    md += _verdict(evals, texts, final, trained_tokens)
    base, stage0 = evals.get("base", {}).get("english"), evals.get("stage-0", {}).get("english")
    if base and stage0 and base["tokens"] == stage0["tokens"]:
        per_token = (stage0["bits_per_char"] - base["bits_per_char"]) * base["chars_per_token"]
        md += [f"English, stage 0 against the base: {per_token:+.4f} bits per token with the same token ids "
               f"(geometric mean over tokens: the base's probability times {2 ** -per_token:.4f}).", ""]
    if "base" in evals and evals[final][texts[0]].get("gen_chars_per_s"):
        md += ["Greedy generation speed, characters per second (one prompt at a time, the same number of new "
               "tokens for both):", ""]
        md.append(_md_table(["model"] + labels, [[n] + [f"{evals[n][t]['gen_chars_per_s']:.1f}" for t in texts]
                                                 for n in ("base", final)]))
        md.append("")
    return md


def _verdict(evals: dict[str, dict[str, Any]], texts: list[str], final: str, trained_tokens: int) -> list[str]:
    """Base, stage 0 and the final model on every text, and whether the final model beats the base: said plainly."""
    if "base" not in evals or "stage-0" not in evals:
        return []
    rows, lost = [], []
    for t in texts:
        b, s0, f = (evals[n][t]["bits_per_char"] for n in ("base", "stage-0", final))
        rows.append([TEXT_LABELS.get(t, t), f"{b:.4f}", f"{s0:.4f} ({s0 - b:+.4f})", f"{f:.4f} ({f - b:+.4f})",
                     "yes" if f < b else "no"])
        if f >= b:
            lost.append(TEXT_LABELS.get(t, t))
    md = ["Against the base model (bits/char; in brackets the difference to the base):", "",
          _md_table(["text", "base", "stage 0", final, f"{final} beats the base"], rows), ""]
    md.append(f"The final model is worse than its base on: {', '.join(lost)}, after {trained_tokens:,} training "
              f"tokens. A run this short has not paid back what the new vocabulary costs there: bench/RESULTS.md "
              f"(\"Break-even\") measured SmolLM2-135M level with its base's held-out Korean after "
              f"{BREAK_EVEN_TOKENS:,} tokens (the frozen-new-wsd schedule after the fitted init)." if lost
              else f"The final model beats its base on every text, after {trained_tokens:,} training tokens.")
    return md + [""]


def _tokenizer_section(expansion: dict[str, Any] | None, found: Path | None, stage0: Path) -> list[str]:
    if expansion is None:
        return ["## Tokenizer", "", f"No expansion_report.json in {stage0} or the run's tokenizer/ (a tokenizer not "
                "made by `megaeeve expand-vocab`).", ""]
    rounds = expansion["rounds"]
    cpt = expansion.get("chars_per_token") or {}
    md = ["## Tokenizer", "",
          f"{len(expansion['new_tokens'])} new tokens after {len(rounds)} refinement round(s) "
          f"(base vocabulary {expansion.get('base_vocab_size', '?')}; {found}).", ""]
    md.append(_md_table(["round", "new tokens", "dropped", "characters added"],
                        [[r["round"], r["new_tokens"], len(r["dropped"]), len(r["added"])] for r in rounds]))
    md += ["", _md_table(["text (held out)", "base chars/token", "expanded chars/token", "identical ids"],
                         [[TEXT_LABELS.get(name, name), s["base_chars_per_token"], s["expanded_chars_per_token"],
                           s["identical_ids"]] for name, s in cpt.items() if s]), "", "![tokenizer](tokenizer.png)", ""]
    return md


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def find_expansion_report(run_dir: Path, stage0: Path) -> Path | None:
    """expand_vocab's report: stage-0 holds the expanded tokenizer's files, the pipeline also keeps tokenizer/."""
    from megaeeve.model.extend import EXPANSION_REPORT

    return next((p for p in (stage0 / EXPANSION_REPORT, run_dir / "tokenizer" / EXPANSION_REPORT) if p.is_file()), None)


def final_evals(done: list[tuple[int, Path]]) -> dict[int, dict[str, float]]:
    """Each stage's last in-training evaluation (metrics.jsonl): eval_loss_<dataset> and a distilling stage's terms."""
    out = {}
    for number, d in done:
        evals = [r for r in _read_jsonl(d / "metrics.jsonl") if r.get("kind") == "eval"]
        if evals:
            out[number] = {"step": evals[-1]["step"],
                           **{k: v for k, v in evals[-1].items() if k.startswith("eval_")}}
    return out


def build_report(run_dir: Path, config: Path, *, base_model: str, base_tokenizer: str,
                 prompts: tuple[str, ...] = PROMPTS, max_new_tokens: int = 24) -> Path:
    """Write run_dir/report/{report.md, tokenizer.png, loss.png, bits_per_char.png, report.json} atomically."""
    from megaeeve.model import read_model_meta
    from megaeeve.training.config import load_run_config
    from megaeeve.training.plan import meta_stage_model, stage_plans

    run_dir = Path(run_dir)
    cfg = load_run_config(config)
    meta = read_model_meta(cfg.model)
    found = find_expansion_report(run_dir, cfg.model)
    expansion = json.loads(found.read_text(encoding="utf-8")) if found else None
    done = stage_dirs(run_dir)
    plans = {p["stage"]: p for p in stage_plans(cfg.model, [cfg.stages[n] for n in cfg.run_stages])}
    checks = {}
    for number, d in done:
        previous = cfg.previous_stage(number)
        src = cfg.model if previous is None else cfg.stage_dir(previous) / "final"
        _, roles = meta_stage_model(cfg.model, cfg.stages[number], meta=meta)  # the roles as the stage built them
        checks[number] = frozen_check(src, d / "checkpoints", roles, list(cfg.stages[number].trainable))
    evals = read_evals(run_dir)
    in_training = final_evals(done)
    prompts = list(prompts)
    samples = {"base": generate(base_model, base_tokenizer, prompts, max_new_tokens)}
    final = run_dir / "export" if (run_dir / "export").is_dir() else (done[-1][1] / "final" if done else None)
    if final is not None:
        label = "final" if final.name == "export" else f"stage {done[-1][0]}"
        samples[label] = generate(str(final), str(final), prompts, max_new_tokens)

    with atomic_dir(run_dir / "report", overwrite=True) as out:
        if expansion:
            _plot_tokenizer(expansion, out / "tokenizer.png")
        _plot_losses([(n, _read_jsonl(d / "metrics.jsonl")) for n, d in done], out / "loss.png")
        if evals:
            _plot_bits_per_char(evals, out / "bits_per_char.png")
        md = [f"# megaeeve run report: {run_dir.name}", "", f"Run config: {config}", ""]
        md += _tokenizer_section(expansion, found, cfg.model)
        md += ["## Training", "", "![loss](loss.png)", ""]
        rows, trained_tokens = [], 0
        for number, d in done:
            plan, check = plans.get(number, {}), checks[number]
            summary = json.loads((d / "DONE").read_text(encoding="utf-8"))
            trained_tokens += summary.get("consumed_samples", 0) * cfg.seq_length  # samples of every rank
            frozen = (f"{check['frozen_unchanged']}/{check['frozen_total']} unchanged" if check["frozen_total"]
                      else "no frozen tensors")
            stage = cfg.stages[number]
            rows.append([number, ", ".join(stage.trainable), f"{plan.get('trainable', 0):,}",
                         f"{plan.get('optimizer_bytes', 0) / 2**20:,.1f}", summary.get("steps"),
                         f"{stage.lr:.3g} -> {stage.lr * stage.min_lr_ratio:.3g}", frozen,
                         f"{check['trainable_changed']}/{check['trainable_total']} changed",
                         "ok" if check["ok"] else "FAILED: " + ", ".join(check["violations"][:3])])
        md.append(_md_table(["stage", "trainable roles", "trainable params", "optimizer state MiB", "steps",
                             "lr (peak -> end)", "frozen tensors", "trainable tensors", "check"], rows))
        md += ["", "Recomputed from each stage's last DeepSpeed checkpoint against the stage's input: frozen tensors "
               "equal to the input in the engine's dtype, trainable ones changed."]
        if in_training:
            keys = sorted({k for e in in_training.values() for k in e if k != "step"})
            md += ["", "Each stage's last evaluation during training (next-token cross entropy per token of the "
                   "expanded tokenizer on its validation split, per dataset; `metrics.jsonl`):", ""]
            md.append(_md_table(["stage", "step", *keys], [[n, e["step"], *(f"{e[k]:.4f}" if k in e else "" for k in keys)]
                                                          for n, e in in_training.items()]))
        if evals:
            md += [""] + _eval_section(evals, trained_tokens)
        md += ["", "## Samples (greedy)", ""]
        for i, prompt in enumerate(prompts):
            md.append(f"**Prompt:** {prompt}")
            md.append("")
            for who, texts in samples.items():
                md.append(f"- {who}: {texts[i]!r}")
            md.append("")
        (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
        (out / "report.json").write_text(json.dumps({"frozen_checks": checks, "evaluation": evals,
                                                     "final_evals": in_training, "prompts": prompts, "samples": samples,
                                                     "stage_plans": plans, "trained_tokens": trained_tokens},
                                                    indent=2, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
    return run_dir / "report"
