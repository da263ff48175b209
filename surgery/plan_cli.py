"""`surgery plan`: show a recipe's plan as tables (rich) or as one JSON object.

Stage costs use 6 * params * tokens, tokens = steps * batch_size * grad_accum * seq_len. Epochs
become steps only through `steps_per_epoch` (the data decides the real count at run time); without
it a stage shows FLOPs per token instead of a total.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from surgery.plan import GrowStage, Plan, Point, TrainStage, plan_file
from surgery.shapes import flops_per_token, human, human_bytes, shape_changes, tensor_groups, train_memory_bytes

FLOPS_ASSUMPTION = (
    "FLOPs = 6 x params x tokens, tokens = steps x batch_size x grad_accum x seq_len "
    "(every parameter counted against every token, a shared ALBERT weight once per layer using it; "
    "an upper estimate for encoder-decoders); a distillation stage adds its teacher's forward passes "
    "(2 x teacher params per token; twice, plus the tutor's training, for Tutor-KD)"
)


@dataclass(frozen=True)
class StageCost:
    length: Point | None  # None when start and end cannot be put in one unit
    steps: float | None
    tokens: float | None
    flops_per_token: int
    flops: float | None


def stage_length(plan: Plan, stage: TrainStage) -> Point | None:
    end = stage.end or plan.train.budget
    start = stage.start
    if start.unit == end.unit:
        return Point(value=max(end.value - start.value, 0.0), unit=end.unit)
    spe = plan.train.steps_per_epoch
    a, b = start.steps(spe), end.steps(spe)
    if a is None or b is None:
        return None
    return Point(value=max(b - a, 0.0), unit="steps")


def distillation_flops_per_token(plan: Plan, stage: TrainStage) -> int:
    """What a distillation stage adds to its student's training: the frozen teacher's forward
    passes (2 x params per token; Tutor-KD runs it on the masked and on the pseudo sample) and,
    for Tutor-KD, the tutor's own training (built as surgery.distillation.Tutor sizes it)."""
    i = plan.stages.index(stage)
    grow = plan.stages[i - 1] if i > 0 else None
    if not isinstance(grow, GrowStage) or grow.op != "distil":
        return 0
    teacher, student = plan.models[grow.from_model], plan.models[grow.to_model]
    forward = flops_per_token(teacher) // 3  # 2 of the 6 per parameter
    extra = forward
    if grow.args.get("style") == "tutor":
        head_dim = teacher.d_model // teacher.heads
        g = max(head_dim, round(teacher.d_model * grow.args["tutor"] / head_dim) * head_dim)
        tutor = student.model_copy(update={"d_model": g, "heads": g // head_dim, "d_ff": max(1, round(teacher.d_ff * g / teacher.d_model))})
        extra += forward + flops_per_token(tutor)
    return extra


def stage_cost(plan: Plan, stage: TrainStage) -> StageCost:
    length = stage_length(plan, stage)
    per_token = flops_per_token(plan.models[stage.model]) + distillation_flops_per_token(plan, stage)
    steps = length.steps(plan.train.steps_per_epoch) if length else None
    tokens = steps * plan.train.tokens_per_step if steps is not None else None
    return StageCost(length, steps, tokens, per_token, per_token * tokens if tokens is not None else None)


def baseline_flops(plan: Plan) -> float | None:
    """Training the final model from scratch for the whole budget, the paper's 'Base' row."""
    steps = plan.train.budget.steps(plan.train.steps_per_epoch)
    if steps is None:
        return None
    return flops_per_token(plan.models[plan.final_model]) * steps * plan.train.tokens_per_step


def model_json(plan: Plan, name: str) -> dict[str, Any]:
    spec = plan.models[name]
    dims: dict[str, Any] = {
        "family": spec.family,
        "layers": spec.layers_text() if spec.family == "t5" else spec.layers,
        "d_model": spec.d_model,
        "heads": spec.heads,
        "d_ff": spec.d_ff,
        "d_kv": spec.head_dim,
        "vocab": spec.vocab,
    }
    if spec.family == "t5":
        dims.update(ff=spec.ff, head=spec.head)
    elif spec.family == "llama":
        dims.update(kv_heads=spec.n_kv_heads, head=spec.head, max_positions=spec.max_positions)
    else:
        dims.update(max_positions=spec.max_positions)
    dims.update(
        params=spec.params,
        param_groups={g.name: g.params for g in tensor_groups(spec)},
        train_memory_bytes=train_memory_bytes(spec),
        hf_config_class=spec.hf_config_class,
        hf_model_class=spec.hf_model_class,
        hf_config=spec.hf_config(),
        pretrained=plan.checkpoints.get(name),
    )
    return dims


def plan_json(plan: Plan) -> dict[str, Any]:
    """The `--json` object: models by name, ordered stages with shapes and costs, settings."""
    stages = []
    for i, stage in enumerate(plan.stages):
        if isinstance(stage, TrainStage):
            cost = stage_cost(plan, stage)
            stages.append(
                {
                    "index": i,
                    "kind": "train",
                    "op": "train",
                    "model": stage.model,
                    "from": stage.model,
                    "to": stage.model,
                    "start": stage.start.model_dump(),
                    "end": stage.end.model_dump() if stage.end else None,
                    "until_budget_end": stage.end is None,
                    "length": cost.length.model_dump() if cost.length else None,
                    "steps": cost.steps,
                    "tokens": cost.tokens,
                    "flops_per_token": cost.flops_per_token,
                    "flops": cost.flops,
                    "init_from": stage.init_from,
                }
            )
        else:
            changes = shape_changes(plan.models[stage.from_model], plan.models[stage.to_model])
            stages.append(
                {
                    "index": i,
                    "kind": "grow",
                    "op": stage.op,
                    "from": stage.from_model,
                    "to": stage.to_model,
                    "args": stage.args,
                    "at": stage.at.model_dump(),
                    "init": stage.init,
                    "length": None,
                    "shapes": [
                        {"group": c.name, "before": c.before, "after": c.after, "params_before": c.params_before, "params_after": c.params_after}
                        for c in changes
                    ],
                    "params_before": plan.models[stage.from_model].params,
                    "params_after": plan.models[stage.to_model].params,
                }
            )
    costs = [stage_cost(plan, s) for s in plan.trains]
    total = sum(c.flops for c in costs) if all(c.flops is not None for c in costs) else None
    base = baseline_flops(plan)
    return {
        "name": plan.name,
        "file": plan.file,
        "chain": plan.chain,
        "final_model": plan.final_model,
        "models": {name: model_json(plan, name) for name in plan.models},
        "checkpoints": plan.checkpoints,
        "stages": stages,
        "train": plan.train.model_dump(mode="json"),
        "finetune": [t.model_dump(mode="json") for t in plan.finetune],
        "cost": {
            "flops": total,
            "flops_final_model_whole_budget": base,
            "ratio": total / base if total is not None and base else None,
            "assumption": FLOPS_ASSUMPTION,
            "reuse_note": "a pretrained source's own training is not counted" if plan.checkpoints else None,
        },
        "plan": plan.model_dump(mode="json"),
    }


def _fmt_point_range(plan: Plan, stage: TrainStage) -> str:
    end = stage.end.text() if stage.end else f"{plan.train.budget.text()} (end)"
    return f"{stage.start.text()} -> {end}"


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
            str(spec.vocab), f"{spec.params:,}", human_bytes(train_memory_bytes(spec)),
        )
    console.print(models)
    for name, path in plan.checkpoints.items():
        console.print(f"pretrained {name}: {path}")

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
                cost.length.text() if cost.length else "?", human(cost.tokens) if cost.tokens is not None else "?", flops,
            )
        else:
            args = ", ".join(f"{k}={_short(v)}" for k, v in stage.args.items())
            op = ("init-" if stage.init else "") + stage.op + (f"({args})" if args else "")
            stages.add_row(str(i), f"grow {op}", f"{stage.from_model} -> {stage.to_model}", f"@{stage.at.text()}", "", "", "")
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
    console.print(f"at growth: lr {rewarm}, optimizer state {t.optimizer_on_grow}")
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
    plan = plan_file(recipe)
    if json_out:
        print(json.dumps(plan_json(plan), indent=2))
        return
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:  # piped or captured: do not squeeze the tables into 80 columns
        console = Console(highlight=False, width=140)
    render(plan, console)
