"""The run report: what a pipeline run did, as markdown with PNG plots (run_dir/report/).

Reads only the run's own outputs: tokenizer/expansion_report.json, stage-N/metrics.jsonl and DONE,
the stage-N/final model directories, export/. The frozen-parameter check is recomputed here from the
weights on disk (stage N-1's final/ against stage N's), independently of the trainer's own bookkeeping.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from megaeeve.atomic import atomic_dir
from megaeeve.model.checkpoint import MODEL_FILE

KOREAN_PROMPT = "대한민국의 모든 국민은"
ENGLISH_PROMPT = "The import statement"
TEXT_LABELS = {"held_out": "target language (held out)", "english": "English (held out)"}


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


def frozen_check(src: Path, dst: Path, roles: dict[str, str], trainable_roles: list[str]) -> dict[str, Any]:
    """Compare two model directories tensor by tensor: frozen roles must be bitwise equal, trainable ones changed."""
    out = {"frozen_total": 0, "frozen_unchanged": 0, "trainable_total": 0, "trainable_changed": 0, "violations": []}
    with safe_open(str(src / MODEL_FILE), "pt") as a, safe_open(str(dst / MODEL_FILE), "pt") as b:
        for name, role in roles.items():
            x, y = a.get_tensor(name), b.get_tensor(name)
            same = x.shape == y.shape and torch.equal(x.to(y.dtype), y)
            if role in trainable_roles:
                out["trainable_total"] += 1
                out["trainable_changed"] += not same
            else:
                out["frozen_total"] += 1
                out["frozen_unchanged"] += same
                if not same:
                    out["violations"].append(name)
    out["ok"] = out["frozen_unchanged"] == out["frozen_total"] and out["trainable_changed"] == out["trainable_total"]
    return out


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend: reports are rendered on machines with no screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_tokenizer(expansion: dict[str, Any], out: Path) -> None:
    plt = _pyplot()
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
    plt = _pyplot()
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


def generate(model_path: str, tokenizer_path: str, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy continuations with plain transformers (gguf files and HF directories both load)."""
    from transformers import AutoTokenizer

    from megaeeve.model.extend import load_base_model

    model = load_base_model(model_path).eval()
    path = Path(tokenizer_path)
    if path.suffix == ".gguf":
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    else:
        tok = AutoTokenizer.from_pretrained(str(path))
    texts = []
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.eos_token_id if tok.eos_token_id is not None else 0)
        texts.append(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
    return texts


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def build_report(run_dir: Path, base_model: str, base_tokenizer: str, max_new_tokens: int = 24) -> Path:
    """Write run_dir/report/{report.md, tokenizer.png, loss.png, report.json} atomically."""
    from megaeeve.model import parameter_roles
    from megaeeve.train import meta_model, stage_plans
    from megaeeve.training.config import load_run_config

    run_dir = Path(run_dir)
    expansion = json.loads((run_dir / "tokenizer" / "expansion_report.json").read_text(encoding="utf-8"))
    cfg = load_run_config(run_dir / "run.yaml")
    done = stage_dirs(run_dir)
    plans = {p["stage"]: p for p in stage_plans(cfg.model, [cfg.stages[n] for n in cfg.run_stages])}
    roles = parameter_roles(meta_model(cfg.model))
    checks = {}
    for number, d in done:
        previous = cfg.previous_stage(number)
        src = cfg.model if previous is None else cfg.stage_dir(previous) / "final"
        checks[number] = frozen_check(src, d / "final", roles, list(cfg.stages[number].trainable))
    prompts = [KOREAN_PROMPT, ENGLISH_PROMPT]
    samples = {"base": generate(base_model, base_tokenizer, prompts, max_new_tokens)}
    if (run_dir / "export").is_dir():
        samples["final"] = generate(str(run_dir / "export"), str(run_dir / "export"), prompts, max_new_tokens)

    with atomic_dir(run_dir / "report", overwrite=True) as out:
        _plot_tokenizer(expansion, out / "tokenizer.png")
        _plot_losses([(n, _read_jsonl(d / "metrics.jsonl")) for n, d in done], out / "loss.png")
        rounds = expansion["rounds"]
        cpt = expansion.get("chars_per_token") or {}
        md = [f"# megaeeve run report: {run_dir.name}", ""]
        md += ["## Tokenizer", "",
               f"{len(expansion['new_tokens'])} new tokens after {len(rounds)} refinement round(s) "
               f"(base vocabulary {expansion.get('base_vocab_size', '?')}).", ""]
        md.append(_md_table(["round", "new tokens", "dropped", "characters added"],
                            [[r["round"], r["new_tokens"], len(r["dropped"]), len(r["added"])] for r in rounds]))
        md += ["", _md_table(["text (held out)", "base chars/token", "expanded chars/token", "identical ids"],
                             [[TEXT_LABELS.get(name, name), s["base_chars_per_token"], s["expanded_chars_per_token"], s["identical_ids"]]
                              for name, s in cpt.items() if s]), "", "![tokenizer](tokenizer.png)", ""]
        md += ["## Training", "", "![loss](loss.png)", ""]
        rows = []
        for number, d in done:
            plan, check = plans.get(number, {}), checks[number]
            summary = json.loads((d / "DONE").read_text(encoding="utf-8"))
            rows.append([number, ", ".join(cfg.stages[number].trainable), f"{plan.get('trainable', 0):,}",
                         f"{plan.get('optimizer_bytes', 0) / 2**20:,.1f}", summary.get("steps"),
                         f"{check['frozen_unchanged']}/{check['frozen_total']} unchanged",
                         f"{check['trainable_changed']}/{check['trainable_total']} changed",
                         "ok" if check["ok"] else "FAILED: " + ", ".join(check["violations"][:3])])
        md.append(_md_table(["stage", "trainable roles", "trainable params", "optimizer state MiB", "steps",
                             "frozen tensors", "trainable tensors", "check"], rows))
        md += ["", "## Samples (greedy)", ""]
        for i, prompt in enumerate(prompts):
            md.append(f"**Prompt:** {prompt}")
            md.append("")
            for who, texts in samples.items():
                md.append(f"- {who}: {texts[i]!r}")
            md.append("")
        (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
        (out / "report.json").write_text(json.dumps({"frozen_checks": checks, "samples": samples,
                                                     "stage_plans": plans}, indent=2, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
    return run_dir / "report"
