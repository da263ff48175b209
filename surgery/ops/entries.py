"""Lazy output tensors: each grown tensor is an Entry that knows how to make its weights and its
Adam moments from the source, one tensor at a time.

Entries form small trees (a depth copy of a widened read of a source tensor), so growth never
holds more than the tensor being made and its direct inputs: the same entries serve in-memory
growth, streaming checkpoint growth and optimizer-state growth.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from surgery.buffers import empty
from surgery.ops.mapping import Mapping
from surgery.view import Axis, Kind, Role


class Source(Protocol):
    """The small model's tensors and optimizer moments by neutral name."""

    def tensor(self, name: str) -> torch.Tensor: ...

    def moment(self, name: str, key: str) -> torch.Tensor | None: ...


MOMENT_POWER = {"exp_avg": 1, "exp_avg_sq": 2}


def generator(seed: int, *parts: str) -> torch.Generator:
    """A generator keyed by the op's seed and a name (a stable hash, not Python's hash(), which
    varies with PYTHONHASHSEED): its draws depend on the key alone, never on which tensors were
    made before it or on which thread makes it."""
    digest = hashlib.sha256("/".join((str(seed),) + parts).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


# A random split is drawn block by block, each block from its own generator keyed by (seed,
# tensor, axis, block): the bytes depend on the block size, which is a constant, so they are the
# same whatever the thread count or the order of production, and a block's temporaries stay small.
BLOCK_ELEMS = 1 << 20


class Entry:
    shape: tuple[int, ...]

    def weight(self, src: Source) -> torch.Tensor:
        raise NotImplementedError

    def moment(self, src: Source, key: str) -> torch.Tensor:
        """The Adam moment `key` of this tensor after growth; zeros where the weight is new."""
        raise NotImplementedError

    @property
    def fresh(self) -> bool:
        """True when nothing of this tensor comes from a trained source tensor."""
        return False


@dataclass
class Read(Entry):
    name: str
    shape: tuple[int, ...]

    # Growth computes on the CPU in fp32 (mappings and generators live there); the caller moves
    # the results to the model's device and dtype.
    def weight(self, src):
        return src.tensor(self.name).to("cpu", torch.float32)

    def moment(self, src, key):
        m = src.moment(self.name, key)
        return torch.zeros(self.shape) if m is None else m.to("cpu", torch.float32)


@dataclass
class Zero(Entry):
    shape: tuple[int, ...]

    def weight(self, src):
        return torch.zeros(self.shape)

    def moment(self, src, key):
        return torch.zeros(self.shape)

    @property
    def fresh(self):
        return True


@dataclass
class Built(Entry):
    """A tensor constructed from other entries' weights (identity blocks); its moments start at 0."""

    shape: tuple[int, ...]
    fn: Callable[..., torch.Tensor]
    deps: tuple[Entry, ...] = ()

    def weight(self, src):
        return self.fn(*(d.weight(src) for d in self.deps)).to(torch.float32)

    def moment(self, src, key):
        return torch.zeros(self.shape)

    @property
    def fresh(self):
        return True


@dataclass(frozen=True)
class WidthRule:
    """Everything a width op decides once for the whole model."""

    maps: dict[Kind, Mapping]  # MODEL, HEADS, INNER, FF (identity where not grown)
    split: str  # "uniform" (Net2Net: divide by copy count) or "random" (per-element, sums to 1)
    pad_fill: str  # residual padding units: "zero" (RMSNorm) or "mean" (LayerNorm)
    norm_scale: float  # sqrt(c): gain factor of norms over d_model (c = k*old/new, 1 without padding)
    head_scale: float  # ratio of the head's input scaling, small / grown (T5 tied: sqrt(D/d))
    seed: int


@dataclass
class Widen(Entry):
    """A source tensor grown along each tagged axis by the rule of that axis' role."""

    base: Entry
    axes: tuple[Axis, ...]
    rule: WidthRule
    name: str
    shape: tuple[int, ...]

    def _axes_in_order(self):
        # IN last: its random split is drawn on the otherwise fully grown tensor, so the split
        # differs along every other axis (more symmetry broken per unit).
        return sorted(range(len(self.axes)), key=lambda a: self.axes[a].role is Role.IN)

    def _read_in_place(self, src, grown: list[int]):
        """(final, its block of kept units holding the source tensor), the source read straight
        into that block (a checkpoint's bytes land where they stay: no buffer, no copy), when
        every grown axis keeps its old units in place and grows by copying; else None."""
        read_into = getattr(src, "read_into", None)
        if read_into is None or not isinstance(self.base, Read) or not grown or len(self.shape) != 2:
            return None
        maps = [self.rule.maps[self.axes[a].kind] for a in grown]
        if not all(self.axes[a].role in (Role.OUT, Role.IN) and m.keeps_old for a, m in zip(grown, maps)):
            return None
        rule = self.rule
        for a, m in zip(grown, maps):
            # Padding filled from the mean over the source's rows: a reduction down the strided
            # block would add in another order than over a contiguous tensor, and the bytes must
            # not depend on where the source was read to. (`l`'s RMS sums row by row: each row is
            # contiguous in both.)
            if self.axes[a].role is Role.OUT and rule.pad_fill == "mean" and m.pad_positions.numel():
                return None
        final = empty(self.shape, torch.float32)
        kept = final
        for a, m in zip(grown, maps):
            kept = kept.narrow(a, 0, m.old)
        return (final, kept) if read_into(self.base.name, kept) else None

    def weight(self, src):
        grown = [a for a in self._axes_in_order()
                 if (m := self.rule.maps.get(self.axes[a].kind)) is not None and not m.is_identity]
        direct = self._read_in_place(src, grown)
        final, t = direct if direct is not None else (None, self.base.weight(src))
        if direct is not None and len(grown) == 1:
            # The kept units already hold the source: the growth fills the rest in place.
            a = grown[0]
            return grow_axis(t, a, self.axes[a].role, self.rule.maps[self.axes[a].kind], self.rule, self.name,
                             out=final)
        if len(grown) == 2 and all(self.axes[a].role in (Role.OUT, Role.IN) for a in grown) \
                and self.rule.maps[self.axes[grown[1]].kind].keeps_old:
            # A matrix grown along both axes: the first growth is written straight into the
            # second one's kept units, which then grows in place - no intermediate tensor.
            (a1, a2), rule = grown, self.rule
            m1, m2 = rule.maps[self.axes[a1].kind], rule.maps[self.axes[a2].kind]
            if final is None:
                final = empty(self.shape, t.dtype)
            region = final.narrow(a2, 0, m2.old)
            made = grow_axis(t, a1, self.axes[a1].role, m1, rule, self.name, out=region)
            if made is not region:
                region.copy_(made)
            del t, made
            return grow_axis(region, a2, self.axes[a2].role, m2, rule, self.name, out=final)
        for a in grown:
            t = grow_axis(t, a, self.axes[a].role, self.rule.maps[self.axes[a].kind], self.rule, self.name)
        return t

    def moment(self, src, key):
        t = self.base.moment(src, key)
        for a in self._axes_in_order():
            m = self.rule.maps.get(self.axes[a].kind)
            if m is not None and not m.is_identity:
                t = grow_moment_axis(t, a, self.axes[a].role, m, self.rule, MOMENT_POWER[key])
        return t


def _along(v: torch.Tensor, axis: int, ndim: int) -> torch.Tensor:
    """Reshape a per-unit vector to broadcast along `axis` of an ndim tensor."""
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


def _fill_pad(t: torch.Tensor, axis: int, m: Mapping, value: torch.Tensor | float) -> torch.Tensor:
    """Set the padding units of a freshly made t (in place) to value (a scalar, or a tensor that
    broadcasts along `axis`)."""
    pos = m.pad_positions
    if not pos.numel():
        return t
    if isinstance(value, torch.Tensor) and value.numel() > 1:
        shape = list(t.shape)
        shape[axis] = pos.numel()
        return t.index_copy_(axis, pos, value.to(t.dtype).expand(shape).contiguous())
    return t.index_fill_(axis, pos, float(value))


def grow_axis(t, axis, role, m: Mapping, rule: WidthRule, name: str = "", out=None) -> torch.Tensor:
    """t grown along `axis` by the rule of `role` (arithmetic in fp32, t's dtype). out: where to
    put an OUT or IN result (see Mapping.gather)."""
    idx = m.src.clamp(min=0)
    per_copy = m.count[idx]  # copies of the source unit of each new unit
    if role is Role.IN and rule.split != "random":
        # Net2Net's reader split, divided while copying (one pass); no division where c = 1.
        g = m.gather(t, axis, None if bool((per_copy == 1).all()) else per_copy, out=out)
        return _fill_pad(g, axis, m, 0.0)
    g = m.gather(t, axis, out=out if role in (Role.OUT, Role.IN) else None)  # padding unset: filled below
    if role is Role.OUT:
        pad = t.mean(dim=axis, keepdim=True) if rule.pad_fill == "mean" else 0.0
        return _fill_pad(g, axis, m, pad)
    if role is Role.IN:
        return _random_split(t, g, axis, m, rule, name)
    if role is Role.NORM:
        return _fill_pad(g.mul_(rule.norm_scale), axis, m, t.mean() * rule.norm_scale)
    if role is Role.NORM_BIAS:
        return _fill_pad(g, axis, m, t.mean())
    if role is Role.HEAD_NORM:
        return _fill_pad(g * (rule.norm_scale * rule.head_scale) / per_copy, axis, m, 0.0)
    if role is Role.HEAD_NORM_BIAS:
        return _fill_pad(g / per_copy, axis, m, 0.0)
    raise ValueError(f"axis role {role} does not grow")


def split_blocks(shape: tuple[int, ...], axis: int) -> tuple[int | None, int]:
    """(dimension the blocks run along, its length per block) of a random split along `axis`.

    Blocks cut a dimension other than the split axis, so each block holds every copy of a unit
    and its parts can be normalised inside the block."""
    dims = [d for d in range(len(shape)) if d != axis]
    if not dims:
        return None, 1
    bd = dims[0]
    per_row = 1
    for d, n in enumerate(shape):
        if d != bd:
            per_row *= n
    return bd, max(1, BLOCK_ELEMS // max(per_row, 1))


def _random_split(t, g, axis, m: Mapping, rule: WidthRule, name: str) -> torch.Tensor:
    """`l`'s reader split, in place on g = t's copies along `axis`: every copy of a unit copied c
    times gets a random positive part (0.5 + U[0, 1), normalised to sum 1 over the copies, per
    element); units copied once keep factor 1 exactly, so they draw nothing. Padding units: under
    RMSNorm they carry 0, so weights reading them are free - drawn N(0, rms(t)) so they learn;
    under LayerNorm they carry a constant - read nothing (0).

    Drawn in blocks along another dimension (split_blocks), block b from
    generator(seed, name, axis, b): uniform parts first, then the padding's normals."""
    shared = m.shared_positions
    pads = m.pad_positions
    draw_pad = rule.pad_fill == "zero" and pads.numel() > 0
    if pads.numel() and not draw_pad:
        g.index_fill_(axis, pads, 0.0)
    if not shared.numel() and not draw_pad:
        return g
    src_of_shared = m.src[shared]
    p0 = int(pads[0]) if pads.numel() else 0
    pads_in_a_row = bool(pads.numel()) and bool((pads == torch.arange(p0, p0 + pads.numel())).all())
    # The tensor's scale: its root mean square (one pass; the std's two passes cost as much as
    # the rest of the split). Row by row first: each row is contiguous whether or not t is a block
    # of a larger tensor, so the sum runs vectorised and in the same order either way.
    scale = (float(torch.linalg.vector_norm(torch.linalg.vector_norm(t, dim=-1)))
             / max(t.numel(), 1) ** 0.5 if draw_pad and t.numel() else 0.0)
    bd, step = split_blocks(tuple(g.shape), axis)
    rows = g.shape[bd] if bd is not None else 1
    for b, r0 in enumerate(range(0, rows, step)):
        gen = generator(rule.seed, name, str(axis), str(b))
        gb = g if bd is None else g.narrow(bd, r0, min(step, rows - r0))
        if shared.numel():
            shape = list(gb.shape)
            shape[axis] = shared.numel()
            w = torch.rand(shape, generator=gen).add_(0.5)
            shape[axis] = m.old
            sums = torch.zeros(shape).index_add_(axis, src_of_shared, w)
            w.div_(sums.index_select(axis, src_of_shared))
            gb.index_copy_(axis, shared, gb.index_select(axis, shared).mul_(w))
            del w, sums
        if draw_pad:
            shape = list(gb.shape)
            shape[axis] = pads.numel()
            drawn = torch.randn(shape, generator=gen).mul_(scale)
            if pads_in_a_row:  # LEMON's padding: the last units, a plain strided copy
                gb.narrow(axis, p0, pads.numel()).copy_(drawn)
            else:
                gb.index_copy_(axis, pads, drawn)
    return g


def moment_divisor(role: Role, per_copy: torch.Tensor, rule: WidthRule) -> torch.Tensor | float:
    """s = sum of the weight factors over all copies of a source entry.

    If the grown model computes the small model's function and copies are symmetric, the grown
    gradient of every copy is G / s (chain rule: the copies' gradients, weighted by their factors,
    sum to G). Mapping exp_avg by 1/s and exp_avg_sq by 1/s^2 is then exactly the state the grown
    model would hold had it been trained all along.
    """
    if role in (Role.OUT, Role.NORM_BIAS):
        return per_copy
    if role in (Role.IN, Role.HEAD_NORM_BIAS):
        return 1.0  # reader splits sum to one over the copies
    if role is Role.NORM:
        return per_copy * rule.norm_scale
    if role is Role.HEAD_NORM:
        return rule.norm_scale * rule.head_scale
    raise ValueError(f"axis role {role} does not grow")


def grow_moment_axis(t, axis, role, m: Mapping, rule: WidthRule, power: int) -> torch.Tensor:
    idx = m.src.clamp(min=0)
    g = t.index_select(axis, idx)
    s = moment_divisor(role, m.count[idx], rule)
    if isinstance(s, torch.Tensor):
        g = g / _along(s, axis, g.ndim) ** power
    else:
        g = g / s**power
    return _fill_pad(g, axis, m, 0.0)


@dataclass
class Aki(Entry):
    """bert2BERT AKI: units a widened block tensor produces beyond the old width come from the
    same tensor of the block above (also widened); old units keep their own values."""

    own: Widen
    upper: Widen
    shape: tuple[int, ...]

    def _mask(self) -> torch.Tensor:
        mask = torch.zeros(self.shape, dtype=torch.bool)
        for a, ax in enumerate(self.own.axes):
            m = self.own.rule.maps.get(ax.kind)
            if ax.role is Role.OUT and m is not None and not m.is_identity:
                mask |= _along(m.new_units, a, len(self.shape))
        return mask

    def weight(self, src):
        return torch.where(self._mask(), self.upper.weight(src), self.own.weight(src))

    def moment(self, src, key):
        return torch.where(self._mask(), self.upper.moment(src, key), self.own.moment(src, key))
