"""`freeze=old(N steps)`: after a growth, only what the growth made new trains for N optimizer
steps (LLaMA Pro's block expansion: `d(identity)` adds blocks, the old ones stay frozen); then
everything trains.

What is new, per tensor of the grown model, from the growth's entries (surgery/ops):
- a whole tensor is new when its entry is fresh (`Entry.fresh`: nothing of it comes from a
  trained tensor: identity blocks' zeroed output projections, LEMON's built tensors), or when it
  belongs to a layer that depth growth added: a target layer whose source layer an earlier target
  layer already copies (`d(identity)`'s identity blocks, every `d`/`d[...]` copy after the first
  of its source, `select=interleave`'s second copy of each layer);
- width growth, element-wise: along every grown axis, the units that are not the first copy of
  their source unit (`Mapping.new_units`: the units past the old width, or padding) are new; an
  element is new when any of its axes puts it in a new unit (the new rows of a writer, the new
  columns of a reader, both for a tensor grown on both axes), old when all of them put it in an
  old unit. Old elements hold their post-growth values (FPI's divided reader columns included);
- everything else is old: embeddings, final norms and the head that growth only widened, the
  layers depth growth kept in place.

How old stays bit-equal: a wholly old tensor gets no gradient (`grad = None` before the step:
AdamW skips it, so neither the update, the weight decay nor its moments touch it, and its step
count does not advance); a partly old tensor gets its old elements' gradient zeroed and, after
the step, its old elements written back from a copy taken when the window starts (weight decay
and momentum from grown moments would otherwise move them). Gradient clipping sees the new
elements' gradients only. From step N on nothing is masked.

On resume the masks are computed again from the specs, the op and its seed (the growth's entries
depend on nothing else), and the window is counted from the growth's step, so a run resumed
inside the window frees the old parameters at the same step as one that was not interrupted.
"""

from __future__ import annotations

from surgery.catalog import COMPRESS_OPS, OPS, PLAIN_GROWTH


# ---- the plan ---------------------------------------------------------------------------------
def parse_freeze(part, v):
    """The recipe value of `freeze=`: old(N steps) / old(N), or none."""
    from surgery.plan.types import FreezeOld
    from surgery.recipe import Call, Name, Number, Quantity

    if isinstance(v, Name) and v.value == "none":
        return None
    if isinstance(v, Call) and v.name == "old" and len(v.args) == 1 and v.args[0].key is None:
        q = v.args[0].value
        n = None
        if isinstance(q, Number) and isinstance(q.value, int):
            n = q.value
        elif isinstance(q, Quantity) and q.unit == "steps" and float(q.value).is_integer():
            n = int(q.value)
        if n is not None and n > 0:
            return FreezeOld(steps=n)
        raise part.err("freeze=old(N) counts optimizer steps after each growth, e.g. old(200steps)", q.pos)
    raise part.err("freeze is old(N steps) (only the growth's new parameters train for N steps) or none, "
                   "e.g. freeze=old(200steps)", v.pos)


def check_freeze(part, stages, settings) -> None:
    """freeze=old needs a growth op to follow; compression ops and moe make a new model class
    (nothing of it is 'old' in place), and only one init- op is followed."""
    from surgery.plan.types import GrowStage

    grows = [s for s in stages if isinstance(s, GrowStage)]
    where = part.r.trains[0].pos
    for clause in part.r.trains[0].clauses:
        if clause.key == "freeze":
            where = clause.pos
    if not grows:
        raise part.err("freeze=old(...) freezes what a growth kept, but the recipe grows nothing", where)
    for g in grows:
        if g.op in COMPRESS_OPS:
            raise part.err(f"freeze=old(...) follows growth ops (d, f, a, l, ...); {g.op} makes a new model class "
                           "whose parameters are not old ones in place", where)
        elif OPS[g.op].impl != PLAIN_GROWTH:
            # The window's masks come from the plain growth's entries (which units are copies).
            raise part.err(f"freeze=old(...) follows the growth ops that copy units (d, f, a, l and their "
                           f"combinations), whose new parameters it can tell from the old; {g.op} grows its "
                           "own way (ligo: every weight a learned mix of old ones; msg: its masks already "
                           "bring the new units in gradually): remove freeze= or use one of those ops", where)
    if sum(1 for g in grows if g.init) > 1:
        raise part.err("freeze=old(...) follows one init- op; this chain has several before training", where)


def window_text(steps: int, src, dst) -> str:
    """What the plan says of a growth's frozen window. Every element of the source has exactly one
    old place in the grown model (its first copy), so the old parameters are the source's count."""
    return (f"freeze=old({steps}steps): for {steps} steps {dst.params - src.params:,} new parameters train, "
            f"{src.params:,} old ones stay as grown")


# ---- the run ----------------------------------------------------------------------------------
def new_masks(plan) -> dict[str, object]:
    """Per transformers tensor name of the grown model: True (all new), False (all old) or a
    bool tensor of its shape, True where new (width growth)."""
    import torch

    from surgery.ops.entries import Aki, Widen

    new_layers: set[tuple[str, int]] = set()
    for stack, chosen in plan.layers.items():
        seen: set[int] = set()
        for p, source in enumerate(chosen):
            if source in seen:
                new_layers.add((stack, p))
            seen.add(source)
    out: dict[str, object] = {}
    for slot in plan.dst_view:
        entry = plan.entries[slot.name]
        if entry.fresh or (slot.stack, slot.layer) in new_layers:
            mask: object = True
        else:
            widen = entry.own if isinstance(entry, Aki) else entry
            mask = False
            if isinstance(widen, Widen):
                new = torch.zeros(widen.shape, dtype=torch.bool)
                for a, axis in enumerate(widen.axes):
                    m = widen.rule.maps.get(axis.kind)
                    if m is None or m.is_identity:
                        continue
                    shape = [1] * len(widen.shape)
                    shape[a] = -1
                    new = new | m.new_units.reshape(shape)
                mask = True if bool(new.all()) else (new if bool(new.any()) else False)
        for name in (slot.hf, *slot.aliases):
            out[name] = mask
    return out


class Freezer:
    """Masks the old parameters' gradients before each step of the window and restores the old
    elements of partly new tensors after it."""

    def __init__(self, model, masks: dict[str, object], until: int):
        import torch

        self.until = until
        self.frozen, self.partial = [], []
        for name, p in model.named_parameters():
            mask = masks.get(name, False)  # a tensor outside the view: growth copied it, so old
            if mask is False:
                self.frozen.append(p)
            elif mask is not True:
                new = mask.to(p.device)
                self.partial.append((p, new, torch.where(new, torch.zeros((), dtype=p.dtype, device=p.device),
                                                         p.detach()).clone()))

    def before_step(self, step: int) -> None:
        """`step`: the index of the optimizer step about to be taken (0-based)."""
        if step >= self.until:
            return
        for p in self.frozen:
            p.grad = None
        for p, new, _ in self.partial:
            if p.grad is not None:
                p.grad.mul_(new)

    def after_step(self, step: int) -> None:
        if step >= self.until:
            return
        import torch

        with torch.no_grad():
            for p, new, saved in self.partial:
                p.copy_(torch.where(new, p, saved))


def freezer_for(trainer, index: int, model, step: int):
    """The Freezer of segment `index` when freeze=old is set and its window is not over at
    `step`; None otherwise. `model` may be wrapped (DDP): its unwrapped parameters are masked."""
    n = trainer.s.freeze_steps
    if not n:
        return None
    start = trainer.bounds[index][0]
    if step >= start + n:
        return None
    seg = trainer.segments[index]
    if seg.grow is None or seg.grow.op in COMPRESS_OPS or len(seg.init_chain) > 1:
        return None
    from surgery.families import layout_of_model
    from surgery.ops.growth import plan_growth
    from surgery.train.schedule import grown_from, growth_seed

    src, growth, seed = grown_from(trainer.segments, index), seg.grow, growth_seed(seg.grow, trainer.s.seed, index)

    inner = trainer.acc.unwrap_model(model)
    family, layout = layout_of_model(inner)
    dst = trainer.segments[index].spec
    plan = plan_growth(family, src, dst, growth.op, layout, inner.config.to_dict(), seed=seed,
                       options=growth.options)
    return Freezer(inner, new_masks(plan), start + n)
