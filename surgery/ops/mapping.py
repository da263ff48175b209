"""Unit mappings: for each unit of a grown dimension, the source unit it starts from.

`src[j]` is the old unit that new unit j copies, or -1 for a padding unit that has no source
(lossless growth of the residual stream at non-integer ratios). Old units keep their place
(`src[j] == j` for j < old), so the first `old` units of a grown tensor are the original ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from surgery.buffers import empty

_SELECT_BLOCK = 1 << 20  # elements of t per block when gathering from a strided t
# Elements per row block when a matrix grows its columns in place: small enough that a block read
# from memory once stays in the core's cache for the gather, the division and the copy.
_CACHE_BLOCK = 1 << 18


def _select(t: torch.Tensor, axis: int, idx: torch.Tensor) -> torch.Tensor:
    """t.index_select(axis, idx) into a reused buffer where one is at hand (surgery/buffers.py).
    From a strided t (the kept block of a tensor grown in place) torch would first copy all of t
    to fresh contiguous memory; gathered in blocks of rows, the copy is one small block at a time."""
    shape = list(t.shape)
    shape[axis] = idx.numel()
    out = empty(shape, t.dtype)
    if t.is_contiguous() or axis == 0 or t.dim() < 2 or not t.numel():
        return torch.index_select(t, axis, idx, out=out)
    rows = max(1, _SELECT_BLOCK // (t.numel() // t.shape[0]))
    for r0 in range(0, t.shape[0], rows):
        n = min(rows, t.shape[0] - r0)
        torch.index_select(t.narrow(0, r0, n).contiguous(), axis, idx, out=out.narrow(0, r0, n))
    return out


@dataclass(frozen=True)
class Mapping:
    old: int
    src: torch.Tensor  # int64 [new]

    @property
    def new(self) -> int:
        return int(self.src.numel())

    @cached_property
    def is_identity(self) -> bool:
        return self.new == self.old and bool((self.src == torch.arange(self.old)).all())

    @cached_property
    def count(self) -> torch.Tensor:
        """How many new units copy each old unit (float, [old])."""
        return torch.bincount(self.src[self.src >= 0], minlength=self.old).to(torch.float32)

    @cached_property
    def pad(self) -> torch.Tensor:
        return self.src < 0

    @cached_property
    def keeps_old(self) -> bool:
        """Old units keep their place (src[j] == j for j < old): the grown tensor starts with the
        source as a block, and only the units past the old width need a gather."""
        return self.new >= self.old and bool((self.src[: self.old] == torch.arange(self.old)).all())

    def gather(self, t: torch.Tensor, axis: int, divisor: torch.Tensor | None = None,
               out: torch.Tensor | None = None) -> torch.Tensor:
        """t grown along `axis` by copying units (new unit j = t's unit src[j]), each divided by
        divisor[j] if given (in the same pass as the copy), into `out` if given (t may then be
        out's own first `old` units: they are grown in place). Padding units are left unset:
        every caller fills them."""
        def along(v: torch.Tensor) -> torch.Tensor:
            shape = [1] * t.ndim
            shape[axis] = -1
            return v.reshape(shape)

        if not self.keeps_old:
            g = _select(t, axis, self.src.clamp(min=0))
            if divisor is not None:
                g.div_(along(divisor))
            return g if out is None else out.copy_(g)
        if out is None:
            shape = list(t.shape)
            shape[axis] = self.new
            out = empty(shape, t.dtype)
        kept = out.narrow(axis, 0, self.old)
        in_place = kept.data_ptr() == t.data_ptr() and kept.stride() == t.stride()
        extra = self.src[self.old:]
        copied = (extra >= 0).nonzero().flatten()
        if in_place and t.dim() == 2 and axis == 1 and out.is_contiguous():
            self._columns_in_place(out, extra, copied, divisor)
            return out
        # The new units first: in place, the kept units are about to change. Straight into out
        # where that slice is one contiguous block (rows; columns would be a strided gather, slower
        # than gathering into a temporary and copying).
        dest = out.narrow(axis, self.old, extra.numel())
        direct = copied.numel() == extra.numel() > 0 and dest.is_contiguous()
        if direct:
            torch.index_select(t, axis, extra, out=dest)
            g = None
        else:
            g = _select(t, axis, extra[copied]) if copied.numel() else None
        if divisor is not None:
            torch.div(t, along(divisor[: self.old]), out=kept)
        elif not in_place:
            kept.copy_(t)
        if direct and divisor is not None:
            dest.div_(along(divisor[self.old:]))
        if g is not None:
            if divisor is not None:
                g.div_(along(divisor[self.old:][copied]))
            if copied.numel() == extra.numel():
                out.narrow(axis, self.old, extra.numel()).copy_(g)
            else:
                out.index_copy_(axis, copied + self.old, g)
        return out

    def _columns_in_place(self, out: torch.Tensor, extra: torch.Tensor, copied: torch.Tensor,
                          divisor: torch.Tensor | None) -> None:
        """gather() along the columns of a matrix whose first `old` columns already hold t, by row
        blocks: each block comes from memory once for its new columns and its division, where
        whole-matrix passes would stream it through memory three times (a reader's columns are
        what every width op grows)."""
        old, cols = self.old, extra[copied]
        every = copied.numel() == extra.numel()
        d_old = divisor[: self.old] if divisor is not None else None
        d_new = divisor[self.old:][copied] if divisor is not None else None
        rows = max(1, _CACHE_BLOCK // out.shape[1])
        for r0 in range(0, out.shape[0], rows):
            block = out.narrow(0, r0, min(rows, out.shape[0] - r0))
            kept = block.narrow(1, 0, old)
            if cols.numel():
                g = torch.index_select(block, 1, cols)  # cols < old: kept columns; block is contiguous
                if d_new is not None:
                    g.div_(d_new)
                if every:
                    block.narrow(1, old, extra.numel()).copy_(g)
                else:
                    block.index_copy_(1, copied + old, g)
            if d_old is not None:
                kept.div_(d_old)

    @cached_property
    def pad_positions(self) -> torch.Tensor:
        """Indices of the padding units (int64, possibly empty)."""
        return self.pad.nonzero().flatten()

    @cached_property
    def shared_positions(self) -> torch.Tensor:
        """Indices of the new units whose source unit has more than one copy: the only units a
        reader's split changes (a unit copied once keeps its weights, factor exactly 1)."""
        idx = self.src.clamp(min=0)
        return ((self.count[idx] > 1) & ~self.pad).nonzero().flatten()

    @cached_property
    def new_units(self) -> torch.Tensor:
        """Units that are not the first copy of their source (or are padding): what AKI fills from
        the block above. For mappings whose old units keep their place: positions >= old."""
        first = torch.zeros(self.new, dtype=torch.bool)
        seen: set[int] = set()
        for j, s in enumerate(self.src.tolist()):
            if s >= 0 and s not in seen:
                seen.add(s)
                first[j] = True
        return ~first

    @property
    def uniform(self) -> bool:
        """Every old unit has the same number of copies and nothing is padding."""
        return not bool(self.pad.any()) and bool((self.count == self.count[0]).all())

    def per_head(self, head_size: int) -> "Mapping":
        """The mapping of the heads*d_kv axis when whole heads follow this head mapping."""
        offs = torch.arange(head_size)
        src = torch.where(self.src[:, None] >= 0, self.src[:, None] * head_size + offs, -1).reshape(-1)
        return Mapping(self.old * head_size, src)


def identity(n: int) -> Mapping:
    return Mapping(n, torch.arange(n))


def copies_then_random(old: int, new: int, gen: torch.Generator) -> Mapping:
    """Net2Net's mapping: whole copies (j -> j mod old) while they fit, then the remainder as
    distinct old units drawn uniformly at random without replacement (seeded), kept in order.

    Integer ratios give uniform copying (exact FPI); others copy some units once more than the rest.
    """
    if new < old:
        raise ValueError(f"cannot shrink {old} -> {new}")
    k, r = divmod(new, old)
    extra = torch.randperm(old, generator=gen)[:r].sort().values
    return Mapping(old, torch.cat([torch.arange(old).repeat(k), extra]))


def copies_then_padding(old: int, new: int) -> Mapping:
    """LEMON's residual-stream mapping: k = new // old whole copies, then new - k*old padding units."""
    k, r = divmod(new, old)
    return Mapping(old, torch.cat([torch.arange(old).repeat(k), torch.full((r,), -1)]))
