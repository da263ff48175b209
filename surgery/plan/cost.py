"""The plan's cost model: each stage's length, steps, tokens and FLOPs, and the baseline.

Stage costs use 6 * params * tokens, tokens = steps * batch_size * grad_accum * the corpus tokens of
one block (surgery/blocks.py: what the run logs as tokens). Epochs
become steps only through `steps_per_epoch` (the data decides the real count at run time); without
it a stage shows FLOPs per token instead of a total. No torch here.
"""

from dataclasses import dataclass

from surgery.plan import GrowStage, Plan, Point, TrainStage
from surgery.shapes import flops_per_token

FLOPS_ASSUMPTION = (
    "FLOPs = 6 x params x tokens, tokens = steps x batch_size x grad_accum x corpus tokens per block "
    "(seq_len less the objective's [CLS]/[SEP]; more than seq_len for span corruption) "
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


def _grows(plan: Plan, stage) -> tuple[bool, bool]:
    from surgery.growth_rules import same_width

    src, dst = plan.models[stage.from_model], plan.models[stage.to_model]
    return not same_width(src, dst), src.stacks != dst.stacks


def op_ramp(plan: Plan, stage) -> int | None:
    """Steps after the growth until an op with a ramp (msg) is a plain model; None for the others."""
    from surgery import catalog

    info = catalog.OPS.get(stage.op)
    return info.ramp_steps(stage.args, *_grows(plan, stage)) if info is not None and info.ramp_steps else None


def op_cost(plan: Plan, stage) -> str | None:
    """What the op costs beyond its growth step, in words (catalog OpInfo.cost); None for most ops."""
    from surgery import catalog

    info = catalog.OPS.get(stage.op)
    return info.cost(stage.args, *_grows(plan, stage)) if info is not None and info.cost else None
