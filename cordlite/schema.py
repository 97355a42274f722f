"""Typed dataclass trees from plain mappings, with every problem collected (used by config.py).

`build(cls, raw, path, problems)` walks a frozen dataclass's fields: unknown keys get a
did-you-mean, values are checked against the annotations (bool, int, float, str, Literal,
Optional, tuple) and converted; each problem is appended as "dotted.path: what is wrong; fix".
Nothing raises until the caller has gathered everything, so one message can list it all.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import difflib
import types
import typing
from typing import Any, Literal


class ConfigError(ValueError):
    """One or more problems in a recipe; `problems` lists them, the message shows them all."""

    def __init__(self, source: str, problems: list[str], what: str = "in the recipe"):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem(s) {what}:"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


_MISSING = object()
ECHO_LIMIT = 80  # characters of a bad value an error line repeats (a YAML alias bomb expands to megabytes)


_REPR = reprlib.Repr()  # keyword arguments only from Python 3.12
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 3, 8, 8, 8
_REPR.maxstring = _REPR.maxother = ECHO_LIMIT


def shown(value: Any) -> str:
    """repr(value), at most ECHO_LIMIT characters, made without walking all of a huge value (reprlib)."""
    text = _REPR.repr(value)
    return text if len(text) <= ECHO_LIMIT else f"{text[:ECHO_LIMIT]}..."


def _did_you_mean(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return "valid keys: " + ", ".join(options)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        return f"list of {len(args)} values"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str, problems: list[str]) -> Any:
    """Check `value` against the annotation `tp`; return the converted value or _MISSING."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        if isinstance(value, bool) and ("on" if value else "off") in choices:
            return "on" if value else "off"  # YAML 1.1 reads unquoted on/off as booleans
        if isinstance(value, bool) and ("yes" if value else "no") in choices:
            return "yes" if value else "no"  # ... and unquoted yes/no too
        hint = ""
        if isinstance(value, str):
            close = difflib.get_close_matches(value, [str(c) for c in choices], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
        problems.append(f"{path}: {shown(value)} is not one of {_type_name(tp)}{hint}")
        return _MISSING
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            trial: list[str] = []
            out = _coerce(value, arg, path, trial)
            if not trial:
                return out
        problems.append(f"{path}: expected {_type_name(tp)}, got {shown(value)}")
        return _MISSING
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            problems.append(f"{path}: expected a {_type_name(tp)}, got {shown(value)}")
            return _MISSING
        if len(args) == 2 and args[1] is Ellipsis:
            elem_types = [args[0]] * len(value)
        elif len(args) != len(value):
            problems.append(f"{path}: expected {len(args)} values, got {len(value)} ({shown(value)})")
            return _MISSING
        else:
            elem_types = list(args)
        out = [_coerce(v, t, f"{path}[{i}]", problems) for i, (v, t) in enumerate(zip(value, elem_types))]
        return _MISSING if any(o is _MISSING for o in out) else tuple(out)
    if tp is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{path}: expected true or false, got {shown(value)}")
        return _MISSING
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.append(f"{path}: expected an integer, got {shown(value)}")
        return _MISSING
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "3e-5" as a string; accept what float() accepts
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None and math.isfinite(number):
            return number
        what = "a finite number" if number is not None else "a number"
        problems.append(f"{path}: expected {what}, got {shown(value)}")
        return _MISSING
    if tp is str:
        if isinstance(value, str):
            return value
        problems.append(f"{path}: expected a string, got {shown(value)} (quote it in YAML)")
        return _MISSING
    raise TypeError(f"unsupported annotation {tp!r} at {path}")


def build(cls: type, raw: Any, path: str, problems: list[str]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{path or 'recipe'}: expected a mapping of keys, got {shown(raw)}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in names:
            problems.append(f"{dotted}: unknown key; {_did_you_mean(str(key), names)}")
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build(tp, value, dotted, problems)
            continue
        out = _coerce(value, tp, dotted, problems)
        if out is not _MISSING:
            kwargs[key] = out
    return cls(**kwargs)


def flatten(tree: dict, prefix: str = "") -> dict:
    """A nested mapping (a plain recipe) as {"section.field": value}."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def to_plain(obj: Any) -> Any:
    """A frozen dataclass tree as plain dicts and lists (YAML/JSON ready; tuples become lists)."""
    def plain(x: Any) -> Any:
        if isinstance(x, tuple):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x

    return plain(dataclasses.asdict(obj))
