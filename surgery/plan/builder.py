"""Recipe AST -> a typed, validated plan: the builder that puts the parts together, and the
public entry points."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from surgery import catalog
from surgery.args import ArgError, ArgInfo, coerce
from surgery.args import suggest as _suggest
from surgery.errors import RecipeError
from surgery.finetune.data import shared_file
from surgery.plan.chain import ChainPart
from surgery.plan.common import (
    peek_steps_per_epoch,
)
from surgery.plan.models import ModelsPart
from surgery.plan.settings import SettingsPart
from surgery.plan.types import FinetuneTask, Plan, TrainStage
from surgery.recipe import (
    Pos,
    Recipe,
    load_recipe,
)
from surgery.spec import ModelSpec


class _Builder(ModelsPart, SettingsPart, ChainPart):
    """Builds one Plan from one Recipe; every method raises RecipeError at the right place."""

    def __init__(self, recipe: Recipe):
        self.r = recipe
        self.models: dict[str, ModelSpec] = {}
        self.model_pos: dict[str, Pos] = {}
        self.checkpoints: dict[str, str] = {}
        self.checkpoint_pos: dict[str, Pos] = {}
        self.model_arg_pos: dict[str, dict[str, Pos]] = {}
        # files the run needs that are not there (yet): `surgery plan` warns, `surgery run` refuses
        self.missing_inputs: list[tuple[str, RecipeError]] = []  # (kind: corpus|checkpoint|finetune, error)
        # relative paths (corpora, checkpoints) are taken from the recipe's folder
        self.base_dir = Path(recipe.file).resolve().parent if not recipe.file.startswith("<") else Path.cwd()

    def err(self, message: str, pos: Pos | None) -> RecipeError:
        return self.r.error(message, pos)

    def missing(self, message: str, pos: Pos | None, kind: str = "checkpoint") -> None:
        self.missing_inputs.append((kind, self.err(message, pos)))

    def _coerce(self, key: str, v, info: ArgInfo):
        try:
            return coerce(key, v, info)
        except ArgError as e:
            raise self.err(str(e), e.pos or v.pos) from None


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
                kinds = " or ".join(info.kinds)
                raise self.err(f"{decl.name} needs an {kinds} model ({', '.join(info.families)}); {final} is {family}", decl.pos)
            for key in info.data:
                if not shared_file(key).exists():
                    self.missing(f"{decl.name} needs {shared_file(key)} (set SURGERY_DATA to the shared data folder, "
                                 "or run with --no-finetune; see docs/finetune.md)", decl.pos, kind="finetune")
                    break
            params: dict[str, Any] = {}
            for arg in decl.args:
                if arg.key is None:
                    raise self.err(f"task arguments need names ({', '.join(catalog.TASK_ARGS)})", arg.pos)
                spec = catalog.TASK_ARGS.get(arg.key)
                if spec is None:
                    raise self.err(f"unknown {decl.name} argument {arg.key!r}{_suggest(arg.key, catalog.TASK_ARGS)}", arg.pos)
                params[arg.key] = self._coerce(arg.key, arg.value, spec)
            tasks.append(FinetuneTask(name=decl.name, params=params))
        return tasks

    # -- all of it ------------------------------------------------------------------------------
    def build(self) -> Plan:
        for decl in self.r.models:
            self.model(decl)
        self.pretrained()
        train = self.train_decl()
        budget = self.budget(train.budget)
        steps_per_epoch = peek_steps_per_epoch(train)
        chain_text, stages = self.chain(budget, steps_per_epoch, train)
        trained = [s.model for s in stages if isinstance(s, TrainStage)]
        # the first model's family picks the default objective; every trained model must fit it
        settings = self.settings(train, self.models[trained[0]].family)
        final = trained[-1]
        tasks = self.finetune(self.models[final].family, final)
        self._check_objective_with_chain(stages, settings)
        if settings.freeze is not None:
            from surgery.train.freeze import check_freeze

            check_freeze(self, stages, settings)
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




# ---- public API -----------------------------------------------------------------------------
INPUTS = frozenset({"corpus", "checkpoint", "finetune"})


def build_plan(recipe: Recipe, require_inputs: frozenset[str] | set[str] = frozenset()) -> Plan:
    """Validate a parsed recipe and compile it into a Plan. Raises RecipeError; also when an input
    of a kind in `require_inputs` (corpus, checkpoint, finetune: files the run reads) is missing."""
    plan, missing = plan_and_missing(recipe)
    for kind, err in missing:
        if kind in require_inputs:
            raise err
    return plan


def plan_and_missing(recipe: Recipe) -> tuple[Plan, list[tuple[str, RecipeError]]]:
    """The plan and the inputs the run will need that are not there (kind, error at its place)."""
    builder = _Builder(recipe)
    plan = builder.build()
    return plan, builder.missing_inputs


def plan_file(path: str | Path, require_inputs: frozenset[str] | set[str] = frozenset()) -> Plan:
    """Parse, validate and compile a .grow file. Raises RecipeError or SurgeryError."""
    return build_plan(load_recipe(path), require_inputs)
