"""Recipe AST -> a typed, validated plan (pydantic): models, ordered stages, training settings.

Every check that can fail because of what a user wrote raises RecipeError at the recipe's line
and column. The plan itself is plain data: `plan.model_dump(mode="json")` is what the runner
writes next to a run. No torch here; `surgery plan` must stay fast.

Choices worth knowing (docs/recipes.md says the same for users):
- `@` points are absolute positions in the training budget; `%` is resolved against the budget
  at plan time, so a Point's unit is always "ep" or "steps".
- A relative `pretrained` path is resolved against the recipe file's folder, so a recipe means
  the same wherever `surgery` is run from; `Plan.checkpoints` holds the absolute path.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from surgery import catalog
from surgery.errors import RecipeError
from surgery.recipe import (
    Arg,
    Call,
    Chain,
    Clause,
    LayersSum,
    ModelDecl,
    Name,
    Number,
    OpRef,
    Pos,
    Quantity,
    Recipe,
    Str,
    TrainDecl,
    Until,
    load_recipe,
)
from surgery.spec import FAMILIES, ModelSpec


# ---- plan types -----------------------------------------------------------------------------
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
    ckpt_every: int | None = Field(None, gt=0)  # steps; None: at every validation
    report_to: Literal["none", "tensorboard", "wandb", "mlflow"] = "none"  # surgery run's tracker
    val_fraction: float = Field(0.005, gt=0, lt=1)  # held out when the corpus has no split
    seed: int = Field(0, ge=0)
    steps_per_epoch: int | None = Field(None, gt=0)  # planning only: converts units, FLOPs
    lr_on_grow: LrOnGrow = LrOnGrow()
    optimizer_on_grow: Literal["reset", "grow"] = "reset"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # full-sentences: blocks packed across documents (separator between them); doc-sentences:
    # blocks never cross a document boundary (RoBERTa's two input formats). None: the
    # objective's default (doc-sentences for sop, full-sentences otherwise).
    packing: Literal["full-sentences", "doc-sentences"] | None = None

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.seq_len


class FinetuneTask(BaseModel):
    name: Literal["klue-nli", "korquad-ext", "korquad-gen", "news-summ"]
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


# ---- helpers --------------------------------------------------------------------------------
def _suggest(word: str, options) -> str:
    options = list(options)
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f" (known: {', '.join(options)})" if len(options) <= 12 else ""


def _value_text(value) -> str:
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


class _Builder:
    """Builds one Plan from one Recipe; every method raises RecipeError at the right place."""

    def __init__(self, recipe: Recipe):
        self.r = recipe
        self.models: dict[str, ModelSpec] = {}
        self.model_pos: dict[str, Pos] = {}
        self.checkpoints: dict[str, str] = {}
        self.checkpoint_pos: dict[str, Pos] = {}

    def err(self, message: str, pos: Pos | None) -> RecipeError:
        return self.r.error(message, pos)

    # -- models ---------------------------------------------------------------------------------
    def model(self, decl: ModelDecl) -> None:
        if decl.name in self.models:
            first = self.model_pos[decl.name]
            raise self.err(f"model {decl.name} is declared twice (first on line {first.line})", decl.name_pos)
        call = decl.family
        family = call.name
        if family not in FAMILIES:
            if family in catalog.PLANNED_FAMILIES:
                raise self.err(f"family {family} is not supported yet (supported: {', '.join(FAMILIES)})", call.pos)
            raise self.err(f"unknown model family {family!r}{_suggest(family, FAMILIES)}", call.pos)
        allowed = catalog.FAMILY_ARGS[family]
        values: dict[str, Any] = {}
        where: dict[str, Pos] = {}
        for arg in call.args:
            if arg.key is None:
                raise self.err(f"model arguments need names, e.g. d_model={_value_text(arg.value)}", arg.pos)
            key = arg.key
            if key not in allowed:
                alias = catalog.MODEL_ARG_ALIASES.get(key)
                hint = f"; did you mean {alias!r}?" if alias in allowed else _suggest(key, allowed)
                raise self.err(f"unknown {family} argument {key!r}{hint}", arg.pos)
            if key in values:
                raise self.err(f"argument {key} is given twice", arg.pos)
            values[key] = self._model_value(family, key, arg)
            where[key] = arg.pos
        missing = [k for k in catalog.REQUIRED_MODEL_ARGS if k not in values]
        if missing:
            example = {"layers": "layers=6+6" if family == "t5" else "layers=12", "d_model": "d_model=512", "heads": "heads=8", "d_ff": "d_ff=1024"}
            raise self.err(
                f"model {decl.name} needs {', '.join(missing)} (e.g. {', '.join(example[k] for k in missing)})", call.pos
            )
        fields = dict(values)
        if family == "t5":
            fields["layers"], fields["decoder_layers"] = values["layers"]
        if "tie" in fields:
            fields["head"] = "tied" if fields.pop("tie") else "untied"
        if "kv_heads" in fields and fields["heads"] % fields["kv_heads"]:
            raise self.err(f"kv_heads={fields['kv_heads']} does not divide heads={fields['heads']} "
                           "(grouped-query attention: each kv head serves heads/kv_heads query heads)", where["kv_heads"])
        d_model, heads = fields["d_model"], fields["heads"]
        if fields.get("d_kv") is None and d_model % heads:
            hint = " (or give the head size with d_kv=)" if family == "t5" else ""
            raise self.err(f"heads={heads} does not divide d_model={d_model}{hint}", where["heads"])
        try:
            spec = ModelSpec(family=family, **fields)
        except ValidationError as e:
            first = e.errors()[0]
            loc = str(first["loc"][0]) if first["loc"] else ""
            loc = {"decoder_layers": "layers", "head": "tie"}.get(loc, loc)
            pos = where.get(loc, call.pos)
            raise self.err(f"model {decl.name}: {_pydantic_msg(first)}", pos) from None
        self.models[decl.name] = spec
        self.model_pos[decl.name] = decl.name_pos

    def _model_value(self, family: str, key: str, arg: Arg):
        v = arg.value
        if key == "layers":
            if family == "t5":
                if isinstance(v, LayersSum):
                    return (v.encoder, v.decoder)
                raise self.err("t5 depth is written encoder+decoder, e.g. layers=6+6", arg.pos)
            if isinstance(v, Number) and isinstance(v.value, int):
                return v.value
            raise self.err(f"{family} depth is one whole number, e.g. layers=12", arg.pos)
        if key == "tie":
            text = v.value if isinstance(v, (Name, Str)) else None
            if text not in ("true", "false"):
                raise self.err(f"tie must be true or false, got {_value_text(v)}", v.pos)
            return text == "true"
        if key == "share":
            text = v.value if isinstance(v, (Name, Str)) else None
            choices = ("none", "all", "attention", "ffn")
            if text not in choices:
                raise self.err(f"share must be one of {', '.join(choices)}{_suggest(str(text), choices) if text else ''}", v.pos)
            return text
        if key in ("ff", "head"):
            choices = {"ff": ("relu", "gated-gelu"), "head": ("tied", "tied-unscaled", "untied")}[key]
            text = v.value if isinstance(v, (Name, Str)) else None
            if text not in choices:
                raise self.err(f"{key} must be one of {', '.join(choices)}{_suggest(str(text), choices) if text else ''}", v.pos)
            return text
        if isinstance(v, Number) and isinstance(v.value, int):
            if v.value <= 0:
                raise self.err(f"{key} must be a positive whole number, got {v.value}", v.pos)
            return v.value
        raise self.err(f"{key} must be a whole number, got {_value_text(v)}", v.pos)

    def known_model(self, name: str, pos: Pos) -> ModelSpec:
        if name not in self.models:
            if not self.models:
                raise self.err(f"unknown model {name}: declare it first, e.g. model {name} = t5(layers=6+6, d_model=512, heads=8, d_ff=1024)", pos)
            raise self.err(f"unknown model {name}{_suggest(name, self.models)}", pos)
        return self.models[name]

    # -- checkpoints ----------------------------------------------------------------------------
    def pretrained(self) -> None:
        base = Path(self.r.file).resolve().parent if not self.r.file.startswith("<") else Path.cwd()
        for decl in self.r.pretrained:
            self.known_model(decl.name, decl.name_pos)
            if decl.name in self.checkpoints:
                raise self.err(f"model {decl.name} already has a pretrained checkpoint (line {self.checkpoint_pos[decl.name].line})", decl.name_pos)
            if not decl.path.strip():
                raise self.err("the checkpoint path is empty", decl.path_pos)
            path = Path(decl.path).expanduser()
            self.checkpoints[decl.name] = str(path if path.is_absolute() else (base / path).resolve())
            self.checkpoint_pos[decl.name] = decl.name_pos

    # -- training settings ----------------------------------------------------------------------
    def train_decl(self) -> TrainDecl:
        trains = self.r.trains
        if not trains:
            last = len(self.r.text.rstrip().splitlines()) or 1
            raise self.err('the recipe has no train statement; add one, e.g. train 5ep on corpus("demo")', Pos(last, 1))
        if len(trains) > 1:
            raise self.err(f"only one train statement per recipe (the first is on line {trains[0].pos.line})", trains[1].pos)
        return trains[0]

    def budget(self, q: Quantity) -> Point:
        if q.unit == "%":
            raise self.err("the budget is an amount of training, 5ep or 28000steps, not a percentage", q.pos)
        if q.value <= 0:
            raise self.err("the budget must be more than zero", q.pos)
        if q.unit == "steps" and not float(q.value).is_integer():
            raise self.err("steps are whole numbers", q.pos)
        return Point(value=q.value, unit=q.unit)

    def point(self, q: Quantity, budget: Point, what: str) -> Point:
        """A quantity as a Point; % is taken of the budget."""
        if q.unit == "%":
            if not 0 <= q.value <= 100:
                raise self.err(f"{what} {q.text()} is not between 0% and 100%", q.pos)
            value = budget.value * q.value / 100
            if budget.unit == "steps":
                value = float(round(value))
            return Point(value=value, unit=budget.unit)
        if q.unit == "steps" and not float(q.value).is_integer():
            raise self.err("steps are whole numbers", q.pos)
        return Point(value=q.value, unit=q.unit)

    def settings(self, decl: TrainDecl, family: str) -> TrainSettings:
        budget = self.budget(decl.budget)
        values: dict[str, Any] = {"budget": budget}
        where: dict[str, Pos] = {"budget": decl.budget.pos}
        seen: dict[str, Pos] = {}
        objective: Call | None = None
        optimizer: Call | None = None
        for clause in decl.clauses:
            if clause.key in seen:
                what = clause.key if clause.kind == "setting" else f"the {clause.key} clause"
                raise self.err(f"{what} is given twice (first on line {seen[clause.key].line})", clause.pos)
            seen[clause.key] = clause.pos
            if clause.kind == "on":
                self._corpus(clause, values, where)
            elif clause.kind == "objective":
                objective = clause.value
            elif clause.kind == "optimizer":
                optimizer = clause.value
            elif clause.kind == "until":
                values["until"] = self._until(clause.value)
                where["until"] = clause.pos
            else:
                self._setting(clause, budget, values, where)
        values["objective"] = self._objective(objective, family, decl.pos)
        if objective is not None:
            where["objective"] = objective.pos
        values["optimizer"] = self._optimizer(optimizer, budget, where)
        try:
            settings = TrainSettings(**values)
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(p) for p in first["loc"][:2])
            pos = where.get(loc) or where.get(str(first["loc"][0])) or decl.pos
            raise self.err(f"{loc}: {_pydantic_msg(first)}", pos) from None
        self._check_setting_units(settings, where)
        obj = settings.objective.name
        if settings.packing == "doc-sentences" and family == "t5":
            raise self.err("packing=doc-sentences is for bert objectives; t5 span corruption packs across documents", where["packing"])
        if obj == "sop" and settings.packing == "full-sentences":
            raise self.err("sop needs segments from one document: use packing=doc-sentences (the default for sop)", where["packing"])
        self.objective_pos = where.get("objective", decl.pos)
        return settings

    def _corpus(self, clause: Clause, values: dict, where: dict) -> None:
        v = clause.value
        where["corpus"] = v.pos
        if isinstance(v, Str):
            values["corpus"] = v.value
            return
        assert isinstance(v, Call)
        if v.name != "corpus":
            raise self.err(f'the corpus is written corpus("name") or as a quoted path, not {v.name}(...)', v.pos)
        positional = [a for a in v.args if a.key is None]
        if len(positional) != 1 or not isinstance(positional[0].value, (Str, Name)):
            raise self.err('corpus(...) takes one name or path, e.g. corpus("ko-pretrain")', v.pos)
        values["corpus"] = positional[0].value.value
        for arg in v.args:
            if arg.key is None:
                continue
            if arg.key != "docs":
                raise self.err(f"unknown corpus argument {arg.key!r}{_suggest(arg.key, ['docs'])}", arg.pos)
            if not (isinstance(arg.value, Number) and isinstance(arg.value.value, int)):
                raise self.err("docs= is a whole number of documents", arg.pos)
            values["corpus_docs"] = arg.value.value
            where["corpus_docs"] = arg.pos

    def _until(self, until: Until) -> StopRule:
        if until.metric != "val_loss":
            raise self.err(f"unknown stop metric {until.metric!r}{_suggest(until.metric, ['val_loss'])}", until.pos)
        if until.value <= 0:
            raise self.err("the target validation loss must be above zero", until.value_pos)
        return StopRule(metric="val_loss", op=until.compare, value=until.value)

    SETTING_KINDS = {
        "batch_size": "int",
        "seq_len": "int",
        "grad_accum": "int",
        "seed": "int",
        "steps_per_epoch": "int",
        "val_every": "steps",
        "ckpt_every": "steps",
        "report_to": "choice",
        "val_fraction": "float",
        "lr_on_grow": "lr_on_grow",
        "optimizer_on_grow": "choice",
        "precision": "choice",
        "packing": "choice",
    }
    SETTING_CHOICES = {"optimizer_on_grow": ("reset", "grow"), "precision": ("auto", "fp32", "bf16", "fp16"),
                       "packing": ("full-sentences", "doc-sentences"),
                       "report_to": ("none", "tensorboard", "wandb", "mlflow")}
    SETTING_ALIASES = {"batch": "batch_size", "bs": "batch_size", "seq_length": "seq_len", "max_len": "seq_len",
                       "gradient_accumulation": "grad_accum", "eval_every": "val_every", "validate_every": "val_every"}

    def _setting(self, clause: Clause, budget: Point, values: dict, where: dict) -> None:
        key, v = clause.key, clause.value
        kind = self.SETTING_KINDS.get(key)
        if kind is None:
            if key in Optimizer.model_fields and key != "name":
                raise self.err(f"{key} is an optimizer argument: optimizer adamw({key}=...)", clause.pos)
            if any(key in o.params for o in catalog.OBJECTIVES.values()):
                raise self.err(f"{key} is an objective argument, e.g. objective span_corruption({key}=...)", clause.pos)
            if key in ("finetune", "model", "grow", "pretrained", "train"):
                raise self.err(f"{key} starts a statement; write it without '='", clause.pos)
            alias = self.SETTING_ALIASES.get(key)
            hint = f"; did you mean {alias!r}?" if alias else _suggest(key, list(self.SETTING_KINDS))
            raise self.err(f"unknown train setting {key!r}{hint}", clause.pos)
        where[key] = v.pos
        if kind == "int":
            if not (isinstance(v, Number) and isinstance(v.value, int)):
                raise self.err(f"{key} is a whole number, got {_value_text(v)}", v.pos)
            values[key] = v.value
        elif kind == "float":
            if not isinstance(v, Number):
                raise self.err(f"{key} is a number, got {_value_text(v)}", v.pos)
            values[key] = float(v.value)
        elif kind == "steps":
            if isinstance(v, Number) and isinstance(v.value, int):
                values[key] = v.value
            elif isinstance(v, Quantity) and v.unit == "steps" and float(v.value).is_integer():
                values[key] = int(v.value)
            else:
                raise self.err(f"{key} is counted in steps, e.g. {key}=1000steps", v.pos)
        elif kind == "choice":
            choices = self.SETTING_CHOICES[key]
            text = v.value if isinstance(v, (Name, Str)) else _value_text(v)
            if text not in choices:
                raise self.err(f"{key} must be one of {', '.join(choices)}{_suggest(text, choices)}", v.pos)
            values[key] = text
        elif kind == "lr_on_grow":
            values[key] = self._lr_on_grow(v, budget)

    def _lr_on_grow(self, v, budget: Point) -> LrOnGrow:
        if isinstance(v, Name) and v.value == "continue":
            return LrOnGrow(policy="continue")
        if isinstance(v, Call) and v.name == "rewarm":
            if len(v.args) != 1 or v.args[0].key is not None:
                raise self.err("rewarm takes one length, e.g. rewarm(500steps)", v.pos)
            q = v.args[0].value
            if isinstance(q, Number) and isinstance(q.value, int):
                return LrOnGrow(policy="rewarm", rewarm=Point(value=q.value, unit="steps"))
            if isinstance(q, Quantity):
                return LrOnGrow(policy="rewarm", rewarm=self.point(q, budget, "rewarm"))
            raise self.err("rewarm takes one length, e.g. rewarm(500steps)", v.args[0].pos)
        got = v.name if isinstance(v, Call) else _value_text(v)
        raise self.err(f"lr_on_grow is continue or rewarm(N), e.g. rewarm(500steps){_suggest(got, ['continue', 'rewarm'])}", v.pos)

    def _objective(self, call: Call | None, family: str, pos: Pos) -> Objective:
        name = call.name if call else catalog.DEFAULT_OBJECTIVE[family]
        info = catalog.OBJECTIVES.get(name)
        if info is None:
            raise self.err(f"unknown objective {name!r}{_suggest(name, catalog.OBJECTIVES)}", call.pos)
        if family not in info.families:
            fits = [n for n, o in catalog.OBJECTIVES.items() if family in o.families]
            raise self.err(f"objective {name} is for {', '.join(info.families)} models, not {family}; use {' or '.join(fits)}", call.pos)
        params = {k: a.default for k, a in info.params.items()}
        for arg in call.args if call else ():
            if arg.key is None:
                raise self.err(f"objective arguments need names ({', '.join(info.params)})", arg.pos)
            if arg.key not in info.params:
                raise self.err(f"unknown {name} argument {arg.key!r}{_suggest(arg.key, info.params)}", arg.pos)
            params[arg.key] = self._objective_value(arg, info.params[arg.key])
        if params.get("masks", 1) < 1:
            bad = next((a for a in call.args if a.key == "masks"), None)
            raise self.err("masks is at least 1", bad.value.pos if bad else pos)
        if "p" in params and not 0 < params["p"] < 1:
            bad = next((a for a in call.args if a.key == "p"), None)
            raise self.err(f"p is a probability between 0 and 1, got {params['p']}", bad.value.pos if bad else pos)
        if params.get("max_span", 1) < 1:
            bad = next((a for a in call.args if a.key == "max_span"), None)
            raise self.err("max_span is at least 1", bad.value.pos if bad else pos)
        if name == "span" and params.get("sbo") and family != "bert":
            raise self.err("sbo=true (the span-boundary objective) is implemented for bert models only", call.pos)
        if name == "electra":
            g, gd = params["generator"], params["generator_d_model"]
            if not 0 < g <= 1:
                bad = next((a for a in call.args if a.key == "generator"), None)
                raise self.err(f"generator is a width fraction in (0, 1], e.g. generator=0.25; got {g}", bad.value.pos if bad else pos)
            if gd < 0:
                raise self.err("generator_d_model must be positive", call.pos)
            if params["lambda"] < 0:
                raise self.err("lambda must not be negative", call.pos)
        rate = params.get("rate")
        if rate is not None and not 0 < rate < 1:
            bad = next((a for a in call.args if a.key == "rate"), None) if call else None
            raise self.err(f"rate is a fraction between 0 and 1, got {rate}", bad.value.pos if bad else pos)
        span = params.get("mean_span")
        if span is not None and span < 1:
            bad = next((a for a in call.args if a.key == "mean_span"), None) if call else None
            raise self.err(f"mean_span is at least 1 token, got {span}", bad.value.pos if bad else pos)
        return Objective(name=name, params=params)

    def _objective_value(self, arg: Arg, spec: catalog.ArgInfo):
        v = arg.value
        if spec.kind == "choice":
            text = v.value if isinstance(v, (Name, Str)) else _value_text(v)
            if text not in spec.choices:
                raise self.err(f"{arg.key} must be one of {', '.join(spec.choices)}{_suggest(text, spec.choices)}", v.pos)
            return text
        if spec.kind == "bool":
            text = v.value if isinstance(v, (Name, Str)) else (str(v.value) if isinstance(v, Number) else None)
            table = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
            if text not in table:
                raise self.err(f"{arg.key} is true or false", v.pos)
            return table[text]
        if not isinstance(v, Number):
            raise self.err(f"{arg.key} is a number", v.pos)
        if spec.kind == "int":
            if not isinstance(v.value, int):
                raise self.err(f"{arg.key} is a whole number", v.pos)
            return v.value
        return v.value

    def _optimizer(self, call: Call | None, budget: Point, where: dict) -> Optimizer:
        if call is None:
            return Optimizer(warmup=Point(value=_round_points(budget.value * 0.01, budget.unit), unit=budget.unit))
        if call.name != "adamw":
            raise self.err(f"unknown optimizer {call.name!r}{_suggest(call.name, ['adamw'])}", call.pos)
        fields = [k for k in Optimizer.model_fields if k != "name"]
        values: dict[str, Any] = {}
        for arg in call.args:
            if arg.key is None:
                raise self.err(f"optimizer arguments need names ({', '.join(fields)})", arg.pos)
            if arg.key not in fields:
                raise self.err(f"unknown adamw argument {arg.key!r}{_suggest(arg.key, fields)}", arg.pos)
            where[f"optimizer.{arg.key}"] = arg.value.pos
            v = arg.value
            if arg.key == "warmup":
                values["warmup"] = self._warmup(v, budget)
            elif arg.key == "schedule":
                choices = ("linear", "cosine", "constant")
                text = v.value if isinstance(v, (Name, Str)) else _value_text(v)
                if text not in choices:
                    raise self.err(f"schedule must be one of {', '.join(choices)}{_suggest(text, choices)}", v.pos)
                values["schedule"] = text
            else:
                if not isinstance(v, Number):
                    raise self.err(f"{arg.key} is a number, got {_value_text(v)}", v.pos)
                values[arg.key] = float(v.value)
        values.setdefault("warmup", Point(value=_round_points(budget.value * 0.01, budget.unit), unit=budget.unit))
        try:
            return Optimizer(**values)
        except ValidationError as e:
            first = e.errors()[0]
            key = str(first["loc"][0])
            raise self.err(f"{key}: {_pydantic_msg(first)}", where.get(f"optimizer.{key}", call.pos)) from None

    def _warmup(self, v, budget: Point) -> Point:
        # bare numbers: below 1 a fraction of the budget, otherwise steps
        if isinstance(v, Number):
            if isinstance(v.value, float) and v.value < 1:
                return Point(value=_round_points(budget.value * v.value, budget.unit), unit=budget.unit)
            if isinstance(v.value, int):
                return Point(value=v.value, unit="steps")
            raise self.err("warmup is steps (500steps), a share of the budget (1% or 0.01) or epochs (0.1ep)", v.pos)
        if isinstance(v, Quantity):
            return self.point(v, budget, "warmup")
        raise self.err("warmup is steps (500steps), a share of the budget (1% or 0.01) or epochs (0.1ep)", v.pos)

    def _check_setting_units(self, s: TrainSettings, where: dict) -> None:
        warmup = s.optimizer.warmup
        if warmup is not None and _compare(warmup, s.budget, s.steps_per_epoch) == 1:
            raise self.err(f"warmup {warmup.text()} is longer than the {s.budget.text()} budget", where.get("optimizer.warmup"))

    # -- the chain ------------------------------------------------------------------------------
    def op_args(self, op: OpRef, info: catalog.OpInfo | None = None) -> dict[str, Any]:
        info = info or catalog.OPS[op.name]
        args: dict[str, Any] = {}
        for arg in op.args:
            key = arg.key
            if key is None:
                # a bare value names its argument by the choice it is: d(identity) = d(init=identity)
                text = arg.value.value if isinstance(arg.value, (Name, Str)) else None
                owners = [k for k, a in info.args.items() if text in a.choices]
                if len(owners) != 1:
                    choices = sorted({c for a in info.args.values() for c in a.choices})
                    hint = _suggest(text, choices) if text and choices else ""
                    raise self.err(f"{op.name} has no option {_value_text(arg.value)!r}{hint}; write name=value ({', '.join(info.args)})", arg.pos)
                key = owners[0]
            elif key not in info.args:
                known = list(info.args)
                raise self.err(f"op {op.name} has no argument {key!r}{_suggest(key, known) if known else ' (it takes none)'}", arg.pos)
            if key in args:
                raise self.err(f"argument {key} is given twice", arg.pos)
            spec = info.args[key]
            v = arg.value
            if spec.kind == "choice":
                text = v.value if isinstance(v, (Name, Str)) else _value_text(v)
                if text not in spec.choices:
                    raise self.err(f"{key} must be one of {', '.join(spec.choices)}{_suggest(text, spec.choices)}", v.pos)
                args[key] = text
            elif spec.kind == "int":
                if not (isinstance(v, Number) and isinstance(v.value, int)):
                    raise self.err(f"{key} is a whole number", v.pos)
                args[key] = v.value
            else:
                if not isinstance(v, Number):
                    raise self.err(f"{key} is a number", v.pos)
                args[key] = float(v.value)
        for key, spec in info.args.items():
            if spec.default is not None and key not in args:
                args[key] = spec.default
        return args

    def check_compress(self, op: OpRef, src_name: str, dst_name: str, src_pos: Pos, dst_pos: Pos) -> dict[str, Any]:
        """Exact shape checks of factorize / share / distil; their resolved arguments."""
        info = catalog.COMPRESS_OPS[op.name]
        if op.layers is not None:
            raise self.err(f"{op.name} takes no layer list", op.layers_pos)
        src, dst = self.known_model(src_name, src_pos), self.known_model(dst_name, dst_pos)
        where = f"{src_name} {op.written} {dst_name}"
        # factorize(128): a bare number is the rank
        args_in = list(op.args)
        args: dict[str, Any] = {}
        if op.name == "factorize" and args_in and args_in[0].key is None and isinstance(args_in[0].value, Number):
            args["rank"] = args_in.pop(0).value.value
        import dataclasses

        args.update(self.op_args(dataclasses.replace(op, args=tuple(args_in)), info))
        same = ("d_model", "heads", "d_ff", "vocab", "max_positions")
        if op.name in ("factorize", "share"):
            if src.family not in ("bert", "albert") or dst.family != "albert":
                raise self.err(f"{where}: {op.name} turns a bert (or albert) model into an albert model; {dst_name} is {dst.family}", dst_pos)
            for key in ("layers",) + same:
                if getattr(src, key) != getattr(dst, key):
                    raise self.err(f"{where}: {op.name} keeps {key} ({getattr(src, key)} -> {getattr(dst, key)}); change it with a separate op", dst_pos)
        if op.name == "factorize":
            if src.family == "albert" and src.embedding is not None:
                raise self.err(f"{where}: {src_name} is already factorized (embedding={src.embedding})", op.pos)
            if dst.share != src.share:
                raise self.err(f"{where}: factorize keeps the layers ({src.share} -> {dst.share} sharing); use share for that", dst_pos)
            if "rank" in args and args["rank"] != dst.embedding_size:
                raise self.err(f"{where}: factorize({args['rank']}) but {dst_name} has embedding={dst.embedding_size}", op.pos)
            args["rank"] = dst.embedding_size
        if op.name == "share":
            # what= left out: what the target shares (share=all when it shares nothing)
            written = any(a.key == "what" or (a.key is None and isinstance(a.value, (Name, Str))
                                              and a.value.value in info.args["what"].choices) for a in op.args)
            if not written and dst.share != "none":
                args["what"] = dst.share
            if src.embedding_size != dst.embedding_size:
                raise self.err(f"{where}: share keeps the embedding size ({src.embedding_size} -> {dst.embedding_size}); factorize first", dst_pos)
            if dst.share != args["what"]:
                raise self.err(f"{where}: share({args['what']}) needs a target with share={args['what']}; {dst_name} has share={dst.share}", dst_pos)
            src_share = src.share if src.family == "albert" else "none"
            if src_share != "none" and not (args["what"] == "all" and src_share in ("attention", "ffn")):
                raise self.err(f"{where}: share needs an unshared source ({src_name} has share={src_share})", src_pos)
        if op.name == "distil":
            args = self.check_distil(op, args, src, dst, where, dst_pos)
        return args

    def check_distil(self, op: OpRef, args: dict[str, Any], src, dst, where: str, dst_pos: Pos) -> dict[str, Any]:
        """distil: the student's shape against the teacher's for the chosen style, and the style's
        arguments (another style's argument is a mistake, not silently ignored)."""
        style = args["style"]
        info = catalog.COMPRESS_OPS["distil"]
        given = {}
        for arg in op.args:
            key = arg.key or next((k for k, a in info.args.items() if isinstance(arg.value, (Name, Str)) and arg.value.value in a.choices), None)
            given[key] = arg.pos
        reads = catalog.DISTIL_STYLE_ARGS[style]
        for key, pos in given.items():
            if key not in reads:
                owners = [s for s, keys in catalog.DISTIL_STYLE_ARGS.items() if key in keys]
                raise self.err(f"distil(style={style}) takes no {key} (that is {' and '.join(owners)}'s); "
                               f"it reads {', '.join(k for k in reads if k != 'style')}", pos)
        out = {k: v for k, v in args.items() if k in reads}
        for key, value in catalog.DISTIL_STYLE_DEFAULTS[style].items():
            if key not in given:
                out[key] = value
        if out.get("T", 1.0) <= 0:
            raise self.err("T must be positive", given.get("T", op.pos))
        if style == "tutor" and not 0 < out["tutor"] <= 1:
            raise self.err("tutor is the tutor's width as a fraction of the teacher's, in (0, 1]", given.get("tutor", op.pos))
        if src.family != "bert" or dst.family != "bert":
            raise self.err(f"{where}: distil works between bert models", dst_pos)
        if style == "distilbert":
            for key in ("d_model", "heads", "d_ff", "vocab", "max_positions"):
                if getattr(src, key) != getattr(dst, key):
                    raise self.err(f"{where}: distil(style=distilbert) keeps the width ({key} {getattr(src, key)} -> {getattr(dst, key)}): the student starts from the teacher's layers and the cosine loss compares hidden states; style=tinybert or tutor distil into a narrower student", dst_pos)
            if dst.layers >= src.layers:
                raise self.err(f"{where}: the student must have fewer layers than the teacher ({dst.layers} >= {src.layers})", dst_pos)
            return out
        for key in ("heads", "vocab", "max_positions"):
            if getattr(src, key) != getattr(dst, key):
                raise self.err(f"{where}: distil(style={style}) keeps {key} ({getattr(src, key)} -> {getattr(dst, key)}): "
                               "the attention loss compares the scores head by head, the logits token by token", dst_pos)
        for key in ("layers", "d_model", "d_ff"):
            if getattr(dst, key) > getattr(src, key):
                raise self.err(f"{where}: the student's {key} ({getattr(dst, key)}) exceeds the teacher's ({getattr(src, key)})", dst_pos)
        if all(getattr(dst, k) == getattr(src, k) for k in ("layers", "d_model", "d_ff")):
            raise self.err(f"{where}: the student is the teacher's size; make it shallower or narrower", dst_pos)
        return out

    def check_growth(self, op: OpRef, src_name: str, dst_name: str, src_pos: Pos, dst_pos: Pos) -> dict[str, Any]:
        """Check that op can turn src into dst; return its resolved arguments."""
        if op.name in catalog.COMPRESS_OPS:
            return self.check_compress(op, src_name, dst_name, src_pos, dst_pos)
        if op.name not in catalog.OPS:
            if op.name in catalog.PLANNED_OPS:
                raise self.err(f"op {op.name} ({catalog.PLANNED_OPS[op.name]}) is not supported yet", op.pos)
            written = op.written
            raise self.err(f"unknown op {written!r}{_suggest(op.name, catalog.OPS)}", op.pos)
        info = catalog.OPS[op.name]
        src, dst = self.known_model(src_name, src_pos), self.known_model(dst_name, dst_pos)
        args = self.op_args(op)
        where = f"{src_name} {op.written} {dst_name}"
        if src.family != dst.family:
            raise self.err(f"{where}: cannot grow a {src.family} model into a {dst.family} model", dst_pos)
        if src.family == "albert":
            raise self.err(f"{where}: growing albert models is not supported yet (grow the bert, then factorize/share)", op.pos)
        if src.vocab != dst.vocab:
            raise self.err(f"{where}: vocabularies differ ({src.vocab} vs {dst.vocab}); growth keeps the vocabulary", dst_pos)
        for key in ("ff", "head"):
            if getattr(src, key) != getattr(dst, key):
                raise self.err(f"{where}: {key} changes ({getattr(src, key)} -> {getattr(dst, key)}); growth keeps it", dst_pos)
        # shrinking anything is never growth
        stack_names = ("encoder layers", "decoder layers") if src.family == "t5" else ("layers",)
        for label, a, b in zip(stack_names, src.stacks, dst.stacks):
            if b < a:
                raise self.err(f"{where}: {label} would shrink from {a} to {b}; growth ops only grow", dst_pos)
        width_dims = [("d_model", src.d_model, dst.d_model), ("d_ff", src.d_ff, dst.d_ff), ("heads", src.heads, dst.heads)]
        if src.family in ("bert", "gpt2"):
            width_dims.append(("max_positions", src.max_positions, dst.max_positions))
        if src.family == "llama":
            width_dims.append(("kv_heads", src.n_kv_heads, dst.n_kv_heads))
            width_dims.append(("query heads per kv head", src.group_size, dst.group_size))
        for label, a, b in width_dims:
            if b < a:
                raise self.err(f"{where}: {label} would shrink from {a} to {b}; growth ops only grow", dst_pos)
        deeper = src.stacks != dst.stacks
        wider = any(a != b for _, a, b in width_dims) or src.head_dim != dst.head_dim
        if not deeper and not wider:
            raise self.err(f"{where}: {src_name} and {dst_name} have the same size, so {op.name} changes nothing", op.pos)
        if info.depth and not info.width and wider:
            changed = next(f"{k} {a} -> {b}" for k, a, b in width_dims if a != b) if any(a != b for _, a, b in width_dims) else "head size"
            raise self.err(f"{where}: d grows depth only, but the width changes too ({changed}); use da, df or dl to grow both", op.pos)
        if info.width and not info.depth and deeper:
            raise self.err(
                f"{where}: {op.name} grows width only, but the depth changes too ({src.layers_text()} -> {dst.layers_text()}); use d{op.name} to grow both",
                op.pos,
            )
        if info.depth and info.width and not deeper:
            raise self.err(f"{where}: {op.name} grows depth and width, but the depth stays {src.layers_text()}; use {op.name[1]}", op.pos)
        if info.depth and info.width and not wider:
            raise self.err(f"{where}: {op.name} grows depth and width, but the width stays the same; use d", op.pos)
        if info.width and src.head_dim != dst.head_dim:
            hint = ""
            if dst.d_model % src.head_dim == 0:
                hint = f"; with d_model={dst.d_model} that is heads={dst.d_model // src.head_dim}"
            if src.family == "t5":
                hint += f" (t5 may also keep d_kv={src.head_dim} explicitly)"
            raise self.err(
                f"{where}: width ops keep the head size and add heads, but the head size changes "
                f"{src.head_dim} -> {dst.head_dim} (d_model/heads){hint}",
                dst_pos,
            )
        if op.layers is not None:
            if not info.depth:
                raise self.err(f"a layer list picks layers for depth growth; {op.name} does not change depth", op.layers_pos)
            if any(a.key == "select" or (a.key is None and isinstance(a.value, Name) and a.value.value in ("stack", "interleave")) for a in op.args):
                raise self.err("give either select= or a layer list, not both", op.layers_pos)
            args.pop("select", None)
            args["layers"] = self.layer_list(op, src, dst)
        return args

    def layer_list(self, op: OpRef, src: ModelSpec, dst: ModelSpec) -> list[list[int]]:
        stacks = op.layers
        if len(stacks) == 1 and len(src.stacks) == 2:
            stacks = (stacks[0], stacks[0])  # one list for both t5 stacks
        if len(stacks) != len(src.stacks):
            raise self.err(f"{src.family} has one stack; give one layer list without '+'", op.layers_pos)
        names = ("encoder", "decoder") if len(src.stacks) == 2 else ("model",)
        out = []
        for items, have, want, name in zip(stacks, src.stacks, dst.stacks, names):
            indices: list[int] = []
            for item in items:
                for i in (item.start, item.end):
                    if i >= have:
                        raise self.err(f"layer {i} does not exist: the {name} of the source has layers 0..{have - 1}", item.pos)
                if item.repeat < 1:
                    raise self.err("a repeat count is at least x1", item.pos)
                indices.extend(item.indices())
            if len(indices) != want:
                raise self.err(f"the layer list gives the {name} {len(indices)} layers, but the target has {want}", op.layers_pos)
            out.append(indices)
        return out

    def chain(self, budget: Point, steps_per_epoch: int | None, train: TrainDecl) -> tuple[str, list]:
        chains = self.r.chains
        if len(chains) > 1:
            raise self.err(f"only one grow chain per recipe (the first is on line {chains[0].pos.line})", chains[1].pos)
        chain: Chain | None = chains[0] if chains else None
        if chain is None:
            return self._single_model(train, budget)
        if train.model is not None:
            raise self.err(
                f"the grow chain decides which models train; write `train {train.budget.text()} ...` without {train.model}",
                train.model_pos,
            )
        self.known_model(chain.first, chain.first_pos)
        stages: list = []
        text = [chain.first]
        current, current_pos = chain.first, chain.first_pos
        last_point: Point | None = None
        last_pos: Pos | None = None
        started = False  # has training begun (no more init- ops)
        for step in chain.steps:
            op = step.op
            args = self.check_growth(op, current, step.model, current_pos, step.model_pos)
            if op.init:
                if op.at is not None:
                    raise self.err(f"{op.written} grows the checkpoint before training; it takes no @ point", op.at.pos)
                if started:
                    raise self.err(f"init- grows a pretrained checkpoint before training, so it can only start the chain; write {op.name}@POINT here", op.pos)
                if chain.first not in self.checkpoints:
                    raise self.err(
                        f'{op.written} grows {chain.first}\'s pretrained checkpoint, but {chain.first} has none; add pretrained {chain.first} = "path/to/checkpoint"',
                        op.pos,
                    )
                stages.append(GrowStage(op=op.name, args=args, from_model=current, to_model=step.model, at=Point(value=0, unit=budget.unit), init=True))
                text.append(op.written)
            else:
                if op.at is None:
                    raise self.err(
                        f"say when {op.name} happens: {op.name}@2ep (a point of the budget, also 40% or 28000steps), "
                        f"or init-{op.name} to grow a pretrained checkpoint before training",
                        op.pos,
                    )
                at = self.point(op.at, budget, "the point")
                if at.value == 0:
                    raise self.err(f"{op.name}@0 would grow an untrained model; to grow a pretrained checkpoint write init-{op.name}", op.at.pos)
                if last_point is not None and _compare(at, last_point, steps_per_epoch) in (-1, 0):
                    raise self.err(
                        f"points must increase along the chain: {op.at.text()} is not after {last_point.text()} (line {last_pos.line}, column {last_pos.column})",
                        op.at.pos,
                    )
                cmp = _compare(at, budget, steps_per_epoch)
                if cmp in (0, 1):
                    raise self.err(
                        f"{op.at.text()} is {'at the end' if cmp == 0 else 'past the end'} of the {budget.text()} budget, so {step.model} would never train",
                        op.at.pos,
                    )
                stages.append(self._train_stage(current, last_point, at, started, budget))
                stages.append(GrowStage(op=op.name, args=args, from_model=current, to_model=step.model, at=at))
                text.append(f"{op.written}@{op.at.text()}")
                last_point, last_pos = at, op.at.pos
                started = True
            text.append(step.model)
            current, current_pos = step.model, step.model_pos
        stages.append(self._train_stage(current, last_point, None, started or bool(stages), budget))
        self._check_unused_checkpoints(chain.first)
        return " ".join(text), stages

    def _train_stage(self, model: str, start: Point | None, end: Point | None, after_growth: bool, budget: Point) -> TrainStage:
        init_from = None if after_growth else self.checkpoints.get(model)
        return TrainStage(model=model, start=start or Point(value=0, unit=budget.unit), end=end, init_from=init_from)

    def _single_model(self, train: TrainDecl, budget: Point) -> tuple[str, list]:
        if train.model is not None:
            self.known_model(train.model, train.model_pos)
            model = train.model
        elif len(self.models) == 1:
            model = next(iter(self.models))
        elif not self.models:
            raise self.err("the recipe declares no model; add one, e.g. model B = t5(layers=6+6, d_model=512, heads=8, d_ff=1024)", train.pos)
        else:
            raise self.err(
                f"which model trains? write `train {next(iter(self.models))} {train.budget.text()} ...` or a grow chain (grow {' ... '.join(self.models)})",
                train.pos,
            )
        self._check_unused_checkpoints(model)
        return model, [self._train_stage(model, None, None, False, budget)]

    def _check_unused_checkpoints(self, first: str) -> None:
        for name, pos in self.checkpoint_pos.items():
            if name != first:
                raise self.err(f"only the model training starts from can have a pretrained checkpoint, and that is {first}, not {name}", pos)

    # -- fine-tuning ----------------------------------------------------------------------------
    def finetune(self, family: str, final: str) -> list[FinetuneTask]:
        decls = self.r.finetunes
        if len(decls) > 1:
            raise self.err(f"list all tasks in one finetune statement (the first is on line {decls[0].pos.line})", decls[1].pos)
        tasks: list[FinetuneTask] = []
        seen: set[str] = set()
        for decl in decls[0].tasks if decls else ():
            if decl.name not in catalog.TASKS:
                raise self.err(f"unknown fine-tuning task {decl.name!r}{_suggest(decl.name, catalog.TASKS)}", decl.pos)
            if decl.name in seen:
                raise self.err(f"task {decl.name} is listed twice", decl.pos)
            seen.add(decl.name)
            info = catalog.TASKS[decl.name]
            if family not in info.families:
                raise self.err(f"{decl.name} needs an encoder-decoder model; {final} is {family}", decl.pos)
            params: dict[str, Any] = {}
            for arg in decl.args:
                if arg.key is None:
                    raise self.err(f"task arguments need names ({', '.join(catalog.TASK_ARGS)})", arg.pos)
                spec = catalog.TASK_ARGS.get(arg.key)
                if spec is None:
                    raise self.err(f"unknown {decl.name} argument {arg.key!r}{_suggest(arg.key, catalog.TASK_ARGS)}", arg.pos)
                v = arg.value
                if not isinstance(v, Number) or v.value <= 0 or (spec.kind == "int" and not isinstance(v.value, int)):
                    kind = "a positive whole number" if spec.kind == "int" else "a positive number"
                    raise self.err(f"{arg.key} is {kind}", v.pos)
                params[arg.key] = v.value
            tasks.append(FinetuneTask(name=decl.name, params=params))
        return tasks

    # -- all of it ------------------------------------------------------------------------------
    def build(self) -> Plan:
        for decl in self.r.models:
            self.model(decl)
        self.pretrained()
        train = self.train_decl()
        budget = self.budget(train.budget)
        steps_per_epoch = _peek_steps_per_epoch(train)
        chain_text, stages = self.chain(budget, steps_per_epoch, train)
        families = {self.models[s.model].family for s in stages if isinstance(s, TrainStage)}
        family = families.pop()
        settings = self.settings(train, family)
        final = [s for s in stages if isinstance(s, TrainStage)][-1].model
        tasks = self.finetune(family, final)
        self._check_objective_with_chain(stages, settings)
        return Plan(
            name=self.r.name,
            file=self.r.file,
            chain=chain_text,
            models=self.models,
            checkpoints=self.checkpoints,
            stages=stages,
            train=settings,
            finetune=tasks,
        )


    def _check_objective_with_chain(self, stages: list, settings: TrainSettings) -> None:
        obj = settings.objective
        key = "span(sbo=true)" if obj.name == "span" and obj.params.get("sbo") else obj.name
        why = catalog.OBJECTIVES_WITHOUT_GROWTH.get(key)
        grows = [s for s in stages if isinstance(s, GrowStage) and not s.init]
        for g in grows if why else ():
            a, b = self.models[g.from_model], self.models[g.to_model]
            where = f"objective {key} with growth mid-run ({g.op}@{g.at.text()})"
            if key == "sop" or g.op in catalog.COMPRESS_OPS:
                raise self.err(f"{where} is not supported yet: {why} would have to follow the model into "
                               "its new class; grow first (init- ops) or train one model", self.objective_pos)
            for dim in ("d_model", "max_positions"):
                if getattr(a, dim) != getattr(b, dim):
                    raise self.err(f"{where} is not supported yet: {why} is sized by {dim} "
                                   f"({getattr(a, dim)} -> {getattr(b, dim)}) and would have to grow with the model; "
                                   "grow the depth mid-run (d), or the width before training (init- ops)", self.objective_pos)
        for s in stages:
            if isinstance(s, TrainStage):
                fam = self.models[s.model].family
                info = catalog.OBJECTIVES[obj.name]
                if fam not in info.families:
                    raise self.err(f"objective {obj.name} is for {', '.join(info.families)} models, but {s.model} is {fam}", self.objective_pos)


def _peek_steps_per_epoch(train: TrainDecl) -> int | None:
    for clause in train.clauses:
        if clause.kind == "setting" and clause.key == "steps_per_epoch":
            v = clause.value
            if isinstance(v, Number) and isinstance(v.value, int) and v.value > 0:
                return v.value
    return None


def _round_points(value: float, unit: str) -> float:
    return float(round(value)) if unit == "steps" else value


def _compare(a: Point, b: Point, steps_per_epoch: int | None) -> int | None:
    """-1, 0, 1 as a is before, at, after b; None when the units cannot be compared."""
    if a.unit == b.unit:
        x, y = a.value, b.value
    else:
        x, y = a.steps(steps_per_epoch), b.steps(steps_per_epoch)
        if x is None or y is None:
            return None
    return (x > y) - (x < y)


def _pydantic_msg(error: dict) -> str:
    msg = str(error.get("msg", "invalid value"))
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


# ---- public API -----------------------------------------------------------------------------
def build_plan(recipe: Recipe) -> Plan:
    """Validate a parsed recipe and compile it into a Plan. Raises RecipeError."""
    return _Builder(recipe).build()


def plan_file(path: str | Path) -> Plan:
    """Parse, validate and compile a .grow file. Raises RecipeError or SurgeryError."""
    return build_plan(load_recipe(path))
