"""Settings dataclasses to and from TOML tables: how a study file (``augassets … --study x.toml``) is
read, checked and written.

A table sets the fields it names, each checked against the field's type (str, int, float, bool, tuples,
nested settings as sub-tables); the rest keep their values. Every problem is collected, one line each
naming the field and what it accepts, so a file is fixed in one pass; unknown fields are errors, never
ignored. Fields that are not settings of a study (``compare=False``: where it runs on this machine)
are neither read nor written here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping


class SettingsError(ValueError):
    """Every problem of a settings file, one line each."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


def _fields(cls) -> dict[str, tuple[dataclasses.Field, object]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls) if f.compare}


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _describe(kind) -> str:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            plural = {str: "strings", int: "whole numbers", float: "numbers", bool: "trues and falses"}
            return f"a list of {plural.get(args[0], _describe(args[0]))}"
        return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if dataclasses.is_dataclass(kind):
        return f"a table of {kind.__name__} fields"
    return {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}.get(kind, str(kind))


def _convert(value, kind, where: str, current, choices: Mapping, errors: list[str]):
    """``value`` as ``kind``, or ``current`` with a line in ``errors`` saying why not."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):  # X | None: TOML has no null, so a value is an X
        (kind,) = [a for a in args if a is not type(None)]
        return _convert(value, kind, where, current, choices, errors)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            errors.append(f"{where}: expected {_describe(kind)}, got {value!r}")
            return current
        return merge(kind, current, value, where, choices, errors)
    ok = False
    if origin is tuple:
        variadic = len(args) == 2 and args[1] is Ellipsis
        if isinstance(value, list) and (variadic or len(value) == len(args)):
            kinds = [args[0]] * len(value) if variadic else list(args)
            items = [
                _convert(v, k, f"{where}[{i}]", None, choices, errors) for i, (v, k) in enumerate(zip(value, kinds))
            ]
            return tuple(items)
    elif kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:  # a whole number stays an int, as in the built-in profiles (their reprs are code versions)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind is str:
        ok = isinstance(value, str)
    if not ok:
        errors.append(f"{where} = {value!r}: expected {_describe(kind)}")
        return current
    allowed = choices.get(where.split("[")[0])
    if allowed is not None and value not in allowed:
        errors.append(f"{where} = {value!r}: one of {', '.join(map(str, allowed))}")
        return current
    return value


def merge(cls, current, table: Mapping, where: str, choices: Mapping, errors: list[str]):
    """``current`` (an instance of the settings dataclass ``cls``, or None: built from ``table`` alone and
    the fields' defaults) with the fields ``table`` sets. Problems are appended to ``errors`` as lines
    that start with ``where`` (the table's dotted name); the result is then not to be used."""
    fields = _fields(cls)
    values = {}
    for key, value in table.items():
        name = f"{where}.{key}" if where else key
        if key not in fields:
            errors.append(f"{name}: unknown field ({where or 'top level'} has: {', '.join(fields)})")
            continue
        field, kind = fields[key]
        inner = getattr(current, key) if current is not None else None
        if inner is None and dataclasses.is_dataclass(_bare(kind)):
            default = _default(field)
            inner = None if default is dataclasses.MISSING else default
        values[key] = _convert(value, kind, name, inner, choices, errors)
    if current is None:
        missing = [k for k, (f, _) in fields.items() if _default(f) is dataclasses.MISSING and k not in values]
        if missing:
            errors.append(f"{where or 'the file'}: missing {', '.join(missing)} (no base to take them from)")
            return None
    if any(line.startswith((f"{where}.", f"{where} ", f"{where}:")) for line in errors) if where else errors:
        return current  # not built from a table with errors in it
    try:
        return dataclasses.replace(current, **values) if current is not None else cls(**values)
    except (TypeError, ValueError) as error:  # a setting's own check (__post_init__)
        errors.append(f"{where or 'the file'}: {error}")
        return current


def _bare(kind):
    """``X`` of ``X | None``."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(kind) if a is not type(None))
    return kind


def _literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if value != value else ("inf" if value > 0 else "-inf"))
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def to_toml(obj, where: str = "", compared_with=None) -> str:
    """The fields of settings ``obj`` that differ from ``compared_with`` (by default its fields'
    defaults; required fields always), as TOML: scalars first, then one table per nested setting."""
    lines, tables = [], []
    for key, (field, _) in _fields(type(obj)).items():
        value = getattr(obj, key)
        default = getattr(compared_with, key) if compared_with is not None else _default(field)
        if value is None or value == default:
            continue
        if dataclasses.is_dataclass(value):
            base = default if dataclasses.is_dataclass(default) and type(default) is type(value) else None
            tables.append(to_toml(value, f"{where}.{key}" if where else key, base))
        else:
            lines.append(f"{key} = {_literal(value)}")
    head = [f"[{where}]"] if where and lines else []
    return "\n".join(part for part in ["\n".join(head + lines), *tables] if part)
