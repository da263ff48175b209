"""One growth, planned: op parsing, spec checks, and the entry of every target tensor.

Combined ops apply width first, then depth (as bert2BERT does): depth copies already-widened
blocks, AKI reads the block above in the *source* numbering, and a post-LN identity block is built
from the widened model's LayerNorms.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from surgery.errors import SurgeryError
from surgery.families.base import Family, Layout
from surgery.growth_rules import growth_problem
from surgery.ops.depth import SELECTIONS, check_layers, deepen, select_layers
from surgery.ops.entries import Entry, WidthRule
from surgery.ops.width import eps_scale, same_width, widen_view, width_rule
from surgery.spec import ModelSpec
from surgery.view import Kind, View

OPS = ("d", "f", "a", "l", "da", "df", "dl")
DEPTH_MODES = ("stack", "identity")


@dataclass(frozen=True)
class OpParts:
    width: str | None  # "f", "a", "l" or None
    depth: bool
    identity: bool  # depth blocks start as the identity (else copies)
    select: str
    layers: tuple[tuple[int, ...], ...] | None

    @property
    def text(self) -> str:
        d = ("d(identity)" if self.identity else "d") if self.depth else ""
        return d + (self.width or "") if d or self.width else "none"


def parse_op(op: str, options: dict | None = None) -> OpParts:
    options = dict(options or {})
    text = op.strip()
    identity = None
    if text.startswith("d(identity)"):
        text, identity = "d" + text[len("d(identity)"):], True
    if text.split("(")[0] == "ligo":
        raise SurgeryError("ligo learns the growth on training batches, so it runs inside a run: write "
                           "grow S ligo(steps=N)@POINT B in a recipe (surgery run); the plain ops' starting "
                           "point is df (stacking + FPI)")
    if text.startswith("msg"):
        raise SurgeryError("msg is a training-time op: its masks ramp while the grown model trains, and the grown "
                           "weights alone are not the function; use it in a recipe (grow S msg(ramp=N)@POINT B)")
    if text not in OPS:
        raise SurgeryError(f"unknown growth op {op!r} (choose one of {', '.join(OPS)}, or d(identity))")
    mode = options.pop("depth", options.pop("mode", None))
    if mode is not None and mode not in DEPTH_MODES:
        raise SurgeryError(f"unknown depth mode {mode!r} (choose {' or '.join(DEPTH_MODES)})")
    if identity is None:
        identity = (mode == "identity") if mode is not None else text == "dl"
    select = options.pop("select", "stack")
    if select not in SELECTIONS:
        raise SurgeryError(f"unknown layer selection {select!r} (choose one of {', '.join(SELECTIONS)})")
    layers = options.pop("layers", None)
    if options:
        raise SurgeryError(f"unknown growth option(s): {', '.join(sorted(options))}")
    if layers is not None:
        if not isinstance(layers, (list, tuple)) or not all(isinstance(x, (list, tuple)) for x in layers):
            raise SurgeryError("option layers must be one list of source layers per stack, e.g. [[0, 1, 0, 1]]")
        layers = tuple(tuple(x) for x in layers)
    width = text[-1] if text[-1] in "fal" else None
    return OpParts(width, text.startswith("d"), bool(identity) and text.startswith("d"), select, layers)


def check_specs(src: ModelSpec, dst: ModelSpec, parts: OpParts) -> None:
    """Reject growth a user cannot mean, with one sentence each: the plan's rules
    (surgery/growth_rules.py), so `surgery grow` refuses exactly what `surgery plan` refuses."""
    problem = growth_problem(src, dst, depth=parts.depth, width=parts.width is not None,
                             op=("d" if parts.depth else "") + (parts.width or ""))
    if problem is not None:
        raise SurgeryError(problem[0])


@dataclass
class GrowthPlan:
    family: Family
    op: OpParts
    src_spec: ModelSpec
    dst_spec: ModelSpec
    src_layout: Layout
    dst_layout: Layout
    src_view: View
    dst_view: View
    src_dims: dict[Kind, int]
    dst_dims: dict[Kind, int]
    rule: WidthRule | None
    layers: dict[str, list[int]]
    entries: dict[str, Entry]  # target slot name -> entry
    config: dict  # the grown model's config.json contents
    notes: list[str] = field(default_factory=list)

    def shape_changes(self) -> list[tuple[str, tuple, tuple]]:
        """(target tensor, old shape, new shape) per slot, with the source slot of the same name."""
        out = []
        for s in self.dst_view:
            old = self.src_view[s.name].shape(self.src_dims) if s.name in self.src_view else None
            out.append((s.hf, old, s.shape(self.dst_dims)))
        return out


def plan_growth(family: Family, src: ModelSpec, dst: ModelSpec, op: str, layout: Layout, config: dict, *,
                seed: int = 0, options: dict | None = None) -> GrowthPlan:
    parts = parse_op(op, options)
    check_specs(src, dst, parts)
    src_view, dst_view = family.view(src, layout), family.view(dst, layout)
    src_dims, dst_dims = family.dims(src, config), family.dims(dst, config)

    rule = width_rule(family, src, dst, parts.width, seed) if parts.width and not same_width(src, dst) else None
    widened = widen_view(src_view, src_dims, dst_dims, rule, parts.width or "")

    layers: dict[str, list[int]] = {}
    for i, (stack, old, new) in enumerate(zip(family.stacks, src.stacks, dst.stacks)):
        if parts.layers is not None:
            if len(parts.layers) != len(family.stacks):
                raise SurgeryError(f"option layers needs {len(family.stacks)} list(s), one per stack "
                                   f"({', '.join(family.stacks)}); got {len(parts.layers)}")
            chosen = list(parts.layers[i])
        else:
            chosen = select_layers(old, new, parts.select)
        check_layers(chosen, old, new, stack, parts.identity)
        layers[stack] = chosen

    new_config = dict(config)
    hf = dst.hf_config()
    new_config.update({k: hf[k] for k in family.dim_keys if k in hf})
    scale = eps_scale(src, dst, parts.width or "") if rule is not None else 1.0
    if scale != 1.0:
        new_config[family.eps_key] = config.get(family.eps_key, _default_eps(family)) * scale
    # Filled now with what the specs tell, and while tensors are made with what only weights tell.
    notes: list[str] = []
    entries = deepen(family, widened, src_view, dst_view, layers, parts.identity, dst_dims, config, notes)
    plan = GrowthPlan(family, parts, src, dst, layout, layout, src_view, dst_view, src_dims, dst_dims, rule,
                      layers, entries, new_config, notes)
    notes.extend(exactness_notes(plan))
    return plan


def _default_eps(family: Family) -> float:
    return 1e-6 if family.norm == "rms" else 1e-12


def exactness_notes(plan: GrowthPlan) -> list[str]:
    """What the user should know about how far this growth moves the function."""
    notes = []
    p, rule = plan.op, plan.rule
    if p.depth and plan.src_spec.stacks != plan.dst_spec.stacks and not p.identity:
        notes.append("stacked layers: not function-preserving by design (use d(identity) / dl for an exact depth op)")
    if rule is not None:
        m = rule.maps[Kind.MODEL]
        if p.width == "a":
            notes.append("AKI: new units come from the layer above - not function-preserving by design")
        elif p.width == "f" and not all(rule.maps[k].uniform for k in (Kind.MODEL,)):
            notes.append("FPI at a non-integer d_model ratio copies some units more often than others: "
                         "the norms no longer see the same statistics, so the function moves (see the probe)")
        elif p.width == "l" and plan.family.norm_position == "post" and bool(m.pad.any()):
            notes.append("lossless growth of a post-LayerNorm model at a non-integer d_model ratio is not exact: "
                         "the padding units cannot follow the mean of the LayerNorm output unless its gains are "
                         "all equal (docs/surgery.md); measure with the probe")
    return notes
