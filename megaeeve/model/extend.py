"""Extend a base causal LM to an expanded tokenizer: split embeddings, EEVE (or baseline) init, stage-0 directory.

Works for any Hugging Face causal LM whose embeddings come from get_input_embeddings /
get_output_embeddings. Tied embeddings are untied (the output rows are a copy), which the result and
megaeeve_model.json record. Every check runs before the output directory is created, and the
directory appears atomically.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import torch
from tokenizers import Tokenizer

from megaeeve.atomic import atomic_dir
from megaeeve.errors import ExtendError, OutputExistsError
from megaeeve.log import logger
from megaeeve.model.architectures import check_architecture, embedding_scale
from megaeeve.model.checkpoint import RESERVED_NAMES, ModelMeta, write_model_dir
from megaeeve.model.fit import (PRIORS, FitSettings, Rows, fit_rows, group_log_shares, model_log_shares,
                                samples_from)
from megaeeve.model.init import INIT_METHODS, eeve_rows, mean_rows, random_rows, token_pieces
from megaeeve.model.pieces import PieceTable
from megaeeve.tokenizer_io import load_tokenizer, tokenizer_fingerprint

log = logger(__name__)

EXPANSION_REPORT = "expansion_report.json"


def load_base_model(path: str | Path):
    """An HF model directory or a gguf file, loaded offline in fp32."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    if not (path / "config.json").is_file():
        raise ExtendError(f"{path}: neither a gguf file nor a Hugging Face model directory (no config.json)")
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)


def base_vocab_size_of(tokenizer_dir: Path, base: Tokenizer) -> int:
    """base_vocab_size from the expansion report when there is one, else the base tokenizer's size."""
    size = base.get_vocab_size(with_added_tokens=True)
    report = tokenizer_dir / EXPANSION_REPORT
    if report.is_file():
        reported = json.loads(report.read_text(encoding="utf-8")).get("base_vocab_size")
        if reported != size:
            raise ExtendError(f"{report}: base_vocab_size {reported} but the base tokenizer has {size} tokens")
    return size


def check_extension(base: Tokenizer, expanded: Tokenizer, *, base_vocab_size: int, tokenizer_path: Path,
                    allow_no_new_tokens: bool = False) -> int:
    """Validate that `expanded` keeps every base id's string and appends contiguous ids; return its size."""
    size = expanded.get_vocab_size(with_added_tokens=True)
    if size < base_vocab_size or (size == base_vocab_size and not allow_no_new_tokens):
        raise ExtendError(f"{tokenizer_path}: {size} tokens, no new tokens after the base's {base_vocab_size}")
    for i in range(base_vocab_size):
        old, new = base.id_to_token(i), expanded.id_to_token(i)
        if old != new:
            raise ExtendError(f"{tokenizer_path} is not an extension of the base tokenizer: id {i} is {new!r} "
                              f"there, {old!r} in the base")
    for i in range(base_vocab_size, size):
        if expanded.id_to_token(i) is None:
            raise ExtendError(f"{tokenizer_path}: new ids are not contiguous, id {i} has no token")
    return size


def report_counts(tokenizer_dir: Path) -> dict[int, int]:
    """Emission counts of every new token and of every first piece, from the expansion report's final counting
    pass (what the output prior's shares come from)."""
    path = tokenizer_dir / EXPANSION_REPORT
    if not path.is_file():
        raise ExtendError(f"{tokenizer_dir}: no {EXPANSION_REPORT}, whose counts --init fit's output prior needs "
                          f"(expand the tokenizer with megaeeve expand-vocab, or pass --prior none)")
    report = json.loads(path.read_text(encoding="utf-8"))
    if "first_piece_counts" not in report:
        raise ExtendError(f"{path} predates first_piece_counts, which --init fit's output prior needs: expand the "
                          f"tokenizer again with this version, or pass --prior none")
    counts = {t["id"]: int(t["frequency"]) for t in report["new_tokens"]}
    counts.update({int(i): int(n) for i, n in report["first_piece_counts"].items()})
    return counts


def fit_texts(tokenizer_dir: Path, fit_text: list[str] | None) -> list[str]:
    """Files the fits read: --fit-text, else the corpus the tokenizer was expanded on (its report names it)."""
    from megaeeve.corpus import expand_inputs

    if fit_text:
        return expand_inputs(fit_text)
    path = tokenizer_dir / EXPANSION_REPORT
    files = json.loads(path.read_text(encoding="utf-8"))["settings"]["corpus"] if path.is_file() else []
    missing = [f for f in files if not Path(f).is_file()]
    if not files or missing:
        raise ExtendError(f"--init fit reads target-language text; {path} names "
                          f"{', '.join(missing) or 'none'}{' (missing)' if missing else ''}: pass --fit-text FILE")
    return files


def _encoded_samples(tok: Tokenizer, docs, length: int, limit: int) -> torch.Tensor:
    return samples_from([e.ids for e in tok.encode_batch_fast(list(docs), add_special_tokens=False)], length, limit)


def _fitted(model, rows: Rows, pieces: list[list[int]], base_size: int, new_tok: Tokenizer, tokenizer_dir: Path,
            fit: FitSettings, fit_text: list[str] | None, fit_english: list[str] | None) -> tuple[Rows, dict]:
    """--init fit: EEVE's rows corrected against the base model (megaeeve/model/fit.py)."""
    from megaeeve.assets import english_documents
    from megaeeve.corpus import expand_inputs, iter_documents, sample_documents

    if fit.prior not in PRIORS:
        raise ExtendError(f"--prior must be one of {', '.join(PRIORS)}, got {fit.prior!r}")
    counts = report_counts(tokenizer_dir) if fit.prior == "counts" else None  # a missing report fails before the fits
    # A sample never runs past the model's context (the input fit's teacher reads pieces: shorter still is fine).
    context = getattr(model.config.get_text_config(), "max_position_embeddings", None) or fit.sample_length + 1
    length = min(fit.sample_length + 1, context)
    wanted = max(fit.samples, fit.input_steps * fit.input_batch)
    budget = wanted * length * 16  # bytes: generous for any script
    try:
        target = _encoded_samples(new_tok, sample_documents(fit_texts(tokenizer_dir, fit_text), budget), length,
                                  wanted)
        english = english_documents() if not fit_english else list(iter_documents(expand_inputs(fit_english)))
        english_ids = _encoded_samples(new_tok, english, length, fit.english_samples)
    except ValueError as e:
        raise ExtendError(f"--init fit: {e}") from e
    model.eval()
    table, record = PieceTable(pieces, base_size), {}
    shares = None
    if counts is not None:
        shares = group_log_shares(pieces, base_size, counts, fit.smoothing)
    elif fit.prior == "model":
        log.info(f"model prior: scoring the new tokens' pieces on {min(fit.samples, len(target))} samples")
        shares, record["model_prior"] = model_log_shares(model, rows.detached(), table=table,
                                                         samples=target[:fit.samples], pieces=pieces,
                                                         context=context)
    fitted, fit_record = fit_rows(model, rows, table=table, target=target, english=english_ids, shares=shares,
                                  settings=fit, context=context, log=log.info)
    return fitted, {**fit_record, **record}


def _module_path(model, module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def _initializer_range(model, base_model: str | Path) -> float:
    std = getattr(model.config.get_text_config(), "initializer_range", None)
    if std is None:
        raise ExtendError(f"{base_model}: the config has no initializer_range, which --init random needs")
    return float(std)


def extend_model(base_model: str | Path, base_tokenizer: str | Path, *, tokenizer: str | Path, output: str | Path,
                 pad_vocab_to_multiple_of: int = 64, overwrite: bool = False, model=None,
                 init: str = "eeve", allow_no_new_tokens: bool = False, fit: FitSettings = FitSettings(),
                 fit_text: list[str] | None = None, fit_english: list[str] | None = None) -> ModelMeta:
    """Write the stage-0 model directory `output`; return its ModelMeta.

    `model` is the base model already loaded from `base_model` (load_base_model); None loads it here,
    after the tokenizer checks. `init` is one of INIT_METHODS (megaeeve/model/init.py); `fit` (fit.py), read
    with `init="fit"`, fits EEVE's rows to the base model on `fit_text` (default: the corpus the tokenizer was
    expanded on) and `fit_english` (default: the bundled English) before anything is written.
    `allow_no_new_tokens` accepts a tokenizer with no new tokens (the base tokenizer itself): the
    directory then has no `added` rows, for training the base vocabulary as it is (a no-expansion
    baseline) with the same trainer.
    """
    tokenizer, output = Path(tokenizer), Path(output)
    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output} already exists; pass --overwrite to replace it")
    if not (tokenizer / "tokenizer.json").is_file():
        raise ExtendError(f"{tokenizer}: not a tokenizer directory (no tokenizer.json)")
    if pad_vocab_to_multiple_of < 1:
        raise ExtendError(f"--pad-vocab-to-multiple-of must be >= 1, got {pad_vocab_to_multiple_of}")
    if init not in INIT_METHODS:
        raise ExtendError(f"--init must be one of {', '.join(INIT_METHODS)}, got {init!r}")
    tokenizer_files = sorted(p.name for p in tokenizer.iterdir() if p.is_file())
    clash = RESERVED_NAMES & set(tokenizer_files)
    if clash:
        raise ExtendError(f"{tokenizer}: holds {sorted(clash)}, which a model directory reserves")
    base_tok, new_tok = load_tokenizer(base_tokenizer), load_tokenizer(tokenizer)
    base_size = base_vocab_size_of(tokenizer, base_tok)
    vocab_size = check_extension(base_tok, new_tok, base_vocab_size=base_size, tokenizer_path=tokenizer,
                                 allow_no_new_tokens=allow_no_new_tokens)
    pieces = token_pieces(base_tok, new_tok, range(base_size, vocab_size))  # EEVE's init and distillation's teacher

    model = load_base_model(base_model) if model is None else model
    # a row per base id; exact split
    check_architecture(model, base_model, base_tok=base_tok, base_size=base_size, base_tokenizer=base_tokenizer)
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    rows, hidden = inp.weight.shape
    if out is None or out.weight.shape != inp.weight.shape:
        raise ExtendError(f"{base_model}: the lm_head does not match the input embedding ({rows}x{hidden})")
    in_path, out_path = _module_path(model, inp), _module_path(model, out)
    tied = out.weight is inp.weight or out.weight.data_ptr() == inp.weight.data_ptr()
    bias = getattr(out, "bias", None)

    num_new = vocab_size - base_size
    state = {k: v for k, v in model.state_dict().items()
             if k not in {f"{in_path}.weight", f"{out_path}.weight", f"{out_path}.bias"}}
    state[f"{in_path}.original"] = inp.weight[:base_size].float().clone()
    state[f"{out_path}.original"] = out.weight[:base_size].float().clone()
    if bias is not None:
        state[f"{out_path}.bias_original"] = bias[:base_size].float().clone()
    fit_record = None
    if num_new:  # no new tokens: no `added` rows at all
        if init in ("eeve", "fit"):
            added_in, added_out, added_bias = eeve_rows(inp.weight, out.weight, bias, pieces)
            if init == "fit":
                start = Rows(state[f"{in_path}.original"], state[f"{out_path}.original"],
                             state.get(f"{out_path}.bias_original"), added_in, added_out, added_bias,
                             input_scale=embedding_scale(inp))
                fitted, fit_record = _fitted(model, start, pieces, base_size, new_tok, tokenizer, fit, fit_text,
                                             fit_english)
                added_in, added_out, added_bias = fitted.added_input, fitted.added_output, fitted.added_bias
                state[f"{out_path}.original"] = fitted.base_output  # the prior moves the first pieces' rows
                if bias is not None:
                    state[f"{out_path}.bias_original"] = fitted.base_bias
        elif init == "mean":
            added_in, added_out, added_bias = mean_rows(inp.weight[:base_size], out.weight[:base_size],
                                                        None if bias is None else bias[:base_size], num_new)
        else:
            added_in, added_out, added_bias = random_rows(num_new, hidden, _initializer_range(model, base_model),
                                                          bias is not None)
        state[f"{in_path}.added"] = added_in
        state[f"{out_path}.added"] = added_out
        if bias is not None:
            state[f"{out_path}.bias_added"] = added_bias

    padded = math.ceil(vocab_size / pad_vocab_to_multiple_of) * pad_vocab_to_multiple_of
    config = copy.deepcopy(model.config)
    config.vocab_size = padded
    config.tie_word_embeddings = False
    config.architectures = [type(model).__name__]
    if getattr(config, "quantization_config", None) is not None:  # gguf: the weights are dequantized to fp32
        del config.quantization_config
    meta = ModelMeta(
        base_vocab_size=base_size, num_added=num_new, padded_vocab_size=padded, hidden_size=hidden,
        input_embedding=in_path, output_embedding=out_path, lm_head_bias=bias is not None, tied_untied=tied,
        base_model_rows=rows,
        base_model=str(base_model), base_tokenizer=str(base_tokenizer),
        base_tokenizer_fingerprint=tokenizer_fingerprint(base_tok), tokenizer_fingerprint=tokenizer_fingerprint(new_tok),
        tokenizer_files=tokenizer_files, init=init, fit=fit_record,
    )
    with atomic_dir(output, overwrite=overwrite) as tmp:
        write_model_dir(tmp, state, config=config, meta=meta, tokenizer_dir=tokenizer, base_tokenizer=base_tok,
                        pieces=pieces)
    return meta


def describe(meta: ModelMeta) -> str:
    """Human summary printed by tools/extend_model.py."""
    lines = [f"{k}: {v}" for k, v in dataclasses.asdict(meta).items() if k != "tokenizer_files"]
    if meta.tied_untied:
        lines.append("NOTE: the base model ties input and output embeddings; they are now untied "
                     "(the lm_head rows are a copy of the input rows).")
    if meta.base_model_rows > meta.base_vocab_size:
        lines.append(f"NOTE: the base model's {meta.base_model_rows - meta.base_vocab_size} padding rows after id "
                     f"{meta.base_vocab_size - 1} were dropped; new tokens take those ids.")
    return "\n".join(lines)
