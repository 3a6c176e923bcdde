"""Plain values (YAML, JSON, a Tune config) -> a checked frozen dataclass: the one place a
mapping is checked against a dataclass's fields and type hints; and the one place JSON text is
parsed into a value (`parse_json`, `parse_json_object`), whoever read the file.

Every error is an `InputError` naming where the mapping was written (file and section) and the
key: "quick.yaml: trial: lr: expected float, got 'fast'". A dataclass's own checks
(`__post_init__` raising an `InputError` that names the field) get the same prefix:
"quick.yaml: trial: lr: must be > 0 (got -1.0)".
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

from hiersearch.errors import InputError

T = TypeVar("T")


def as_mapping(values: Any, where: str) -> dict[str, Any]:
    """`values` as a dict; anything but a mapping is an InputError."""
    if not isinstance(values, Mapping):
        raise InputError("must be a mapping", where=where)
    return dict(values)


def parse_json(text: str, where: str) -> Any:
    """JSON text as a value; bad JSON is an InputError naming `where` (a file) and the line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(
            f"invalid JSON: {err.msg} (column {err.colno})", where=f"{where}:{err.lineno}"
        ) from None


def parse_json_object(text: str, where: str) -> dict[str, Any]:
    """JSON text that must hold an object (`parse_json`); anything else is an InputError
    naming `where`."""
    value = parse_json(text, where)
    if not isinstance(value, dict):
        raise InputError("expected a JSON object", where=where)
    return value


def check_keys(values: Any, known: Iterable[str], where: str) -> None:
    """`values` must be a mapping whose keys are all in `known`."""
    as_mapping(values, where)
    names = set(known)
    for key in values:
        if key not in names:
            raise InputError(
                f"unknown key {key!r} (known: {', '.join(sorted(names))})", where=where
            )


def from_mapping(cls: type[T], values: Any, where: str) -> T:
    """Build the dataclass `cls` from `values`: every key a field, every value of its field's
    type (converted where lossless, see `coerce`); errors name `where` and the key."""
    check_keys(values, (f.name for f in fields(cls)), where)  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs = {key: coerce(value, hints[key], f"{where}: {key}") for key, value in values.items()}
    try:
        return cls(**kwargs)
    except InputError as exc:  # the dataclass's own checks name the field, not the file
        raise InputError(str(exc), where=where) from exc


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a type hint, converting the lossless cases that YAML and JSON
    produce: int -> float, a whole float -> int, list -> tuple, "5e-5" -> float (YAML 1.1)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, hint, where)
    if origin is tuple:
        return _coerce_tuple(value, typing.get_args(hint), where)
    if isinstance(hint, type) and is_dataclass(hint):  # a nested section (tune: pbt:)
        return from_mapping(hint, value, where)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:  # YAML 1.1 reads "5e-5" as a string
                return float(value)
            except ValueError:
                pass
    elif hint is str and isinstance(value, str):
        return value
    raise InputError(f"expected {_hint_name(hint)}, got {value!r}", where=where)


def _coerce_union(value: Any, hint: Any, where: str) -> Any:
    options = typing.get_args(hint)
    if value is None and type(None) in options:
        return None
    for option in options:
        if option is type(None):
            continue
        try:
            return coerce(value, option, where)
        except InputError:
            continue
    raise InputError(f"expected {_hint_name(hint)}, got {value!r}", where=where)


def _coerce_tuple(value: Any, args: tuple[Any, ...], where: str) -> tuple[Any, ...]:
    if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: a list of any length
        if not isinstance(value, (list, tuple)):
            raise InputError(f"expected {_hint_name(tuple[args])}, got {value!r}", where=where)
        return tuple(coerce(v, args[0], where) for v in value)
    if not isinstance(value, (list, tuple)) or len(value) != len(args):
        raise InputError(f"expected a list of {len(args)} values, got {value!r}", where=where)
    return tuple(coerce(v, a, where) for v, a in zip(value, args, strict=True))


def _hint_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_hint_name(a) for a in typing.get_args(hint))
    args = typing.get_args(hint)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"a list of {_hint_name(args[0])}"
    if origin is not None:  # a generic alias: its __name__ would drop the arguments
        return str(hint).replace("typing.", "")
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
