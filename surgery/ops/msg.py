"""MSG - masked structural growth (Yao et al., ICLR 2024): the weights of a grown model and which
of its units, heads and layers are new, so that masks can hold them at 0 while training ramps
them to 1 (the masks themselves: surgery/train/masks.py).

Weights. Old units keep their values and their place (the Net2Net mappings of surgery/ops/width.py
say where: the first copy of every source unit is the old unit; under grouped-query attention the
old query heads sit where their kv group puts them). Every other entry of a grown tensor is new
and is initialised without regard to the function, since the masks hide it at the growth step:
matrices N(0, rms of the source tensor), biases and norm shifts 0, norm gains the mean of the
source gains. New layers copy a trained layer (`select` / a layer list, as `d`); the first
occurrence of each source layer is the original. Nothing is divided or split: at mask 1 the model
is a plain, larger model. The one rescaling: a tied head that multiplies by d_model^-0.5 (T5)
gets its final norm's gain multiplied by sqrt(D/d), as the other ops do.

The ramp (`Ramp`) is a pure function of the optimizer step: a resumed run recomputes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from surgery.catalog import msg_ramp_steps as ramp_steps
from surgery.errors import SurgeryError
from surgery.families.base import Family, Layout
from surgery.growth_rules import growth_problem
from surgery.ops.depth import SELECTIONS, check_layers, deepen, select_layers
from surgery.ops.entries import Entry, Read, generator
from surgery.ops.growth import GrowthPlan, OpParts
from surgery.ops.width import same_width, width_rule
from surgery.spec import ModelSpec
from surgery.view import Axis, Kind, Role

RAMP_KEYS = ("ramp", "depth_ramp", "width_start", "depth_start")
DEFAULT_RAMP = 100  # as catalog.OPS["msg"] says


@dataclass(frozen=True)
class Ramp:
    """Mask values as a function of the optimizer step. `at`: the step of the growth. The width
    masks (new d_model units, heads, d_ff units) go linearly from 0 at step at + width_start to 1
    at at + width_start + ramp; new layers likewise over depth_ramp from at + depth_start.
    value(n) is the mask of the forward passes of the step that completes step n (training) and
    of a validation after n steps; so validation right after growth sees 0."""

    at: int
    ramp: int = DEFAULT_RAMP
    depth_ramp: int | None = None
    width_start: int = 0
    depth_start: int = 0
    width: bool = True  # the width grows (else no width masks)
    depth: bool = True  # the depth grows

    @classmethod
    def of(cls, options: dict, at: int, width: bool = True, depth: bool = True) -> Ramp:
        r = cls(at, int(options.get("ramp") or DEFAULT_RAMP), options.get("depth_ramp"),
                int(options.get("width_start") or 0), int(options.get("depth_start") or 0), width, depth)
        for key in ("ramp", "depth_ramp_steps"):
            if getattr(r, key) < 1:
                raise SurgeryError(f"msg: {key} must be at least 1 step")
        if r.width_start < 0 or r.depth_start < 0:
            raise SurgeryError("msg: width_start and depth_start are steps after the growth (>= 0)")
        return r

    @property
    def depth_ramp_steps(self) -> int:
        return int(self.depth_ramp) if self.depth_ramp is not None else self.ramp

    @staticmethod
    def _value(n: int, start: int, length: int) -> float:
        return min(1.0, max(0.0, (n - start) / length))

    def width_value(self, n: int) -> float:
        return self._value(n, self.at + self.width_start, self.ramp) if self.width else 1.0

    def depth_value(self, n: int) -> float:
        return self._value(n, self.at + self.depth_start, self.depth_ramp_steps) if self.depth else 1.0

    @property
    def steps(self) -> int:
        """Steps from the growth until every mask is 1."""
        return ramp_steps(self.__dict__, self.width, self.depth)

    @property
    def end(self) -> int:
        return self.at + self.steps

    def done(self, n: int) -> bool:
        return n >= self.end


# -- which units and layers are new --------------------------------------------------------------
@dataclass
class MsgLayout:
    """Per grown kind, a bool per unit of the grown axis (True: new, masked), and per stack the
    positions of the new layers."""

    new_units: dict[Kind, torch.Tensor] = field(default_factory=dict)
    kept: dict[Kind, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # (positions, source units)
    layers: dict[str, list[int]] = field(default_factory=dict)  # source layer of every position
    new_layers: dict[str, list[int]] = field(default_factory=dict)
    head_scale: float = 1.0

    @property
    def grows_width(self) -> bool:
        return bool(self.new_units)

    @property
    def grows_depth(self) -> bool:
        return any(self.new_layers.values())


def _options(options: dict | None) -> tuple[str, tuple | None, dict]:
    opts = dict(options or {})
    select = opts.pop("select", "stack")
    if select not in SELECTIONS:
        raise SurgeryError(f"unknown layer selection {select!r} (choose one of {', '.join(SELECTIONS)})")
    layers = opts.pop("layers", None)
    ramp = {k: opts.pop(k) for k in RAMP_KEYS if k in opts}
    opts.pop("depth", None)  # new layers are always masked copies
    if opts:
        raise SurgeryError(f"unknown msg option(s): {', '.join(sorted(opts))}")
    return select, (tuple(tuple(x) for x in layers) if layers is not None else None), ramp


def msg_layout(family: Family, src: ModelSpec, dst: ModelSpec, seed: int = 0, options: dict | None = None) -> MsgLayout:
    """Which units, heads and layers of the grown model are new (no weights needed)."""
    select, explicit, _ = _options(options)
    problem = growth_problem(src, dst, depth=src.stacks != dst.stacks, width=not same_width(src, dst), op="msg")
    if problem is not None:
        raise SurgeryError(problem[0])
    out = MsgLayout()
    if not same_width(src, dst):
        rule = width_rule(family, src, dst, "f", seed)
        for kind, m in rule.maps.items():
            if m.is_identity:
                continue
            new = m.new_units.clone()
            pos = (~new).nonzero().flatten()
            out.new_units[kind] = new
            out.kept[kind] = (pos, m.src[pos])
        out.head_scale = family.head_input_scale(src) / family.head_input_scale(dst)
    for i, (stack, old, new) in enumerate(zip(family.stacks, src.stacks, dst.stacks)):
        if explicit is not None:
            if len(explicit) != len(family.stacks):
                raise SurgeryError(f"option layers needs {len(family.stacks)} list(s), one per stack")
            chosen = list(explicit[i])
        else:
            chosen = select_layers(old, new, select)
        # the first occurrence of each source layer is the original, in order; later ones are new
        check_layers(chosen, old, new, stack, identity=True)
        out.layers[stack] = chosen
        out.new_layers[stack] = [p for p, l in enumerate(chosen) if l in chosen[:p]]
    return out


# -- the weights ----------------------------------------------------------------------------------
@dataclass
class MsgInit(Entry):
    """A source tensor placed at its old units' positions in a tensor of the grown shape whose
    other entries are new (see the module docstring)."""

    base: Entry
    axes: tuple[Axis, ...]
    layout: MsgLayout
    name: str
    shape: tuple[int, ...]
    seed: int

    def _roles(self) -> set[Role]:
        return {a.role for a in self.axes}

    def _place(self, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        index = []
        for a, ax in enumerate(self.axes):
            kept = self.layout.kept.get(ax.kind)
            shape = [1] * len(self.axes)
            shape[a] = -1
            if kept is None:
                index.append(torch.arange(t.shape[a]).reshape(shape))
                continue
            pos, src = kept
            if not bool((src == torch.arange(src.numel())).all()):
                t = t.index_select(a, src)
            index.append(pos.reshape(shape))
        out[tuple(index)] = t
        return out

    def weight(self, src):
        t = self.base.weight(src)
        roles = self._roles()
        if roles & {Role.NORM, Role.HEAD_NORM}:
            out = torch.full(self.shape, float(t.mean()) if t.numel() else 1.0)
        elif len(self.shape) >= 2:
            rms = float(torch.linalg.vector_norm(t)) / max(t.numel(), 1) ** 0.5
            out = torch.randn(self.shape, generator=generator(self.seed, "msg", self.name)).mul_(rms)
        else:  # biases and norm shifts
            out = torch.zeros(self.shape)
        out = self._place(t, out)
        if Role.HEAD_NORM in roles and self.layout.head_scale != 1.0:
            out.mul_(self.layout.head_scale)
        return out

    def moment(self, src, key):
        t = self.base.moment(src, key)
        out = self._place(t, torch.zeros(self.shape))
        if Role.HEAD_NORM in self._roles() and self.layout.head_scale != 1.0:
            out.div_(self.layout.head_scale ** {"exp_avg": 1, "exp_avg_sq": 2}[key])
        return out


def plan_msg(family: Family, src: ModelSpec, dst: ModelSpec, op: str, layout: Layout, config: dict, *,
             seed: int = 0, options: dict | None = None) -> GrowthPlan:
    """The weights of `msg` (same signature and result as surgery.ops.growth.plan_growth)."""
    if op != "msg":
        raise SurgeryError(f"plan_msg plans msg, not {op!r}")
    select, explicit, ramp = _options(options)
    lay = msg_layout(family, src, dst, seed, options)
    src_view, dst_view = family.view(src, layout), family.view(dst, layout)
    src_dims, dst_dims = family.dims(src, config), family.dims(dst, config)
    widened: dict[str, Entry] = {}
    for s in src_view:
        read = Read(s.name, s.shape(src_dims))
        if any(a.kind in lay.kept for a in s.axes):
            widened[s.name] = MsgInit(read, s.axes, lay, s.name, s.shape(dst_dims), seed)
        else:
            widened[s.name] = read
    notes: list[str] = []
    entries = deepen(family, widened, src_view, dst_view, lay.layers, False, dst_dims, config, notes)
    new_config = dict(config)
    hf = dst.hf_config()
    new_config.update({k: hf[k] for k in family.dim_keys if k in hf})
    parts = OpParts("msg" if lay.grows_width else None, lay.grows_depth, False, select, explicit)
    r = Ramp.of(ramp, 0, lay.grows_width, lay.grows_depth)
    notes.append(f"msg: exact while the masks are 0; they reach 1 {r.steps} steps after the growth "
                 "(the grown weights alone, without masks, are not function-preserving)")
    return GrowthPlan(family, parts, src, dst, layout, layout, src_view, dst_view, src_dims, dst_dims, None,
                      lay.layers, entries, new_config, notes)
