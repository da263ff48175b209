"""The plan's data types: what `surgery plan --json` prints and `surgery run` executes."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from surgery import catalog
from surgery.blocks import raw_block_len
from surgery.spec import ModelSpec


class Point(BaseModel):
    """A position in (or length of) training: `value` epochs or steps."""

    model_config = ConfigDict(frozen=True)

    value: float
    unit: Literal["ep", "steps"]

    @field_validator("value")
    @classmethod
    def _not_negative(cls, v: float) -> float:
        if v < 0:
            raise ValueError(f"must not be negative, got {v}")
        return v

    def text(self) -> str:
        v = int(self.value) if float(self.value).is_integer() else round(self.value, 4)
        return f"{v}{self.unit}"

    def steps(self, steps_per_epoch: int | None) -> float | None:
        """This point in steps, when the unit allows it."""
        if self.unit == "steps":
            return self.value
        return self.value * steps_per_epoch if steps_per_epoch else None


class GrowStage(BaseModel):
    """Grow `from_model` into `to_model` by `op` at point `at`."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["grow"] = "grow"
    op: str
    args: dict[str, Any] = {}
    from_model: str
    to_model: str
    at: Point
    init: bool = False  # True: grows the pretrained checkpoint of from_model before training

    @field_validator("op")
    @classmethod
    def _known_op(cls, v: str) -> str:
        if v not in catalog.OPS and v not in catalog.COMPRESS_OPS:
            raise ValueError(f"unknown op {v!r}")
        return v


class TrainStage(BaseModel):
    """Train `model` from `start` to `end` (None: to the end of the budget or the stop rule)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["train"] = "train"
    model: str
    start: Point
    end: Point | None = None
    init_from: str | None = None  # checkpoint this stage starts from, when not grown into


Stage = Annotated[Union[TrainStage, GrowStage], Field(discriminator="kind")]


class Objective(BaseModel):
    name: str
    params: dict[str, Any] = {}


class StopRule(BaseModel):
    metric: Literal["val_loss"] = "val_loss"
    op: Literal["<=", "<"] = "<="
    value: float


class Optimizer(BaseModel):
    """AdamW and its learning-rate schedule. `warmup` None means 1% of the budget."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["adamw"] = "adamw"
    lr: float = Field(5e-4, gt=0)
    warmup: Point | None = None
    weight_decay: float = Field(0.01, ge=0)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    beta1: float = Field(0.9, gt=0, lt=1)
    beta2: float = Field(0.999, gt=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    max_grad_norm: float = Field(1.0, ge=0)  # 0 turns clipping off


class LrOnGrow(BaseModel):
    """What the learning rate does at a growth: continue its schedule, or warm up again over
    `rewarm` from 0 back to where the schedule is."""

    policy: Literal["continue", "rewarm"] = "continue"
    rewarm: Point | None = None


class FreezeOld(BaseModel):
    """`freeze=old(N steps)`: for N optimizer steps after each growth only the parameters the
    growth made new train; the rest stay bit-equal (surgery/train/freeze.py, docs/training.md)."""

    steps: int = Field(gt=0)

    def text(self) -> str:
        return f"old({self.steps}steps)"


class TrainSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    corpus: str = "demo"  # a known corpus name or a path to text
    corpus_docs: int | None = Field(None, gt=0)  # train on at most the first N documents
    objective: Objective
    budget: Point
    until: StopRule | None = None
    optimizer: Optimizer = Optimizer()
    batch_size: int = Field(16, gt=0)
    seq_len: int = Field(128, gt=0)
    grad_accum: int = Field(1, gt=0)
    val_every: int = Field(1000, gt=0)  # steps
    val_batches: int = Field(8, gt=0)  # batches per validation (fixed ones: the same every time)
    ckpt_every: int | None = Field(None, gt=0)  # steps; None: at every validation
    report_to: Literal["none", "tensorboard", "wandb", "mlflow"] = "none"  # surgery run's tracker
    val_fraction: float = Field(0.005, gt=0, lt=1)  # held out when the corpus has no split
    seed: int = Field(0, ge=0)
    steps_per_epoch: int | None = Field(None, gt=0)  # planning only: converts units, FLOPs
    lr_on_grow: LrOnGrow = LrOnGrow()
    optimizer_on_grow: Literal["reset", "grow"] = "reset"
    freeze: FreezeOld | None = None  # None: everything trains after a growth
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # Under several processes: "ddp" (each holds the whole model) or "fsdp" (parameters and AdamW
    # state sharded over the processes, FSDP2; surgery/train/sharding.py).
    parallel: Literal["ddp", "fsdp"] = "ddp"
    # full-sentences: blocks packed across documents (separator between them); doc-sentences:
    # blocks never cross a document boundary (RoBERTa's two input formats). None: the
    # objective's default (doc-sentences for sop, full-sentences otherwise).
    packing: Literal["full-sentences", "doc-sentences"] | None = None

    @property
    def tokens_per_step(self) -> int:
        """Corpus tokens one optimizer step reads (what the run logs as tokens)."""
        return self.batch_size * self.grad_accum * raw_block_len(self.objective.name, self.seq_len, self.objective.params)


class FinetuneTask(BaseModel):
    name: Literal[tuple(catalog.TASKS)]  # type: ignore[valid-type]
    params: dict[str, Any] = {}


class Plan(BaseModel):
    name: str
    file: str
    chain: str  # the chain as written, e.g. "T init-d S a@2ep B"
    models: dict[str, ModelSpec]
    checkpoints: dict[str, str] = {}
    stages: list[Stage]
    train: TrainSettings
    finetune: list[FinetuneTask] = []

    @model_validator(mode="after")
    def _stages_name_models(self) -> "Plan":
        for stage in self.stages:
            names = [stage.model] if isinstance(stage, TrainStage) else [stage.from_model, stage.to_model]
            for name in names:
                if name not in self.models:
                    raise ValueError(f"stage names unknown model {name!r}")
        return self

    @property
    def final_model(self) -> str:
        return [s for s in self.stages if isinstance(s, TrainStage)][-1].model

    @property
    def grows(self) -> list[GrowStage]:
        return [s for s in self.stages if isinstance(s, GrowStage)]

    @property
    def trains(self) -> list[TrainStage]:
        return [s for s in self.stages if isinstance(s, TrainStage)]

