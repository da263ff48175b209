"""Width growth (d_model, heads, d_ff) on the neutral view: `f` (Net2Net FPI), `a` (bert2BERT AKI)
and `l` (lossless, symmetry-broken; see surgery/ops/lossless.py for its rule).

Every tensor grows by the roles of its axes (surgery/ops/entries.py: grow_axis):
  OUT        new units copy their source unit (index select); residual padding units: 0 / mean
  IN         index select, then split across the copies of each unit: `f`/`a` divide by the copy
             count (Net2Net), `l` uses random positive parts that sum to one per element
  NORM       gain copied (times sqrt(c) when the residual is padded, see lossless.py)
  HEAD_NORM  gain/shift of the norm feeding a tied head: divided by the copy count (the head reads
             the embedding's copied columns, so each unit would count k times) and multiplied by
             the change of the head's input scaling (T5 tied: sqrt(D/d); 2x FPI => 1/sqrt(2))
One mapping per kind serves the whole model: encoder and decoder share the embedding, so they
share the d_model mapping; q/k/v/o and T5's relative-bias columns follow one head mapping.
"""

from __future__ import annotations

import math

import torch

from surgery.families.base import Family
from surgery.ops.entries import Aki, Entry, Read, Widen, WidthRule, generator
from surgery.ops.mapping import Mapping, copies_then_padding, copies_then_random
from surgery.spec import ModelSpec
from surgery.view import Kind, Role, View


def width_rule(family: Family, src: ModelSpec, dst: ModelSpec, op: str, seed: int) -> WidthRule:
    """The mappings and split rule of width op `op` ('f', 'a' or 'l')."""
    heads, kv = head_mappings(src, dst, seed)
    ff = copies_then_random(src.d_ff, dst.d_ff, generator(seed, "mapping", "d_ff"))
    norm_scale, pad_fill = 1.0, ("mean" if family.norm == "ln" else "zero")
    if op == "l":
        model = copies_then_padding(src.d_model, dst.d_model)
        c = (dst.d_model // src.d_model) * src.d_model / dst.d_model
        norm_scale = math.sqrt(c)
    else:
        model = copies_then_random(src.d_model, dst.d_model, generator(seed, "mapping", "d_model"))
    inner = heads.per_head(src.head_dim)
    return WidthRule(
        maps={Kind.MODEL: model, Kind.HEADS: heads, Kind.INNER: inner, Kind.FF: ff,
              Kind.KV_INNER: kv.per_head(src.head_dim), Kind.INNER3: side_by_side(inner, 3)},
        split="random" if op == "l" else "uniform",
        pad_fill=pad_fill,
        norm_scale=norm_scale,
        head_scale=family.head_input_scale(src) / family.head_input_scale(dst),
        seed=seed,
    )


def head_mappings(src: ModelSpec, dst: ModelSpec, seed: int) -> tuple[Mapping, Mapping]:
    """(query-head mapping, kv-head mapping).

    Without grouped-query attention (kv_heads = heads) both are Net2Net's mapping of the heads.
    With it, query head h reads kv head h // group (group = heads / kv_heads, as transformers'
    repeat_kv lays them out). The kv heads get Net2Net's mapping kv_map (kv_heads -> kv_heads'),
    the slots within a group another one slot_map (group -> group'), and new query head
    h' = j' * group' + s' copies source query head kv_map[j'] * group + slot_map[s']: every new
    query head reads a copy of the kv head its source read, so attention is unchanged, and each
    query head's copy count (what its readers divide by) is the product of the two counts. Old
    heads keep their place only when the group size does not change.
    """
    if src.kv_heads is None and dst.kv_heads is None:
        heads = copies_then_random(src.heads, dst.heads, generator(seed, "mapping", "heads"))
        return heads, heads
    kv_map = copies_then_random(src.n_kv_heads, dst.n_kv_heads, generator(seed, "mapping", "kv_heads"))
    slot_map = copies_then_random(src.group_size, dst.group_size, generator(seed, "mapping", "group"))
    g = src.group_size
    src_q = (kv_map.src[:, None] * g + slot_map.src[None, :]).reshape(-1)
    return Mapping(src.heads, src_q), kv_map


def side_by_side(m: Mapping, parts: int) -> Mapping:
    """The mapping of `parts` blocks laid side by side, each mapped by m (GPT-2's fused q|k|v)."""
    src = torch.cat([torch.where(m.src >= 0, m.src + i * m.old, -1) for i in range(parts)])
    return Mapping(m.old * parts, src)


def eps_scale(src: ModelSpec, dst: ModelSpec, op: str) -> float:
    """Factor on the norms' epsilon: c = k*d/D under `l` (1 at integer ratios), else 1."""
    if op != "l":
        return 1.0
    return (dst.d_model // src.d_model) * src.d_model / dst.d_model


def widen_view(src_view: View, src_dims: dict[Kind, int], dst_dims: dict[Kind, int], rule: WidthRule | None,
               op: str) -> dict[str, Entry]:
    """Entries of every slot of the source view (source depth), grown to the target widths."""
    reads = {s.name: Read(s.name, s.shape(src_dims)) for s in src_view}
    if rule is None:
        return dict(reads)
    out: dict[str, Entry] = {}

    def widened(name: str) -> Widen:
        s = src_view[name]
        return Widen(reads[name], s.axes, rule, name, s.shape(dst_dims))

    for s in src_view:
        w = widened(s.name)
        if op == "a" and s.layer is not None and any(a.role is Role.OUT for a in s.axes):
            above = f"{s.stack}.{s.layer + 1}.{s.local}"
            # The top block has no block above: it uses itself (plain FPI).
            out[s.name] = Aki(w, widened(above), w.shape) if above in src_view else w
        else:
            out[s.name] = w
    return out


def same_width(a: ModelSpec, b: ModelSpec) -> bool:
    return (a.d_model, a.heads, a.d_ff, a.n_kv_heads) == (b.d_model, b.heads, b.d_ff, b.n_kv_heads)


def grows_width(a: ModelSpec, b: ModelSpec) -> bool:
    return not same_width(a, b)


