"""Convert TOML tables into the frozen ``Config`` dataclasses components declare.

Every problem is collected, never raised: unknown keys (with a did-you-mean hint), missing
required keys, wrong types, values out of range, then the dataclass's own ``check()``. Paths
are dotted from the top of the file: ``export.netflow[0].destination[1]``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from netflow_agent.errors import ConfigIssue

_NOTHING = object()


def convert(cls: type, table: Any, path: str) -> tuple[Any | None, list[ConfigIssue]]:
    """Build ``cls`` from a TOML table.

    :param cls: a dataclass whose fields are declared with :func:`agent.config.schema.option`.
    :param table: the TOML value found at ``path``.
    :param path: dotted path for messages.
    :return: the instance (``None`` if any error) and the issues found.
    """
    issues: list[ConfigIssue] = []
    if not isinstance(table, dict):
        issues.append(ConfigIssue(path, f"must be a table, got {_type_name(table)}"))
        return None, issues
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields:
            issues.append(ConfigIssue(_join(path, key), _unknown_key_message(key, fields)))
            continue
        f = fields[key]
        converted = _value(hints[key], value, _join(path, key), issues)
        if converted is not _NOTHING:
            converted = _bounds(f, converted, _join(path, key), issues)
        if converted is not _NOTHING:
            values[key] = converted
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in table:
            issues.append(ConfigIssue(_join(path, name), f"required key is missing ({_doc(f)})"))
    if any(i.severity == "error" for i in issues):
        return None, issues
    obj = cls(**values)
    check = getattr(obj, "check", None)
    if callable(check):
        for issue in check() or []:
            issues.append(dataclasses.replace(issue, path=_join(path, issue.path)))
    return obj, issues


def _join(path: str, key: str) -> str:
    if not path:
        return key
    return f"{path}{key}" if key.startswith("[") else f"{path}.{key}"


def _doc(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("doc", "")).rstrip(".") or "no description"


def _unknown_key_message(key: str, fields: dict[str, Any]) -> str:
    msg = "unknown key (typo, or not supported in this version?)"
    import difflib  # only for a typo: not loaded by every agent

    close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
    if close:
        msg += f"; did you mean '{close[0]}'?"
    return msg


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp) if a is not type(None))
    if origin is list:
        return f"an array of {_describe(get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a table"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _value(tp: Any, value: Any, path: str, issues: list[ConfigIssue]) -> Any:
    """Check ``value`` against annotation ``tp``; return it (converted) or ``_NOTHING``."""
    ok = _coerce(tp, value, path, issues)
    if ok is _NOTHING and not any(i.path.startswith(path) for i in issues):
        issues.append(ConfigIssue(path, f"expected {_describe(tp)}, got {_type_name(value)}"
                                  f" ({value!r})"))
    return ok


def _coerce(tp: Any, value: Any, path: str, issues: list[ConfigIssue]) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        return value if any(value == a and type(value) is type(a) for a in get_args(tp)) \
            else _NOTHING
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            if arg is type(None):
                continue
            out = _coerce(arg, value, path, [])
            if out is not _NOTHING:
                return out
        return _NOTHING
    if origin is list:
        if not isinstance(value, list):
            return _NOTHING
        (item_tp,) = get_args(tp)
        out = [_value(item_tp, v, f"{path}[{i}]", issues) for i, v in enumerate(value)]
        return _NOTHING if any(v is _NOTHING for v in out) else out
    if origin is dict:
        if not isinstance(value, dict):
            return _NOTHING
        _key_tp, val_tp = get_args(tp)
        res = {k: _value(val_tp, v, f"{path}.{k}", issues) for k, v in value.items()}
        return _NOTHING if any(v is _NOTHING for v in res.values()) else res
    if tp is bool:
        return value if isinstance(value, bool) else _NOTHING
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NOTHING
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if ok else _NOTHING
    if tp is str:
        if isinstance(value, str) and "\0" in value:  # no path, name or address holds one
            issues.append(ConfigIssue(path, "contains a NUL character (\\u0000)"))
            return _NOTHING
        return value if isinstance(value, str) else _NOTHING
    return value if isinstance(value, tp) else _NOTHING


def _bounds(f: dataclasses.Field[Any], value: Any, path: str, issues: list[ConfigIssue]) -> Any:
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    numbers = value if isinstance(value, list) else [value]
    for n in numbers:
        if isinstance(n, bool) or not isinstance(n, (int, float)):
            continue
        if lo is not None and n < lo:
            issues.append(ConfigIssue(path, f"{n} is below the minimum {lo:g}"))
            return _NOTHING
        if hi is not None and n > hi:
            issues.append(ConfigIssue(path, f"{n} is above the maximum {hi:g}"))
            return _NOTHING
    min_items = f.metadata.get("min_items")
    if min_items is not None and isinstance(value, list) and len(value) < min_items:
        issues.append(ConfigIssue(path, f"needs at least {min_items} item(s)"))
        return _NOTHING
    return value
