"""A plan compiled to optimizer steps: which model trains from which step to which, and how
each model comes to be (built fresh, loaded from a checkpoint, or grown from the one before)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from surgery.spec import ModelSpec


@dataclass(frozen=True)
class Growth:
    op: str
    args: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Segment:
    """Train `spec` over optimizer steps [start, end). `grow` turns the previous segment's model
    into this one at `start`; the first segment may instead load `init_from` (a checkpoint of
    `init_spec`) and grow it by `grow` before any training."""

    name: str
    spec: ModelSpec
    start: float
    end: float
    unit: str = "steps"  # "steps" or "ep"; resolved to steps once the data fixes an epoch's length
    grow: Growth | None = None
    init_from: str | None = None
    init_spec: ModelSpec | None = None


@dataclass
class RunSettings:
    corpus: str = "demo"
    objective: str = "span_corruption"
    objective_params: dict = field(default_factory=dict)
    batch_size: int = 8
    seq_len: int = 128
    grad_accum: int = 1
    lr: float = 1e-3
    # Warmup in steps when >= 1, else as a fraction of all steps.
    warmup: float = 0.02
    weight_decay: float = 0.01
    schedule: str = "linear"
    # At a growth: "continue" keeps the run's one LR curve; "rewarm" warms the grown model up again
    # over `rewarm_steps` to the curve's value (new units start with no optimizer history).
    on_grow: str = "continue"
    rewarm_steps: int = 0
    val_every: int = 100
    val_batches: int = 8
    ckpt_every: int = 0  # 0: at every validation
    log_every: int = 10
    seed: int = 0
    until_val_loss: float | None = None
    max_grad_norm: float = 1.0
    valid_ratio: int = 199


def to_steps(value: float, unit: str, steps_per_epoch: int) -> int:
    return int(round(value * steps_per_epoch)) if unit == "ep" else int(round(value))


def lr_at(step: int, total: int, s: RunSettings, segment_start: int = 0, grown: bool = False) -> float:
    """The run's learning rate: warmup then linear/cosine decay over the whole budget, the same
    curve across growths (`continue`), optionally re-warmed after each growth (`rewarm`)."""
    warm = int(s.warmup if s.warmup >= 1 else math.ceil(s.warmup * total))
    if step < warm:
        base = s.lr * (step + 1) / warm
    else:
        frac = (step - warm) / max(1, total - warm)
        if s.schedule == "cosine":
            base = s.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
        elif s.schedule == "constant":
            base = s.lr
        else:
            base = s.lr * max(0.0, 1.0 - frac)
    if grown and s.on_grow == "rewarm" and s.rewarm_steps > 0 and step - segment_start < s.rewarm_steps:
        base *= (step - segment_start + 1) / s.rewarm_steps
    return base
