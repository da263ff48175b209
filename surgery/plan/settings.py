"""The builder's part that reads the `train` statement: budget, points, corpus, objective, optimizer, settings."""

from __future__ import annotations

from typing import Any

from pydantic import (
    ValidationError,
)

from surgery import catalog
from surgery.args import ArgInfo, field_arg
from surgery.args import suggest as _suggest
from surgery.errors import SurgeryError
from surgery.families import FAMILIES
from surgery.plan.common import (
    compare_points,
    pydantic_msg,
    round_points,
    value_text,
)
from surgery.plan.types import (
    LrOnGrow,
    Objective,
    Optimizer,
    Point,
    StopRule,
    TrainSettings,
)
from surgery.recipe import (
    Call,
    Clause,
    Name,
    Number,
    Pos,
    Quantity,
    Str,
    TrainDecl,
    Until,
)

# The train settings a recipe may write (`key=value` after `train`): TrainSettings' fields, less
# those the statement's clauses set; their kinds, choices and bounds are the fields'.
_CLAUSE_FIELDS = {"corpus", "corpus_docs", "objective", "budget", "until", "optimizer"}
_SPECIAL_KINDS = {"val_every": "steps", "ckpt_every": "steps", "lr_on_grow": "lr_on_grow", "freeze": "freeze"}
SETTINGS: dict[str, ArgInfo] = {
    name: ArgInfo(_SPECIAL_KINDS[name]) if name in _SPECIAL_KINDS else field_arg(field)
    for name, field in TrainSettings.model_fields.items() if name not in _CLAUSE_FIELDS
}


class SettingsPart:
    """the train statement -> TrainSettings."""

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
            raise self.err(f"{loc}: {pydantic_msg(first)}", pos) from None
        self._check_setting_units(settings, where)
        obj = settings.objective.name
        if settings.packing == "doc-sentences" and FAMILIES[family].kind != "encoder":
            raise self.err("packing=doc-sentences is for bert objectives; t5 span corruption packs across documents", where["packing"])
        if obj == "sop" and settings.packing == "full-sentences":
            raise self.err("sop needs segments from one document: use packing=doc-sentences (the default for sop)", where["packing"])
        self.objective_pos = where.get("objective", decl.pos)
        self.parallel_pos = where.get("parallel", decl.pos)
        return settings

    def _corpus(self, clause: Clause, values: dict, where: dict) -> None:
        v = clause.value
        where["corpus"] = v.pos
        if isinstance(v, Str):
            values["corpus"] = v.value
            self._check_corpus(v.value, v.pos)
            return
        assert isinstance(v, Call)
        if v.name != "corpus":
            raise self.err(f'the corpus is written corpus("name") or as a quoted path, not {v.name}(...)', v.pos)
        positional = [a for a in v.args if a.key is None]
        if len(positional) != 1 or not isinstance(positional[0].value, (Str, Name)):
            raise self.err('corpus(...) takes one name or path, e.g. corpus("ko-pretrain")', v.pos)
        values["corpus"] = positional[0].value.value
        self._check_corpus(values["corpus"], positional[0].value.pos)
        for arg in v.args:
            if arg.key is None:
                continue
            if arg.key != "docs":
                raise self.err(f"unknown corpus argument {arg.key!r}{_suggest(arg.key, ['docs'])}", arg.pos)
            if not (isinstance(arg.value, Number) and isinstance(arg.value.value, int)):
                raise self.err("docs= is a whole number of documents", arg.pos)
            values["corpus_docs"] = arg.value.value
            where["corpus_docs"] = arg.pos

    def _check_corpus(self, name: str, pos) -> None:
        """A name that is neither a known corpus nor path-like is a mistake; a known corpus or a
        path that is not there (yet) is an input the run will need (plan warns, run refuses)."""
        from surgery.train.corpus import KNOWN_CORPORA, resolve_corpus

        try:
            resolve_corpus(name, self.base_dir)
        except SurgeryError as err:
            path_like = "/" in name or "." in name or name in KNOWN_CORPORA
            if not path_like:
                raise self.err(f"unknown corpus {name!r}: not {', '.join(map(repr, KNOWN_CORPORA))}, or a path "
                               f'(write a path with its folder or extension, e.g. "./{name}.txt")'
                               + (hint if (hint := _suggest(name, KNOWN_CORPORA)).startswith(";") else ""),
                               pos) from None
            self.missing(str(err), pos, kind="corpus")

    def _until(self, until: Until) -> StopRule:
        if until.metric != "val_loss":
            raise self.err(f"unknown stop metric {until.metric!r}{_suggest(until.metric, ['val_loss'])}", until.pos)
        if until.value <= 0:
            raise self.err("the target validation loss must be above zero", until.value_pos)
        return StopRule(metric="val_loss", op=until.compare, value=until.value)

    SETTING_ALIASES = {"batch": "batch_size", "bs": "batch_size", "seq_length": "seq_len", "max_len": "seq_len",
                       "gradient_accumulation": "grad_accum", "eval_every": "val_every", "validate_every": "val_every"}

    def _setting(self, clause: Clause, budget: Point, values: dict, where: dict) -> None:
        key, v = clause.key, clause.value
        info = SETTINGS.get(key)
        if info is None:
            if key in Optimizer.model_fields and key != "name":
                raise self.err(f"{key} is an optimizer argument: optimizer adamw({key}=...)", clause.pos)
            if any(key in o.params for o in catalog.OBJECTIVES.values()):
                raise self.err(f"{key} is an objective argument, e.g. objective span_corruption({key}=...)", clause.pos)
            if key in ("finetune", "model", "grow", "pretrained", "train"):
                raise self.err(f"{key} starts a statement; write it without '='", clause.pos)
            alias = self.SETTING_ALIASES.get(key)
            hint = f"; did you mean {alias!r}?" if alias else _suggest(key, list(SETTINGS))
            raise self.err(f"unknown train setting {key!r}{hint}", clause.pos)
        where[key] = v.pos
        if info.kind == "steps":
            if isinstance(v, Number) and isinstance(v.value, int):
                values[key] = v.value
            elif isinstance(v, Quantity) and v.unit == "steps" and float(v.value).is_integer():
                values[key] = int(v.value)
            else:
                raise self.err(f"{key} is counted in steps, e.g. {key}=1000steps", v.pos)
        elif info.kind == "lr_on_grow":
            values[key] = self._lr_on_grow(v, budget)
        elif info.kind == "freeze":
            from surgery.train.freeze import parse_freeze

            values[key] = parse_freeze(self, v)
        else:
            if info.kind in ("int", "float") and not isinstance(v, Number):
                what = "a whole number" if info.kind == "int" else "a number"
                raise self.err(f"{key} is {what}, got {value_text(v)}", v.pos)
            values[key] = self._coerce(key, v, info)
            if info.kind == "float":
                values[key] = float(values[key])

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
        got = v.name if isinstance(v, Call) else value_text(v)
        raise self.err(f"lr_on_grow is continue or rewarm(N), e.g. rewarm(500steps){_suggest(got, ['continue', 'rewarm'])}", v.pos)

    def _objective(self, call: Call | None, family: str, pos: Pos) -> Objective:
        name = call.name if call else FAMILIES[family].default_objective
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
            params[arg.key] = self._coerce(arg.key, arg.value, info.params[arg.key])
        for key, families in catalog.OBJECTIVE_ARG_FAMILIES.get(name, {}).items():
            if params.get(key) and family not in families:
                raise self.err(f"{key}=true is implemented for {', '.join(families)} models only", call.pos)
        return Objective(name=name, params=params)

    def _optimizer(self, call: Call | None, budget: Point, where: dict) -> Optimizer:
        if call is None:
            return Optimizer(warmup=Point(value=round_points(budget.value * 0.01, budget.unit), unit=budget.unit))
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
                text = v.value if isinstance(v, (Name, Str)) else value_text(v)
                if text not in choices:
                    raise self.err(f"schedule must be one of {', '.join(choices)}{_suggest(text, choices)}", v.pos)
                values["schedule"] = text
            else:
                if not isinstance(v, Number):
                    raise self.err(f"{arg.key} is a number, got {value_text(v)}", v.pos)
                values[arg.key] = float(v.value)
        values.setdefault("warmup", Point(value=round_points(budget.value * 0.01, budget.unit), unit=budget.unit))
        try:
            return Optimizer(**values)
        except ValidationError as e:
            first = e.errors()[0]
            key = str(first["loc"][0])
            raise self.err(f"{key}: {pydantic_msg(first)}", where.get(f"optimizer.{key}", call.pos)) from None

    def _warmup(self, v, budget: Point) -> Point:
        # bare numbers: below 1 a fraction of the budget, otherwise steps
        if isinstance(v, Number):
            if isinstance(v.value, float) and v.value < 1:
                return Point(value=round_points(budget.value * v.value, budget.unit), unit=budget.unit)
            if isinstance(v.value, int):
                return Point(value=v.value, unit="steps")
            raise self.err("warmup is steps (500steps), a share of the budget (1% or 0.01) or epochs (0.1ep)", v.pos)
        if isinstance(v, Quantity):
            return self.point(v, budget, "warmup")
        raise self.err("warmup is steps (500steps), a share of the budget (1% or 0.01) or epochs (0.1ep)", v.pos)

    def _check_setting_units(self, s: TrainSettings, where: dict) -> None:
        warmup = s.optimizer.warmup
        if warmup is not None and compare_points(warmup, s.budget, s.steps_per_epoch) == 1:
            raise self.err(f"warmup {warmup.text()} is longer than the {s.budget.text()} budget", where.get("optimizer.warmup"))

