"""Small helpers the plan builder's parts share: value text, point comparison, messages."""

from __future__ import annotations

from surgery.plan.types import Point
from surgery.recipe import (
    Call,
    LayersSum,
    Name,
    Number,
    Quantity,
    Str,
    TrainDecl,
)


def value_text(value) -> str:
    if isinstance(value, Number):
        return str(value.value)
    if isinstance(value, Quantity):
        return value.text()
    if isinstance(value, LayersSum):
        return f"{value.encoder}+{value.decoder}"
    if isinstance(value, (Str, Name)):
        return value.value
    if isinstance(value, Call):
        return f"{value.name}(...)"
    return str(value)



def peek_steps_per_epoch(train: TrainDecl) -> int | None:
    for clause in train.clauses:
        if clause.kind == "setting" and clause.key == "steps_per_epoch":
            v = clause.value
            if isinstance(v, Number) and isinstance(v.value, int) and v.value > 0:
                return v.value
    return None


def round_points(value: float, unit: str) -> float:
    return float(round(value)) if unit == "steps" else value


def compare_points(a: Point, b: Point, steps_per_epoch: int | None) -> int | None:
    """-1, 0, 1 as a is before, at, after b; None when the units cannot be compared."""
    if a.unit == b.unit:
        x, y = a.value, b.value
    else:
        x, y = a.steps(steps_per_epoch), b.steps(steps_per_epoch)
        if x is None or y is None:
            return None
    return (x > y) - (x < y)


def pydantic_msg(error: dict) -> str:
    msg = str(error.get("msg", "invalid value"))
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")

