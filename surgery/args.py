"""Arguments of every registry entry (model families, ops, objectives, tasks) and the one coercion
that turns what a recipe wrote into a typed value, with bounds.

An `ArgInfo` is data: its kind, default, choices and bounds. The planner, `surgery plan --help`
and the docs' tables all read the same entry, so a bound written here is checked at plan time and
shown to users without being written again. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Values as the recipe parser hands them over (surgery.recipe.Number/Name/Str) are duck-typed
# here: `.value` and `.pos`; this module never imports the parser.


@dataclass(frozen=True)
class ArgInfo:
    """One argument: its kind ("choice", "int", "float", "bool", "layers"), default and bounds.

    `low`/`high` bound numbers; `open_low`/`open_high` make a bound strict (a rate in (0, 1)).
    `low=None` on an int or float means any value; `positive=True` is low=0 exclusive.
    """

    kind: str
    default: object = None
    choices: tuple[str, ...] = ()
    help: str = ""
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def bounds_text(self) -> str:
        if self.low is None and self.high is None:
            return ""
        lo = "" if self.low is None else ("(" if self.open_low else "[") + _num(self.low)
        hi = "" if self.high is None else _num(self.high) + (")" if self.open_high else "]")
        if self.high is None:
            return f"> {_num(self.low)}" if self.open_low else f">= {_num(self.low)}"
        if self.low is None:
            return f"< {_num(self.high)}" if self.open_high else f"<= {_num(self.high)}"
        return f"in {lo}, {hi}"

    def type_text(self) -> str:
        """What the docs and --help show as the argument's type."""
        if self.kind == "choice":
            return "|".join(self.choices)
        if self.kind == "bool":
            return "true|false"
        text = {"int": "whole number", "float": "number", "layers": "N or E+D"}.get(self.kind, self.kind)
        bounds = self.bounds_text()
        return f"{text} {bounds}" if bounds else text


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


POSITIVE_INT = ArgInfo("int", None, low=0, open_low=True)
FRACTION = dict(low=0, high=1, open_low=True, open_high=True)

_BOOLS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


class ArgError(ValueError):
    """A value a recipe wrote that its argument cannot take; `pos` is where to point."""

    def __init__(self, message: str, pos):
        super().__init__(message)
        self.pos = pos


def coerce(key: str, value, info: ArgInfo) -> Any:
    """The typed value of `key=value` for argument `info`, or ArgError at the value's position.

    `value` is a parsed recipe value (a Number, Name or Str node: `.value`, `.pos`).
    """
    raw = getattr(value, "value", None)
    pos = getattr(value, "pos", None)
    is_text = isinstance(raw, str)
    if info.kind == "choice":
        text = raw if is_text else _text(raw)
        if text not in info.choices:
            raise ArgError(f"{key} must be one of {', '.join(info.choices)}{suggest(text, info.choices)}", pos)
        return text
    if info.kind == "bool":
        text = raw if is_text else (str(raw) if isinstance(raw, (int, float)) else None)
        if text not in _BOOLS:
            raise ArgError(f"{key} is true or false", pos)
        return _BOOLS[text]
    if is_text or not isinstance(raw, (int, float)):
        raise ArgError(f"{key} is a number", pos)
    if info.kind == "int" and isinstance(raw, float) and raw.is_integer():
        raw = int(raw)  # 1.0 is the whole number 1
    if info.kind == "int" and not isinstance(raw, int):
        raise ArgError(f"{key} is a whole number, got {_text(raw)}", pos)
    check_bounds(key, raw, info, pos)
    return raw


def check_bounds(key: str, x: float, info: ArgInfo, pos=None) -> None:
    below = info.low is not None and (x <= info.low if info.open_low else x < info.low)
    above = info.high is not None and (x >= info.high if info.open_high else x > info.high)
    if below or above:
        raise ArgError(f"{key} must be {bounds_phrase(info)}, got {_text(x)}", pos)


def bounds_phrase(info: ArgInfo) -> str:
    """'a positive whole number', 'at least 1', 'between 0 and 1 (exclusive)', 'in (0, 1]'."""
    lo, hi = info.low, info.high
    if hi is None:
        if lo == 0 and info.open_low:
            return "a positive whole number" if info.kind == "int" else "positive"
        return f"above {_num(lo)}" if info.open_low else f"at least {_num(lo)}"
    if lo is None:
        return f"below {_num(hi)}" if info.open_high else f"at most {_num(hi)}"
    if info.open_low == info.open_high:
        return f"between {_num(lo)} and {_num(hi)}" + (" (exclusive)" if info.open_low else "")
    return f"in {'(' if info.open_low else '['}{_num(lo)}, {_num(hi)}{')' if info.open_high else ']'}"


def _text(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(v)
    return str(v)


def suggest(word, options) -> str:
    """"; did you mean 'x'?" for a near miss, else the options when there are few."""
    import difflib

    options = list(options)
    close = difflib.get_close_matches(str(word), options, n=1, cutoff=0.5)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f" (known: {', '.join(options)})" if len(options) <= 12 else ""


def field_arg(field, help: str = "") -> ArgInfo:
    """A pydantic field as an argument: its kind (int, float, or a choice of its Literal values)
    and its bounds (ge/gt/le/lt), so that a recipe is refused exactly where the model would be."""
    import typing

    from annotated_types import Ge, Gt, Le, Lt

    args = [a for a in typing.get_args(field.annotation) if a is not type(None)] or [field.annotation]
    literal = [v for a in args if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)]
    if typing.get_origin(field.annotation) is typing.Literal:
        literal = list(typing.get_args(field.annotation))
    default = None if field.is_required() else field.default
    if literal:
        return ArgInfo("choice", default, tuple(literal), help or field.description or "")
    kind = "int" if int in args else "float"
    bounds: dict = {}
    for m in field.metadata:
        if isinstance(m, (Ge, Gt)):
            bounds.update(low=float(m.ge if isinstance(m, Ge) else m.gt), open_low=isinstance(m, Gt))
        elif isinstance(m, (Le, Lt)):
            bounds.update(high=float(m.le if isinstance(m, Le) else m.lt), open_high=isinstance(m, Lt))
    return ArgInfo(kind, default, help=help or field.description or "", **bounds)
