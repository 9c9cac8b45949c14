"""The method comparison's results, from what compare_runner's steps left in --out.

Per method, the evaluation points after stage 0 and every stage, with the cumulative training tokens,
Korean and English characters seen, training seconds and FLOPs (from each stage's metrics.jsonl); the
break-even against the base model; then the tables, the plot and the "## Method comparison" section of
bench/RESULTS.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.common import machine
from bench.compare_runner import BASE_STAGE0, LANGS, STAGES, Compare
from megaeeve.atomic import write_json

SECTION = "## Method comparison"


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
    base_eval = cmp.eval_file(BASE_STAGE0)
    base = json.loads(base_eval.read_text()) if base_eval.exists() else None
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
            "eval_chars": cmp.cc.eval_chars, "seed": cmp.cc.seed, "blend": cmp.cc.weights,
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
    from megaeeve.report import pyplot

    plt = pyplot()
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
            f"Machine: {machine(with_torch=True)}. `python bench/compare_methods.py --scale {st['scale']:g}`"
            + (f"; {cost}." if cost else "."), "",
            f"Budget per method: {STAGES} stages x {st['steps_per_stage']} steps x {st['tokens_per_step']:,} tokens "
            f"({st['global_batch']} sequences of {st['seq_length']} on {st['nproc']} ranks, {st['ds_config']}) = "
            f"{total_tokens:,} training tokens, blend Korean {st['blend']['ko']} / English {st['blend']['en']} by "
            f"sequences, seed {st['seed']}. Each stage: 10% warmup, cosine to 10% of its lr ((n), (o): only the "
            f"last one or two stages decay, as one cosine, the others hold the peak lr after their warmup). "
            f"(a): EEVE's roles and lrs "
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

