"""The architecture-neutral view of a checkpoint that every growth op works on.

A checkpoint is a set of *slots*. Each slot has a neutral name (`embed.tok`, `enc.3.attn.q.w`,
`dec.relbias`, `head.norm.w`) and, for every axis of its tensor, a dimension kind (which width the
axis has: d_model, heads * d_kv, d_ff, ...) and a role (how the axis takes part in the function:
does the tensor write those units, read them, or normalise over them). Width growth is then one
generic rule per role; a family adapter only says which transformers name carries which slot.

Neutral names:
  global        embed.tok, embed.pos, embed.type, embed.norm.{w,b}, head.w, head.bias,
                head.transform.{w,b}, head.norm.{w,b}, pooler.{w,b}
  per stack     {stack}.relbias, {stack}.final_norm.w
  per block     {stack}.{i}.{attn,xattn}.{q,k,v,o}.{w,b}, {stack}.{i}.{attn,xattn,ff}.norm.{w,b},
                {stack}.{i}.ff.{wi,wi_0,wi_1,wo}.{w,b}
where stack is `enc` (BERT's only stack, T5's encoder) or `dec`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Kind(str, Enum):
    """What an axis counts. Only MODEL, HEADS (and INNER with it) and FF ever grow in width."""

    VOCAB = "vocab"
    MODEL = "d_model"  # the residual stream
    INNER = "heads*d_kv"  # attention projections; grows by whole heads
    KV_INNER = "kv_heads*d_kv"  # key/value projections under grouped-query attention (llama)
    INNER3 = "3*heads*d_kv"  # fused q|k|v output (GPT-2's c_attn): three INNER blocks side by side
    HEADS = "heads"  # one entry per head (T5's relative-bias columns)
    FF = "d_ff"
    POS = "positions"
    TYPE = "token_types"
    BUCKET = "buckets"


GROWN_KINDS = (Kind.MODEL, Kind.HEADS, Kind.FF)  # KV_INNER / INNER3 follow the head mappings


class Role(str, Enum):
    """How an axis takes part in the function, which fixes how it grows."""

    OUT = "out"  # the tensor produces these units: new units copy their source unit
    IN = "in"  # the tensor reads these units: its weight is split across the copies of a unit
    NORM = "norm"  # a norm's gain over these units
    NORM_BIAS = "norm_bias"  # a LayerNorm's shift
    HEAD_NORM = "head_norm"  # gain of the norm whose output a *tied* output head reads
    HEAD_NORM_BIAS = "head_norm_bias"  # shift of that norm
    KEEP = "keep"  # never grown (vocabulary rows, positions, buckets)


@dataclass(frozen=True)
class Axis:
    kind: Kind
    role: Role

    def __repr__(self) -> str:  # compact in error messages and docs
        return f"{self.kind.value}:{self.role.value}"


def axes(*pairs: tuple[Kind, Role]) -> tuple[Axis, ...]:
    return tuple(Axis(k, r) for k, r in pairs)


@dataclass(frozen=True)
class Slot:
    """One tensor of the neutral view and the transformers name(s) that carry it."""

    name: str
    hf: str  # canonical transformers name, the one written on save
    axes: tuple[Axis, ...]
    aliases: tuple[str, ...] = ()  # other names the same tensor may be stored under (ties)
    stack: str | None = None
    layer: int | None = None

    @property
    def local(self) -> str:
        """The name inside its block (`attn.q.w`), or the full name outside blocks."""
        if self.layer is None:
            return self.name
        return self.name.split(".", 2)[2]

    def shape(self, dims: dict[Kind, int]) -> tuple[int, ...]:
        return tuple(dims[a.kind] for a in self.axes)

    def writes_residual(self) -> bool:
        """True for the tensors that add into the residual stream (zeroed by identity blocks)."""
        return any(a.kind is Kind.MODEL and a.role is Role.OUT for a in self.axes)


def block_name(stack: str, layer: int, local: str) -> str:
    return f"{stack}.{layer}.{local}"


@dataclass
class View:
    """All slots of one model, in a stable order (globals, then stacks block by block)."""

    slots: dict[str, Slot] = field(default_factory=dict)

    def add(self, slot: Slot) -> None:
        if slot.name in self.slots:
            raise ValueError(f"duplicate slot {slot.name}")
        self.slots[slot.name] = slot

    def __iter__(self):
        return iter(self.slots.values())

    def __getitem__(self, name: str) -> Slot:
        return self.slots[name]

    def __contains__(self, name: str) -> bool:
        return name in self.slots

    def by_hf(self) -> dict[str, Slot]:
        """Every transformers name (canonical and aliases) to its slot."""
        out: dict[str, Slot] = {}
        for s in self.slots.values():
            out[s.hf] = s
            for a in s.aliases:
                out[a] = s
        return out

    def block(self, stack: str, layer: int) -> list[Slot]:
        return [s for s in self.slots.values() if s.stack == stack and s.layer == layer]
