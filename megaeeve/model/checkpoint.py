"""The model directory: stage-0 output and every stage's final/ hand-off.

    split_model.safetensors  split parameter names (e.g. model.embed_tokens.original / .added), or shards
                           with split_model.safetensors.index.json (weights.py); not named model.safetensors,
                           so plain transformers refuses the directory loudly instead of loading it with
                           random embeddings (tools/export_hf.py makes the plain model)
    config.json            the Hugging Face config (vocab_size = padded size, tie_word_embeddings = false)
    megaeeve_model.json    ModelMeta: vocabulary layout, module paths, both tokenizers' fingerprints
    new_token_pieces.json  each new token's base pieces, written at extension: {"base_vocab_size": B,
                           "pieces": [[base ids of id B], ...]} (the teacher's input in distillation, pieces.py)
    tokenizer files        the expanded tokenizer as copied from its directory (AutoTokenizer loads them)
    base_tokenizer/        tokenizer.json of the base tokenizer (its identity)

Loading under ZeRO-3 builds the model inside deepspeed.zero.Init, and each rank reads only the slice
of each tensor that its partition holds (megaeeve.model.partition).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from megaeeve.atomic import atomic_file, write_json
from megaeeve.errors import ModelDirError
from megaeeve.model.architectures import attention_implementation, embedding_scale
from megaeeve.model.partition import read_partition
from megaeeve.model.weights import INDEX_FILE, SINGLE_FILE, open_weights, weight_files
from megaeeve.model.split import SplitEmbedding, SplitLMHead

MODEL_FILE = SINGLE_FILE  # stage-0; a hand-off may be sharded (megaeeve.model.weights)
META_FILE = "megaeeve_model.json"
CONFIG_FILE = "config.json"
BASE_TOKENIZER_DIR = "base_tokenizer"
PIECES_FILE = "new_token_pieces.json"
FORMAT = "megaeeve-model/1"
RESERVED_NAMES = {MODEL_FILE, INDEX_FILE, META_FILE, CONFIG_FILE, BASE_TOKENIZER_DIR, PIECES_FILE,
                  "generation_config.json"}


# Attribute of a model from build_split_model: the names of the tensors its model directory's weights hold.
SOURCE_WEIGHTS = "megaeeve_source_weights"


@dataclasses.dataclass
class ModelMeta:
    """What a model directory holds beyond the HF config; written as megaeeve_model.json."""

    base_vocab_size: int  # ids [0, base_vocab_size) are the base tokenizer's, rows in `original`
    num_added: int  # ids [base_vocab_size, base_vocab_size + num_added) are new, rows in `added` (none if 0)
    padded_vocab_size: int  # config.vocab_size; ids above the tokenizer are padding (not stored)
    hidden_size: int
    input_embedding: str  # module path of the input embedding, e.g. "model.embed_tokens"
    output_embedding: str  # module path of the lm_head, e.g. "lm_head"
    lm_head_bias: bool
    tied_untied: bool  # the base tied input and output embeddings; extension copied them apart
    base_model_rows: int  # embedding rows of the base model (rows past base_vocab_size were padding)
    base_model: str
    base_tokenizer: str
    base_tokenizer_fingerprint: str
    tokenizer_fingerprint: str
    tokenizer_files: list[str]  # files of the expanded tokenizer in the directory (export copies them)
    init: str = "eeve"  # how extension initialised the new rows (megaeeve.model.init.INIT_METHODS); older dirs: eeve
    fit: dict | None = None  # init "fit": its settings and what it measured (megaeeve/model/fit.py)
    format: str = FORMAT

    @property
    def vocab_size(self) -> int:
        """Size of the expanded tokenizer."""
        return self.base_vocab_size + self.num_added

    @property
    def num_padding(self) -> int:
        return self.padded_vocab_size - self.vocab_size

    def split_names(self) -> dict[str, str]:
        """Split parameter name -> role (see megaeeve.model.parameter_roles)."""
        names = {f"{self.input_embedding}.original": "input_original",
                 f"{self.output_embedding}.original": "output_original"}
        if self.num_added:
            names[f"{self.input_embedding}.added"] = "input_added"
            names[f"{self.output_embedding}.added"] = "output_added"
        if self.lm_head_bias:
            names[f"{self.output_embedding}.bias_original"] = "output_original"
            if self.num_added:
                names[f"{self.output_embedding}.bias_added"] = "output_added"
        return names


def read_model_meta(model_dir: str | Path) -> ModelMeta:
    """Read megaeeve_model.json; a missing or foreign file is a clear error naming it."""
    path = Path(model_dir) / META_FILE
    if not path.is_file():
        raise ModelDirError(f"{path} is missing: {model_dir} is not a megaeeve model directory")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != FORMAT:
        raise ModelDirError(f"{path}: format {data.get('format')!r}, expected {FORMAT!r}")
    fields = {f.name for f in dataclasses.fields(ModelMeta)}
    unknown = set(data) - fields
    if unknown:
        raise ModelDirError(f"{path}: unknown keys {sorted(unknown)}")
    return ModelMeta(**data)


def read_pieces(model_dir: str | Path, meta: ModelMeta) -> list[list[int]]:
    """The pieces table of a model directory (one list of base ids per new id), checked against `meta`."""
    path = Path(model_dir) / PIECES_FILE
    if not path.is_file():
        raise ModelDirError(f"{path} is missing: the model directory predates the pieces table that distillation "
                            f"needs; extend the base model again (tools/extend_model.py)")
    data = json.loads(path.read_text(encoding="utf-8"))
    pieces = data["pieces"]
    if data["base_vocab_size"] != meta.base_vocab_size or len(pieces) != meta.num_added:
        raise ModelDirError(f"{path}: {len(pieces)} tokens after base id {data['base_vocab_size']}, the model has "
                            f"{meta.num_added} after {meta.base_vocab_size}")
    if not all(ids and all(0 <= i < meta.base_vocab_size for i in ids) for ids in pieces):
        raise ModelDirError(f"{path}: a new token has no pieces, or a piece that is not a base id")
    return pieces


def build_split_model(config, meta: ModelMeta, dtype: torch.dtype, *, ds_config: dict | None = None,
                      attn_implementation: str | None = None) -> nn.Module:
    """The HF model of `config` with the split embedding and head installed, weights uninitialised.

    With ZeRO stage 3 in `ds_config` it is built inside deepspeed.zero.Init (partitioned parameters).
    The replaced full-size modules are never initialised (no_init_weights) and are freed at once.
    The model records the tensor names a model directory's weights hold for it (`SOURCE_WEIGHTS`, checked by
    load_model_dir): what `parameter_roles` may call `body`, whatever is injected later.
    """
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]  # import the model's module now: imports break under zero.Init
    with contextlib.ExitStack() as stack:
        stack.enter_context(no_init_weights())
        if is_zero3(ds_config):
            import deepspeed
            from transformers.integrations.deepspeed import prevent_arange_dtype_change

            stack.enter_context(prevent_arange_dtype_change())  # keeps RoPE buffers in fp32
            stack.enter_context(deepspeed.zero.Init(config_dict_or_path=ds_config))
        attention = attention_implementation(config, attn_implementation)  # Gemma 2: eager, not sdpa
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attention)
        sizes = (meta.base_vocab_size, meta.num_added, meta.num_padding, meta.hidden_size)
        scale = embedding_scale(model.get_submodule(meta.input_embedding))  # Gemma: sqrt(hidden), from the config
        model.set_submodule(meta.input_embedding, SplitEmbedding(*sizes, dtype=dtype, scale=scale))
        model.set_submodule(meta.output_embedding, SplitLMHead(*sizes, bias=meta.lm_head_bias, dtype=dtype))
    setattr(model, SOURCE_WEIGHTS, frozenset(_expected_names(model)))
    return model


def is_zero3(ds_config: dict | None) -> bool:
    return bool(ds_config) and ds_config.get("zero_optimization", {}).get("stage", 0) == 3


def load_model_dir(model_dir: str | Path, ds_config: dict | None = None, dtype: torch.dtype = torch.float32,
                   attn_implementation: str | None = None) -> nn.Module:
    """Build the split model of a model directory and load its weights (returned in eval mode).

    With ZeRO stage 3 in `ds_config` the model is built under deepspeed.zero.Init and each rank
    fills only its own partitions from slices of the file: no rank ever holds a full tensor.
    """
    return load_split_model(model_dir, read_model_meta(model_dir), ds_config=ds_config, dtype=dtype,
                            attn_implementation=attn_implementation)


def load_split_model(model_dir: str | Path, meta: ModelMeta, *, ds_config: dict | None, dtype: torch.dtype,
                     attn_implementation: str | None) -> nn.Module:
    """load_model_dir for a caller that has read the directory's metadata `meta` already (a stage plan reads
    megaeeve_model.json once per stage)."""
    from transformers import AutoConfig

    model_dir = Path(model_dir)
    config = AutoConfig.from_pretrained(str(model_dir))
    model = build_split_model(config, meta, dtype, ds_config=ds_config, attn_implementation=attn_implementation)
    _load_weights(model, model_dir, is_zero3(ds_config))
    return model.eval()


def _expected_names(model: nn.Module) -> set[str]:
    return set(model.state_dict().keys())


def _load_weights(model: nn.Module, model_dir: Path, zero3: bool) -> None:
    """Fill every parameter and buffer from the directory's weights (one file or shards). Under ZeRO-3
    each rank writes only its own partition, read as a slice (megaeeve.model.partition): nothing is gathered."""
    with open_weights(model_dir) as f, torch.no_grad():
        in_file, expected = set(f.keys()), _expected_names(model)
        if in_file != expected:
            raise ModelDirError(f"{model_dir}: tensors do not match the model: missing "
                                f"{sorted(expected - in_file)[:5]}, unexpected {sorted(in_file - expected)[:5]}")
        for key, param in model.named_parameters():
            shape = tuple(f.get_slice(key).get_shape())
            want = tuple(getattr(param, "ds_shape", param.shape))
            if shape != want:
                raise ModelDirError(f"{model_dir}: {key} has shape {shape}, the model expects {want}")
            if zero3 and hasattr(param, "ds_id"):
                param.ds_tensor.data.copy_(read_partition(f, key, param))
            else:
                param.data.copy_(f.get_tensor(key))
        for key, buf in model.named_buffers():  # buffers are not partitioned: all ranks
            if key in in_file:
                buf.data.copy_(f.get_tensor(key))


def copy_model_files(src_dir: Path, out_dir: Path) -> None:
    """Everything of a model directory but its weights (config, meta, tokenizers) into `out_dir`."""
    skip = set(weight_files(src_dir))
    for entry in src_dir.iterdir():
        if entry.name in skip:
            continue
        if entry.is_dir():
            shutil.copytree(entry, out_dir / entry.name)
        else:
            shutil.copy2(entry, out_dir / entry.name)


def write_model_dir(tmp: Path, state_dict: dict[str, torch.Tensor], *, config, meta: ModelMeta,
                    tokenizer_dir: Path, base_tokenizer, pieces: list[list[int]]) -> None:
    """Fill a fresh (temporary) directory with a model directory's files; the caller renames it."""
    save_file({k: v.detach().contiguous() for k, v in state_dict.items()}, str(tmp / MODEL_FILE),
              metadata={"format": "pt"})
    config.save_pretrained(str(tmp))
    for name in meta.tokenizer_files:
        shutil.copy2(tokenizer_dir / name, tmp / name)
    (tmp / BASE_TOKENIZER_DIR).mkdir()
    base_tokenizer.save(str(tmp / BASE_TOKENIZER_DIR / "tokenizer.json"))
    with atomic_file(tmp / PIECES_FILE, "w") as f:  # one compact line: ~10 bytes a piece
        json.dump({"base_vocab_size": meta.base_vocab_size, "pieces": pieces}, f, separators=(",", ":"))
    write_json(tmp / META_FILE, dataclasses.asdict(meta))
