"""Configuration as typed data: YAML values converted to the types a dataclass declares, or a clear error.

PyYAML reads `lr: 2e-4` as a string (YAML 1.1 wants a dot in a float) and `steps: 1.5` as a float;
without this, either crashes deep inside training or is silently accepted. One loader walks the
dataclass's fields and type hints (int, float, bool, str, Path, tuples, mappings, Optional, nested
dataclasses), converts numeric strings and integral floats, and otherwise names the key, the expected
type and the value. Cross-field rules stay in the dataclasses' `__post_init__`.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping

from megaeeve.errors import ConfigTypeError


_EXPECTED = {int: "an integer", float: "a number", bool: "true or false", str: "a string", Path: "a path"}


def _expected(hint: Any) -> str:
    return _EXPECTED.get(hint, getattr(hint, "__name__", str(hint)))


def _number(value: Any) -> float | None:
    """`value` as a float if it is a number or a numeric string (not a bool), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def coerce(value: Any, hint: Any, key: str) -> Any:
    """`value` converted to the type `hint`; ConfigTypeError names `key` when it cannot be."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own error says what is wrong
            return coerce(value, options[0], key)
        for option in options:
            try:
                return coerce(value, option, key)
            except ConfigTypeError:
                continue
        raise ConfigTypeError(f"{key}: expected {' or '.join(map(_expected, options))}, got {value!r}")
    if origin is tuple:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigTypeError(f"{key}: expected a list, got {value!r}")
        return tuple(coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(items))
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, Mapping):
            raise ConfigTypeError(f"{key}: expected a mapping, got {value!r}")
        return {coerce(k, args[0], key): coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else build(hint, value, key)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        number = _number(value)
        if number is not None and number.is_integer():
            return int(number)
    elif hint is float:
        number = _number(value)
        if number is not None:
            return number
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
    else:
        return value  # Any and other hints: as given
    raise ConfigTypeError(f"{key}: expected {_expected(hint)}, got {value!r}")


def field_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build(cls: type, values: Any, key: str, **fixed: Any) -> Any:
    """An instance of dataclass `cls` from a mapping, every value converted to its field's type.

    `fixed` are fields set by the caller (not read from the mapping). Unknown and missing keys are errors; a key
    that an earlier release read and `cls.RENAMED` (old key -> what to write instead) lists names its replacement,
    so a config written for that release says how to update it.
    """
    if not isinstance(values, Mapping):
        raise ConfigTypeError(f"{key}: expected a mapping, got {values!r}")
    hints = field_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in fixed]
    unknown = set(values) - set(names)
    renamed = {old: new for old, new in getattr(cls, "RENAMED", {}).items() if old in unknown}
    if renamed:
        prefix = f"{key}." if key else ""
        raise ConfigTypeError("; ".join(f"{prefix}{old} is no longer read: write {new}"
                                        for old, new in sorted(renamed.items())))
    if unknown:
        raise ConfigTypeError(f"{key}: unknown key(s) {sorted(map(str, unknown))}; allowed: {sorted(names)}")
    required = [f.name for f in dataclasses.fields(cls) if f.name not in fixed
                and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in values]
    if missing:
        raise ConfigTypeError(f"{key}: missing required key(s) {missing}")
    converted = {k: coerce(v, hints[k], f"{key}.{k}" if key else k) for k, v in values.items()}
    try:
        return cls(**fixed, **converted)
    except ValueError as e:  # a __post_init__ rule
        raise ConfigTypeError(f"{key}: {e}") from None
