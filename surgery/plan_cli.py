"""`surgery plan`: show a recipe's plan as tables (rich) or as one JSON object (the cost model is
surgery/plan/cost.py, the JSON surgery/plan/export.py)."""

from __future__ import annotations

import json
from pathlib import Path

from surgery.catalog import COMPRESS_OPS
from surgery.checkpoints import has_tokenizer, read_config
from surgery.plan import Plan, TrainStage, plan_and_missing
from surgery.plan.cost import (
    FLOPS_ASSUMPTION,
    baseline_flops,
    fit_cost,
    op_cost,
    op_ramp,
    stage_cost,
)
from surgery.plan.export import plan_json
from surgery.recipe import load_recipe
from surgery.shapes import (
    human,
    human_bytes,
    shape_changes,
    train_memory_bytes,
)


def _fmt_point_range(plan: Plan, stage: TrainStage) -> str:
    end = stage.end.text() if stage.end else f"{plan.train.budget.text()} (end)"
    return f"{stage.start.text()} -> {end}"


def bare_checkpoint_note(folder: Path) -> str | None:
    """What training adds to a checkpoint saved without its pretraining head (BertModel, ...)."""
    from surgery.families import family_of_class

    if not (folder / "config.json").is_file():
        return None
    archs = read_config(folder).get("architectures") or []
    family = family_of_class(archs[0]) if archs else None
    if family is None or family.classes.get(archs[0]) != "":
        return None
    return f"a bare {archs[0]} checkpoint: training adds {family.model_class}'s head, freshly initialised"


def render(plan: Plan, console) -> None:
    from rich.table import Table

    console.print(f"[bold]{plan.name}[/bold]  ({plan.file})")
    console.print(f"chain: [bold cyan]{plan.chain}[/bold cyan]   final model: {plan.final_model}")

    models = Table(title="models", title_justify="left")
    for col in ("model", "family", "layers", "d_model", "heads", "d_kv", "d_ff", "vocab", "params", "train state"):
        models.add_column(col, justify="right" if col not in ("model", "family") else "left")
    for name, spec in plan.models.items():
        models.add_row(
            name, spec.family, spec.layers_text(), str(spec.d_model),
            f"{spec.heads} (kv {spec.kv_heads})" if spec.kv_heads is not None else str(spec.heads), str(spec.head_dim), str(spec.d_ff),
            str(spec.vocab), f"{spec.params:,}" + (f" ({spec.active_params:,} active per token)" if spec.active_params != spec.params else ""), human_bytes(train_memory_bytes(spec)),
        )
    console.print(models)
    for name, path in plan.checkpoints.items():
        console.print(f"pretrained {name}: {path}")
        note = bare_checkpoint_note(Path(path))
        if note:
            console.print(f"  [yellow]note:[/] {note}")
        if has_tokenizer(Path(path)):
            console.print("  tokenizer: the checkpoint's own (the run trains none)")

    stages = Table(title="stages", title_justify="left")
    for col in ("#", "stage", "model", "when", "length", "tokens", "FLOPs"):
        stages.add_column(col, justify="right" if col in ("#", "length", "tokens", "FLOPs") else "left")
    for i, stage in enumerate(plan.stages):
        if isinstance(stage, TrainStage):
            cost = stage_cost(plan, stage)
            flops = human(cost.flops) if cost.flops is not None else f"{human(cost.flops_per_token)}/token"
            label = "train" + (" (from checkpoint)" if stage.init_from else "")
            stages.add_row(
                str(i), label, stage.model, _fmt_point_range(plan, stage),
                (cost.length.text() if cost.length else "?") + (f" ({cost.fit_steps} fit)" if cost.fit_steps else ""), human(cost.tokens) if cost.tokens is not None else "?", flops,
            )
        else:
            args = ", ".join(f"{k}={_short(v)}" for k, v in stage.args.items())
            op = ("init-" if stage.init else "") + stage.op + (f"({args})" if args else "")
            fit, ramp = fit_cost(plan, stage), op_ramp(plan, stage)
            length, tokens, flops = ((f"ramp {ramp}steps" if ramp else ""), "", "") if fit is None \
                else (f"{fit[0]}steps fit", human(fit[1]), human(fit[2]))
            stages.add_row(str(i), f"grow {op}", f"{stage.from_model} -> {stage.to_model}", f"@{stage.at.text()}", length, tokens, flops)
    console.print(stages)

    for stage in plan.grows:
        src, dst = plan.models[stage.from_model], plan.models[stage.to_model]
        table = Table(title=f"grow {stage.from_model} -> {stage.to_model} by {'init-' if stage.init else ''}{stage.op}", title_justify="left")
        for col in ("tensor group", "before", "after", "params before", "params after"):
            table.add_column(col, justify="right" if col.startswith("params") else "left")
        for c in shape_changes(src, dst):
            style = "bold" if c.changed else "dim"
            table.add_row(c.name, c.before, c.after, f"{c.params_before:,}", f"{c.params_after:,}", style=style)
        table.add_row("total", "", "", f"{src.params:,}", f"{dst.params:,}", style="bold")
        console.print(table)
        cost = op_cost(plan, stage)
        if cost:
            console.print(f"  {stage.op}: {cost}", soft_wrap=True)
        if plan.train.freeze is not None and stage.op not in COMPRESS_OPS:
            from surgery.train.freeze import window_text

            console.print(window_text(plan.train.freeze.steps, src, dst))

    t = plan.train
    console.print(
        f"train {t.budget.text()} on {t.corpus}"
        + (f" (first {t.corpus_docs} documents)" if t.corpus_docs else "")
        + f", objective {t.objective.name}({', '.join(f'{k}={v}' for k, v in t.objective.params.items())})"
    )
    o = t.optimizer
    console.print(
        f"optimizer {o.name} lr={o.lr:g} warmup={o.warmup.text() if o.warmup else '-'} weight_decay={o.weight_decay:g} "
        f"schedule={o.schedule}; batch_size={t.batch_size} x grad_accum={t.grad_accum}, seq_len={t.seq_len}, "
        f"val_every={t.val_every} steps, seed={t.seed}"
    )
    rewarm = f"rewarm({t.lr_on_grow.rewarm.text()})" if t.lr_on_grow.policy == "rewarm" and t.lr_on_grow.rewarm else t.lr_on_grow.policy
    console.print(f"at growth: lr {rewarm}, optimizer state {t.optimizer_on_grow}"
                  + (f", freeze={t.freeze.text()}: only the growth's new parameters train for {t.freeze.steps} steps"
                     if t.freeze is not None else ""))
    if t.parallel == "fsdp":
        console.print("several processes: fsdp (parameters and AdamW state sharded over them; growth tensor by tensor)")
    if t.until:
        console.print(f"stop early when {t.until.metric} {t.until.op} {t.until.value:g}")
    if plan.finetune:
        console.print("finetune: " + ", ".join(f.name + (f"({', '.join(f'{k}={v}' for k, v in f.params.items())})" if f.params else "") for f in plan.finetune))

    costs = [stage_cost(plan, s) for s in plan.trains]
    if all(c.flops is not None for c in costs):
        total = sum(c.flops for c in costs)
        base = baseline_flops(plan)
        line = f"training FLOPs: {human(total)}"
        if base and (len(plan.trains) > 1 or plan.checkpoints):
            line += f" = {100 * total / base:.1f}% of training {plan.final_model} for the whole budget ({human(base)})"
        console.print(line)
    else:
        console.print("training FLOPs: per token only; set steps_per_epoch=N to turn epochs into steps")
    console.print(f"[dim]{FLOPS_ASSUMPTION}" + ("; a pretrained source's own training is not counted" if plan.checkpoints else "") + "[/dim]")


def _short(v) -> str:
    if isinstance(v, list):
        return "[" + " + ".join(f"{len(s)} layers" for s in v) + "]"
    return str(v)


def plan_command(recipe: Path, *, json_out: bool = False) -> None:
    import sys

    plan, missing = plan_and_missing(load_recipe(recipe))
    for kind, err in missing:  # not an error of the recipe: `surgery run` refuses until they exist
        print(f"warning: {err}".replace(": error: ", ": ", 1), file=sys.stderr)
    if json_out:
        print(json.dumps(plan_json(plan), indent=2))
        return
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:  # piped or captured: do not squeeze the tables into 80 columns
        console = Console(highlight=False, width=140)
    render(plan, console)
