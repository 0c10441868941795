"""Typed dataclasses from plain data (YAML / JSON / ``--set`` values), with errors that name the field.

Generic: knows nothing of COVR's sections (those are in :mod:`covr_ray.config`). :func:`build_dataclass`
accepts a partial mapping, rejects unknown keys, and coerces each value to the field's annotated type
(``Literal``, ``Optional`` / unions, nested dataclasses, ``dict``, ``list[T]``, ``bool``, ``int``, ``float``,
``str``) without anything lossy: an int is a float, a whole float is an int, nothing else converts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

from covr_ray.errors import ConfigError


def type_name(tp: Any) -> str:
    """What a value of type ``tp`` must be, in words (for error messages)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def coerce(path: str, tp: Any, value: Any) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError. Accepts ints for floats, nothing lossy."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(path, value, type_name(tp))
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(path, value, type_name(tp))
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(path, arg, value)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(path, value, type_name(tp))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(path, value, f"a mapping of {tp.__name__} fields")
        return build_dataclass(tp, value, path)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, value, "a mapping")
        return dict(value)
    if origin is list or tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, value, "a list")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [value_i if item_tp is Any else coerce(f"{path}[{i}]", item_tp, value_i)
                for i, value_i in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, value, "true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(path, value, "an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, value, "a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, value, "a string")
        return value
    if tp is Any:
        return value
    raise ConfigError(path, value, type_name(tp))  # pragma: no cover - a field type we do not support


def build_dataclass(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Build ``cls`` from a (partial) mapping; unknown keys and mistyped values raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else key
        if key not in names:
            raise ConfigError(full, value, f"a field of {cls.__name__}: " + ", ".join(sorted(names)),
                              hint="unknown keys are errors, not ignored")
        kwargs[key] = coerce(full, hints[key], value)
    return cls(**kwargs)


def merge_dicts(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` laid onto ``base``: nested mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = value
    return out
