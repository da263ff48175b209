"""A plan compiled to optimizer steps: which model trains from which step to which, and how
each model comes to be (built fresh, loaded from a checkpoint, or grown from the one before).

Points stay in the recipe's units (epochs or steps) until the data fixes an epoch's length;
`resolve` then turns every point into a step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from surgery.catalog import COMPRESS_OPS
from surgery.spec import ModelSpec

# (value, unit) with unit "ep" or "steps", as the plan's Point.
At = tuple[float, str]


def to_steps(at: At, steps_per_epoch: int) -> int:
    value, unit = at
    return int(round(value * steps_per_epoch)) if unit == "ep" else int(round(value))


@dataclass(frozen=True)
class Growth:
    """A growth op with the options `surgery.ops.grow_model` takes, and its seed (None: derive
    one from the run's seed)."""

    op: str
    options: dict = field(default_factory=dict)
    seed: int | None = None

    @classmethod
    def from_plan(cls, op: str, args: dict) -> "Growth":
        options = {k: v for k, v in args.items() if k not in ("init", "seed")}
        if op in COMPRESS_OPS:  # share(init=mean|first|middle): surgery.compress reads init as it is
            options.update({k: v for k, v in args.items() if k == "init"})
        elif "init" in args:  # the recipe says init=copy|identity; the ops call it the depth mode
            options["depth"] = "identity" if args["init"] == "identity" else "stack"
        return cls(op, options, args.get("seed"))


@dataclass(frozen=True)
class Segment:
    """Train `spec` over [start, end). `grow` turns the previous segment's model into this one at
    `start`; the first segment may instead load `init_from` (a checkpoint of `init_spec`) and,
    if `grow` is set, grow it before any training."""

    name: str
    spec: ModelSpec
    start: At
    end: At
    grow: Growth | None = None
    init_from: str | None = None
    init_spec: ModelSpec | None = None
    # Consecutive init- ops before training (B init-factorize F init-share A): (growth, from, to)
    # in order; set when there is more than one, or any is a compression op.
    init_chain: tuple = ()

    def steps(self, steps_per_epoch: int) -> tuple[int, int]:
        return to_steps(self.start, steps_per_epoch), to_steps(self.end, steps_per_epoch)


def grown_from(segments, index: int) -> ModelSpec | None:
    """The spec segment `index`'s growth starts from: the previous segment's, or for the first
    the pretrained checkpoint's (the last init- op's source in a chain); None without a growth."""
    seg = segments[index]
    if seg.grow is None:
        return None
    if index > 0:
        return segments[index - 1].spec
    return seg.init_chain[-1][1] if seg.init_chain else seg.init_spec


def growth_seed(growth: Growth, run_seed: int, index: int = 0) -> int:
    """A growth's seed: its own seed=, else the run's, plus the segment's index for a growth
    mid-run (init- ops: index 0), so two stages grown alike draw differently."""
    return run_seed + index if growth.seed is None else growth.seed


@dataclass
class RunSettings:
    corpus: str = "demo"
    corpus_docs: int | None = None
    objective: str = "span_corruption"
    objective_params: dict = field(default_factory=dict)
    batch_size: int = 8
    seq_len: int = 128
    grad_accum: int = 1
    lr: float = 1e-3
    # Warmup as (value, unit): unit "steps", "ep", or "fraction" of all steps.
    warmup: tuple[float, str] = (0.01, "fraction")
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "linear"
    # At a growth: "continue" keeps the run's one LR curve; "rewarm" warms the grown model up
    # again over `rewarm` to the curve's value.
    on_grow: str = "continue"
    rewarm: At | None = None
    # "grow": AdamW moments follow the weights (surgery.ops); "reset": a fresh AdamW.
    optimizer_on_grow: str = "grow"
    precision: str = "auto"
    parallel: str = "ddp"  # several processes: "ddp" or "fsdp" (sharded; surgery/train/sharding.py)
    val_every: int = 100
    val_batches: int = 8
    ckpt_every: int = 0  # 0: at every validation
    report_to: str = "none"  # an Accelerate tracker: tensorboard, wandb, mlflow
    log_every: int = 10
    seed: int = 0
    # Seed of the validation batches (and of a corpus's train/validation split); None: `seed`.
    # `surgery run --seed N` changes `seed` only, so runs with other seeds validate on the same batches.
    val_seed: int | None = None
    until_val_loss: float | None = None
    until_strict: bool = False  # `until val_loss < X` rather than <=
    max_grad_norm: float = 1.0
    val_fraction: float = 0.005
    packing: str = "full-sentences"  # or "doc-sentences": blocks never cross a document
    # freeze=old(N steps): after each growth, N steps in which only new parameters train (0: none)
    freeze_steps: int = 0


@dataclass(frozen=True)
class LrCurve:
    """The run's learning rate: warmup then linear/cosine/constant over the whole budget, the
    same curve across growths (`continue`), optionally re-warmed after each growth (`rewarm`)."""

    lr: float
    total: int
    warmup: int
    schedule: str
    rewarm: int = 0

    @classmethod
    def of(cls, s: RunSettings, total: int, steps_per_epoch: int) -> "LrCurve":
        value, unit = s.warmup
        warm = math.ceil(value * total) if unit == "fraction" else to_steps((value, unit), steps_per_epoch)
        rewarm = to_steps(s.rewarm, steps_per_epoch) if (s.on_grow == "rewarm" and s.rewarm) else 0
        return cls(s.lr, total, max(0, warm), s.schedule, rewarm)

    def __call__(self, step: int, grown_at: int | None = None) -> float:
        if step < self.warmup:
            base = self.lr * (step + 1) / self.warmup
        else:
            frac = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
            if self.schedule == "cosine":
                base = self.lr * 0.5 * (1 + math.cos(math.pi * frac))
            elif self.schedule == "constant":
                base = self.lr
            else:
                base = self.lr * (1.0 - frac)
        if grown_at is not None and self.rewarm and step - grown_at < self.rewarm:
            base *= (step - grown_at + 1) / self.rewarm
        return base


def compile_plan(plan) -> tuple[list[Segment], RunSettings]:
    """The plan's stages as segments, and its training settings as RunSettings."""
    segments: list[Segment] = []
    pending: tuple[Growth, str | None, ModelSpec | None] | None = None
    chain: list = []
    budget = (plan.train.budget.value, plan.train.budget.unit)
    for stage in plan.stages:
        if stage.kind == "grow":
            growth = Growth.from_plan(stage.op, dict(stage.args))
            if stage.init:
                chain.append((growth, plan.models[stage.from_model], plan.models[stage.to_model]))
            if stage.init and pending is not None:  # a later init- op: the source stays the first one's
                pending = (growth, pending[1], pending[2])
                continue
            source = plan.checkpoints.get(stage.from_model) if stage.init else None
            pending = (growth, source, plan.models[stage.from_model] if stage.init else None)
            continue
        end = (stage.end.value, stage.end.unit) if stage.end is not None else budget
        seg = Segment(stage.model, plan.models[stage.model], (stage.start.value, stage.start.unit), end,
                      init_from=stage.init_from)
        if pending is not None:
            growth, source, src_spec = pending
            seg = replace(seg, grow=growth, init_from=source or seg.init_from, init_spec=src_spec)
            if len(chain) > 1 or any(g.op in ("factorize", "share", "distil") for g, _, _ in chain):
                seg = replace(seg, init_chain=tuple(chain))
            pending, chain = None, []
        segments.append(seg)
    t = plan.train
    opt = t.optimizer
    warmup = (0.01, "fraction") if opt.warmup is None else (opt.warmup.value, opt.warmup.unit)
    rw = t.lr_on_grow.rewarm
    settings = RunSettings(
        corpus=t.corpus, corpus_docs=t.corpus_docs, objective=t.objective.name,
        objective_params=dict(t.objective.params), batch_size=t.batch_size, seq_len=t.seq_len,
        grad_accum=t.grad_accum, lr=opt.lr, warmup=warmup, weight_decay=opt.weight_decay,
        betas=(opt.beta1, opt.beta2), eps=opt.eps, schedule=opt.schedule, on_grow=t.lr_on_grow.policy,
        rewarm=(rw.value, rw.unit) if rw else None, optimizer_on_grow=t.optimizer_on_grow,
        precision=t.precision, parallel=t.parallel, val_every=t.val_every, val_batches=t.val_batches,
        ckpt_every=t.ckpt_every or 0, report_to=t.report_to,
        seed=t.seed,
        until_val_loss=t.until.value if t.until else None, until_strict=bool(t.until and t.until.op == "<"),
        max_grad_norm=opt.max_grad_norm, val_fraction=t.val_fraction,
        packing=t.packing or ("doc-sentences" if t.objective.name == "sop" else "full-sentences"),
        freeze_steps=t.freeze.steps if t.freeze is not None else 0,
    )
    return segments, settings
