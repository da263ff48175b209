"""The plan as one JSON object (`surgery plan --json`, plan.json beside a run)."""

from typing import Any

from surgery.plan import Plan, TrainStage
from surgery.plan.cost import (
    FLOPS_ASSUMPTION,
    baseline_flops,
    fit_cost,
    op_cost,
    op_ramp,
    stage_cost,
)
from surgery.shapes import shape_changes, tensor_groups, train_memory_bytes


def model_json(plan: Plan, name: str) -> dict[str, Any]:
    spec = plan.models[name]
    dims: dict[str, Any] = {
        "family": spec.family,
        "layers": spec.layers_text() if spec.decoder_layers is not None else spec.layers,
        "d_model": spec.d_model,
        "heads": spec.heads,
        "d_ff": spec.d_ff,
        "d_kv": spec.head_dim,
        "vocab": spec.vocab,
    }
    dims.update(spec.descriptor.json_fields(spec))
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
                    "fit_steps": cost.fit_steps,
                    "fit_flops": cost.fit_flops,
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
                    "fit": (dict(zip(("steps", "tokens", "flops"), fit)) if (fit := fit_cost(plan, stage)) else None),
                    "ramp_steps": op_ramp(plan, stage),
                    "cost": op_cost(plan, stage),
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

