"""Which growth a user can mean: the one set of rules that `surgery plan` checks at the recipe's
op and that the ops check again on real checkpoints (`surgery grow`, growth mid-run). No torch.

`growth_problem(src, dst, depth, width)` returns the first problem as (message, where), where
`where` says what the message is about: "dst" (the target model's declaration) or "op".
"""

from __future__ import annotations

from typing import Literal

from surgery.spec import ModelSpec

Where = Literal["dst", "op"]


def width_dims(src: ModelSpec, dst: ModelSpec) -> list[tuple[str, int, int]]:
    """(label, before, after) of every width a growth may change."""
    dims = [("d_model", src.d_model, dst.d_model), ("d_ff", src.d_ff, dst.d_ff), ("heads", src.heads, dst.heads)]
    if src.kv_heads is not None or dst.kv_heads is not None:
        dims.append(("kv_heads", src.n_kv_heads, dst.n_kv_heads))
        dims.append(("query heads per kv head", src.group_size, dst.group_size))
    return dims


def same_width(src: ModelSpec, dst: ModelSpec) -> bool:
    return all(a == b for _, a, b in width_dims(src, dst)) and src.head_dim == dst.head_dim


def growth_problem(src: ModelSpec, dst: ModelSpec, depth: bool, width: bool, op: str = "",
                   names: tuple[str, str] = ("the source", "the target")) -> tuple[str, Where] | None:
    """The first reason growth op `op` (changing depth and/or width) cannot turn src into dst;
    `names` are what the models are called in the message."""
    if src.family != dst.family:
        from surgery.moe import MOE_OF

        hint = f"; moe upcycles a {src.family} into a {dst.family}" if MOE_OF.get(src.family) == dst.family else ""
        return f"cannot grow a {src.family} model into a {dst.family} model{hint}", "dst"
    if src.descriptor.no_growth:
        return src.descriptor.no_growth, "op"
    if src.vocab != dst.vocab:
        return f"vocabularies differ ({src.vocab} vs {dst.vocab}); growth keeps the vocabulary", "dst"
    for key in src.descriptor.growth_keeps:
        a, b = getattr(src, key), getattr(dst, key)
        if a != b:
            return f"{key} changes ({a} -> {b}); growth keeps it", "dst"
    labels = ("encoder layers", "decoder layers") if len(src.stacks) == 2 else ("layers",)
    for label, a, b in zip(labels, src.stacks, dst.stacks):
        if b < a:
            return f"{label} would shrink from {a} to {b}; growth ops only grow", "dst"
    dims = width_dims(src, dst)
    for label, a, b in dims:
        if b < a:
            why = " (grouped-query attention grows by whole kv groups)" if "kv" in label else ""
            return f"{label} would shrink from {a} to {b}; growth ops only grow{why}", "dst"
    deeper = src.stacks != dst.stacks
    wider = not same_width(src, dst)
    name = op or ("d" if depth else "") + ("w" if width else "")
    if not deeper and not wider:
        return f"{names[0]} and {names[1]} have the same size, so {name} changes nothing", "op"
    if depth and not width and wider:
        changed = next((f"{k} {a} -> {b}" for k, a, b in dims if a != b), "head size")
        return f"d grows depth only, but the width changes too ({changed}); use da, df or dl to grow both", "op"
    if width and not depth and deeper:
        return (f"{name} grows width only, but the depth changes too ({src.layers_text()} -> {dst.layers_text()}); "
                f"use d{name} to grow both"), "op"
    if depth and width and not deeper:
        return f"{name} grows depth and width, but the depth stays {src.layers_text()}; use {name[1:]}", "op"
    if depth and width and not wider:
        return f"{name} grows depth and width, but the width stays the same; use d", "op"
    if width and src.head_dim != dst.head_dim:
        hint = ""
        if dst.d_model % src.head_dim == 0:
            hint = f"; with d_model={dst.d_model} that is heads={dst.d_model // src.head_dim}"
        if "d_kv" in src.descriptor.args:
            hint += f" ({src.family} may also keep d_kv={src.head_dim} explicitly)"
        return (f"width ops keep the head size and add heads, but the head size changes "
                f"{src.head_dim} -> {dst.head_dim} (d_model/heads){hint}"), "dst"
    return None
