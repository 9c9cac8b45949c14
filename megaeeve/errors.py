"""One error hierarchy: what megaeeve reports to a user as one `error:` line and an exit code.

Every error a user can cause (bad input, a bad config, a refused operation) subclasses `MegaeeveError`, and
keeps the builtin base it always had (ValueError, RuntimeError, FileExistsError) so callers catching those still
do. The command-line entry points catch it in one place (`one_line_errors`); anything else is a bug and keeps
its traceback.

Every exception class of the package lives here, and this module imports nothing of the package: a module that
raises an error never has to import the module of another layer for it, so errors close no import circle (the
trainer's config took its sinks from metrics, and metrics took ConfigError back from the config).
"""

from __future__ import annotations

import functools
import sys
from typing import Callable


class MegaeeveError(Exception):
    """Base of every error megaeeve reports as one line."""

    exit_code: int = 2  # bad input or a refused operation


class OutputExistsError(MegaeeveError, FileExistsError):
    """An output is there already and --overwrite was not given."""


# Configuration: RUN.yaml, ds_config, stage tables.

class ConfigError(MegaeeveError, ValueError):
    """A RUN.yaml or ds_config value is missing or wrong; the message names the file and key."""


class ConfigTypeError(MegaeeveError, ValueError):
    """A configuration value has the wrong type; the message starts with its dotted key."""


# Inputs: text corpora, tokenizers, installed assets.

class CorpusError(MegaeeveError, ValueError):
    """Bad input: the message names the file and line (or row) and what is wrong."""


class TokenizerLoadError(MegaeeveError, ValueError):
    """A path does not hold a tokenizer megaeeve can load (tokenizer.json, an HF directory or a gguf file)."""


class AssetMissing(MegaeeveError, RuntimeError):
    """An offline asset (a pinned package's data file) is not installed; the message says what to install."""


# Vocabulary expansion.

class UnsupportedTokenizer(MegaeeveError, ValueError):
    """The base tokenizer's model or settings cannot be expanded by merging BPE entries."""


class ExpansionError(MegaeeveError, ValueError):
    """The expansion cannot produce a valid tokenizer from these inputs (message says why)."""


# Models: extension, initialisation, model directories, parameter roles.

class UnsupportedArchitecture(MegaeeveError, ValueError):
    """The base model's embedding or lm_head is not one a split embedding can replace; the message says which."""


class ExtendError(MegaeeveError, ValueError):
    """The base model, base tokenizer and expanded tokenizer (or the extension's options) do not fit together."""


class InitError(MegaeeveError, ValueError):
    """A new token's rows cannot be initialised (its text has no pieces in the base tokenizer)."""


class ModelDirError(MegaeeveError, ValueError):
    """A directory is not a complete megaeeve model directory, or its tensors do not match its metadata."""


class RoleError(MegaeeveError, ValueError):
    """A parameter that no role covers: neither a split row, a LoRA adapter, nor a tensor of the source weights."""


# Datasets: preprocessing, MMIDIDX files, packed samples.

class PreprocessError(MegaeeveError, ValueError):
    """The run cannot produce a dataset (bad input, no EOD token, ids that do not fit); says why."""


class NotEligible(MegaeeveError, ValueError):
    """The tokenizer is not one that tiktoken encodes identically; the message says why."""


class IndexedDatasetError(MegaeeveError, ValueError):
    """A dataset file is missing, truncated or inconsistent, or a prefix cannot name one; says which."""


class DataError(MegaeeveError, ValueError):
    """The data cannot provide what the run asks for (an empty split, a missing prefix)."""


# Training, evaluation and the pipeline.

class StageError(MegaeeveError, RuntimeError):
    """A stage cannot start (missing or mismatching predecessor, completed stage without --overwrite)."""


class EvalError(MegaeeveError, ValueError):
    """The model, tokenizer or settings cannot be evaluated together; the message says why."""


class PipelineError(MegaeeveError, RuntimeError):
    """A step failed (its tool already said why) or the run directory belongs to other options."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def one_line_errors(main: Callable[..., int]) -> Callable[..., int]:
    """A command's `main`: a MegaeeveError, or an OSError of the file system it works on (unwritable output, full
    disk), becomes `error: ...` on stderr and an exit code instead of a traceback."""

    @functools.wraps(main)
    def run(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except (MegaeeveError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return getattr(e, "exit_code", MegaeeveError.exit_code)

    return run
