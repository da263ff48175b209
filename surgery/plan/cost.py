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
    "(2 x teacher params per token; twice, plus the tutor's training, for Tutor-KD); a ligo growth's fit "
    "steps are steps of the stage that follows (the grown model's forward and backward) plus 3 x the "
    "operator's own FLOPs per step (building the grown weights, and its backward)"
)


@dataclass(frozen=True)
class StageCost:
    length: Point | None  # None when start and end cannot be put in one unit
    steps: float | None
    tokens: float | None
    flops_per_token: int
    flops: float | None
    fit_steps: int = 0  # of `steps`, those that fit a ligo operator (at the stage's start)
    fit_flops: float = 0.0  # what the operator itself adds over those steps (included in flops)


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


def ligo_operator_flops(src, dst) -> int:
    """FLOPs of one forward pass of the ligo operator (surgery/ops/ligo.py) growing src into dst:
    each source tensor widened by a dense [new, old] matrix product per grown axis, then, in a
    stack that deepens, every new layer's tensor a combination of the old layers' widened ones."""
    family = src.descriptor
    src_view, src_dims = family.plan_view(src)
    dst_view, dst_dims = family.plan_view(dst)

    def widen(slot) -> int:
        shape = [src_dims[a.kind] for a in slot.axes]
        total = 0
        for i, a in enumerate(slot.axes):
            new = dst_dims[a.kind]
            if new == shape[i] or a.role.value == "keep":
                continue
            rest = 1
            for j, n in enumerate(shape):
                if j != i:
                    rest *= n
            total += 2 * new * shape[i] * rest
            shape[i] = new
        return total

    deeper = {stack for stack, a, b in zip(family.stacks, src.stacks, dst.stacks) if a != b}
    old_depth = dict(zip(family.stacks, src.stacks))
    total = 0
    for slot in dst_view:
        if slot.layer is None or slot.stack not in deeper:
            total += widen(slot)
            continue
        if slot.layer == 0:  # every old layer's tensor widened once per (stack, tensor)
            total += sum(widen(src_view[f"{slot.stack}.{l}.{slot.local}"]) for l in range(old_depth[slot.stack]))
        numel = 1
        for a in slot.axes:
            numel *= dst_dims[a.kind]
        total += 2 * old_depth[slot.stack] * numel
    return total


def fit_before(plan: Plan, stage: TrainStage) -> tuple[int, float]:
    """(fit steps, operator FLOPs over them) of the fitted growths (ligo) that make this stage's
    model: the growth right before it, or every init- op of the chain before the first stage."""
    from surgery.catalog import FITTED_OPS

    steps, flops = 0, 0.0
    j = plan.stages.index(stage) - 1
    while j >= 0 and isinstance(plan.stages[j], GrowStage):
        grow = plan.stages[j]
        if grow.op in FITTED_OPS:
            n = int(grow.args[FITTED_OPS[grow.op]])
            steps += n
            flops += n * 3.0 * ligo_operator_flops(plan.models[grow.from_model], plan.models[grow.to_model])
        if not grow.init:
            break
        j -= 1
    return steps, flops


def fit_cost(plan: Plan, grow: GrowStage) -> tuple[int, int, float] | None:
    """(steps, tokens, FLOPs) of a fitted growth's fit (ligo), None for other ops. Its steps and
    FLOPs are part of the stage that follows (stage_cost), shown here on their own."""
    from surgery.catalog import FITTED_OPS

    if grow.op not in FITTED_OPS:
        return None
    n = int(grow.args[FITTED_OPS[grow.op]])
    tokens = n * plan.train.tokens_per_step
    big = plan.models[grow.to_model]
    return n, tokens, float(flops_per_token(big) * tokens + n * 3 * ligo_operator_flops(plan.models[grow.from_model], big))


def stage_cost(plan: Plan, stage: TrainStage) -> StageCost:
    length = stage_length(plan, stage)
    per_token = flops_per_token(plan.models[stage.model]) + distillation_flops_per_token(plan, stage)
    steps = length.steps(plan.train.steps_per_epoch) if length else None
    tokens = steps * plan.train.tokens_per_step if steps is not None else None
    fit_steps, fit_flops = fit_before(plan, stage)
    flops = per_token * tokens + fit_flops if tokens is not None else None
    return StageCost(length, steps, tokens, per_token, flops, fit_steps, fit_flops)


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
