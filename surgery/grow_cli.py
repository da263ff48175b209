"""`surgery grow SRC --op OP --to SPEC --out DST [--seed N]`: one surgery on a checkpoint folder."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

from surgery.errors import SurgeryError
from surgery.spec import ModelSpec

INT_KEYS = ("layers", "decoder_layers", "d_model", "heads", "d_ff", "d_kv", "vocab", "max_positions")
TEXT_KEYS = ("ff", "head")


def parse_to(text: str, base: ModelSpec) -> ModelSpec:
    """`layers=12+12,d_model=768,heads=12,d_ff=3072` over the source spec (unset keys kept)."""
    update: dict = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not value:
            raise SurgeryError(f"--to: expected KEY=VALUE, got {part!r}")
        if key == "family":
            raise SurgeryError("--to: growth keeps the family (a checkpoint's family comes from its config.json)")
        if key == "layers" and "+" in value:
            enc, _, dec = value.partition("+")
            update["layers"], update["decoder_layers"] = _int(key, enc), _int(key, dec)
        elif key in INT_KEYS:
            update[key] = _int(key, value)
        elif key in TEXT_KEYS:
            update[key] = value
        else:
            raise SurgeryError(f"--to: unknown key {key!r} (known: {', '.join(INT_KEYS + TEXT_KEYS)})")
    if "heads" in update and "d_kv" not in update and base.d_kv is not None:
        update["d_kv"] = base.d_kv
    try:
        return ModelSpec(**{**base.model_dump(), **update})
    except ValueError as err:
        msg = err.errors()[0]["msg"] if hasattr(err, "errors") else str(err)
        raise SurgeryError(f"--to: {msg.removeprefix('Value error, ')}") from None


def _int(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise SurgeryError(f"--to: {key} must be an integer, got {value!r}") from None


def _groups(plan) -> "OrderedDict[str, tuple]":
    """Shape changes per tensor group: block tensors summed over their layers."""
    groups: OrderedDict[str, list] = OrderedDict()
    for s in plan.dst_view:
        key = f"{s.stack}.*.{s.local}" if s.layer is not None else s.name
        old = plan.src_view[s.name].shape(plan.src_dims) if s.name in plan.src_view else None
        if old is None and s.layer is not None:
            old = plan.src_view[f"{s.stack}.0.{s.local}"].shape(plan.src_dims)
        g = groups.setdefault(key, [old, s.shape(plan.dst_dims), 0, 0])
        g[2 if s.name in plan.src_view else 3] += 1
    return groups


def grow_command(src: Path, *, op: str, to: str, out: Path, seed: int = 0) -> None:
    from rich.console import Console
    from rich.table import Table

    from surgery.io import load_checkpoint
    from surgery.ops import grow_checkpoint
    from surgery.ops.probe import relative_change

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the untied-head notice is expected; we report what matters
    hf_logging.disable_progress_bar()
    console = Console()
    ckpt = load_checkpoint(src)
    dst = parse_to(to, ckpt.spec)
    plan = grow_checkpoint(src, dst, op, out, seed=seed)

    console.print(f"[bold]{plan.op.text}[/]: {ckpt.spec.describe()} -> {dst.describe()}")
    console.print(f"parameters: {ckpt.spec.params:,} -> {dst.params:,}")
    table = Table("tensor group", "source", "grown", "layers kept+new")
    for key, (old, new, kept, added) in _groups(plan).items():
        if old == new and not added:
            continue
        table.add_row(key, "x".join(map(str, old)) if old else "-", "x".join(map(str, new)),
                      f"{kept}+{added}" if added or "*" in key else "")
    console.print(table)
    for stack, layers in plan.layers.items():
        if len(layers) != len(set(layers)) or layers != list(range(len(layers))):
            console.print(f"{stack} layers from source: {layers}" + (" (repeats start as identity)" if plan.op.identity else ""))
    eps_key = plan.family.eps_key
    if plan.config.get(eps_key) != ckpt.config.get(eps_key, plan.config.get(eps_key)):
        console.print(f"{eps_key}: {ckpt.config.get(eps_key)} -> {plan.config[eps_key]} (lossless growth keeps norm statistics)")
    small, grown = ckpt.model(), load_checkpoint(out).model()
    change = relative_change(small, grown, ckpt.spec.vocab, seed=0)
    console.print(f"function moved: max relative logit change {change:.2e} on a fixed random batch")
    for note in plan.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"wrote {out}")
