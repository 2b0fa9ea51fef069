"""Type checks for a training run's ``config.json`` (and its ``sampler`` object) against the
dataclass it fills.

Why: ``--resume`` reads ``config.json`` from the run folder, a file anyone may have edited. A
misspelt key or a string where a number belongs used to surface as a TypeError deep in torch
(e.g. ``torch.full_like`` on a ``gate_logit`` of "-3") after the volumes had loaded; here it
is one line naming the key, before any work.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from ..errors import InputError

T = TypeVar("T")


def load_config_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; a missing, unreadable or non-object file is one line."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the run's config ({exc.__class__.__name__}: {exc})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})") from None
    if not isinstance(payload, dict):
        raise InputError(f"{path}: expected a JSON object of settings, got {type(payload).__name__}")
    return payload


def checked_dataclass(cls: type[T], values: Any, where: str, prefix: str = "") -> T:
    """``cls(**values)`` after checking that every key is a field of ``cls`` and every value
    has the field's annotated type (ints pass as floats, JSON lists as tuples). Errors read
    "WHERE: PREFIXkey must be ..."."""
    if not isinstance(values, dict):
        raise InputError(f"{where}: {prefix.rstrip('.') or 'the settings'} must be a JSON object, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise InputError(f"{where}: unknown {prefix.rstrip('.') + ' ' if prefix else ''}keys {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(names)}")
    try:
        converted = {key: _checked(value, hints[key], f"{prefix}{key}") for key, value in values.items()}
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    return cls(**converted)


def _checked(value: Any, hint: Any, where: str) -> Any:
    """``value`` if it matches ``hint`` (tuples built from JSON lists); else InputError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _checked(value, option, where)
            except InputError:
                continue
        raise InputError(f"{where} must be {_describe(hint)}, got {value!r}")
    if hint is type(None):
        if value is None:
            return None
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise InputError(f"{where} must be a finite number, got {value!r}")
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            if origin is tuple and args and args[-1] is not Ellipsis:
                if len(value) != len(args):
                    raise InputError(f"{where} must hold {len(args)} values, got {len(value)}")
                return tuple(_checked(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
            item = args[0] if args else Any
            items = [_checked(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
    elif origin is dict:
        if isinstance(value, dict):
            key_hint, value_hint = args if args else (Any, Any)
            return {_checked(k, key_hint, f"{where} key"): _checked(v, value_hint, f"{where}[{k!r}]") for k, v in value.items()}
    else:  # a hint this checker does not know: let the dataclass take it
        return value
    raise InputError(f"{where} must be {_describe(hint)}, got {value!r}")


def _describe(hint: Any) -> str:
    """A short English name of an annotation, for the one-line error."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if hint is type(None):
        return "null"
    if origin in (list, tuple):
        plural = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
        return f"a list of {plural.get(args[0], 'values')}" if args else "a list"
    if origin is dict:
        return "an object"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))
