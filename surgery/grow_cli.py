"""`surgery grow SRC --op OP --to SPEC --out DST [--seed N]`: one surgery on a checkpoint folder."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

from surgery.catalog import COMPRESS_OPS
from surgery.errors import SurgeryError
from surgery.spec import ModelSpec

INT_KEYS = ("layers", "decoder_layers", "d_model", "heads", "kv_heads", "d_ff", "d_kv", "vocab", "max_positions",
            "embedding")
TEXT_KEYS = ("ff", "head", "tie", "share")


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
        elif key == "tie":
            if value not in ("true", "false"):
                raise SurgeryError(f"--to: tie must be true or false, got {value!r}")
            update["head"] = "tied" if value == "true" else "untied"
        elif key in TEXT_KEYS:
            update[key] = value
        else:
            raise SurgeryError(f"--to: unknown key {key!r} (known: {', '.join(INT_KEYS + TEXT_KEYS)})")
    if "heads" in update and "d_kv" not in update and base.d_kv is not None:
        update["d_kv"] = base.d_kv
    _heads_follow_width(update, base)
    try:
        return ModelSpec(**{**base.model_dump(), **update})
    except ValueError as err:
        msg = err.errors()[0]["msg"] if hasattr(err, "errors") else str(err)
        raise SurgeryError(f"--to: {msg.removeprefix('Value error, ')}") from None


def _heads_follow_width(update: dict, base: ModelSpec) -> None:
    """Heads grow as whole heads, so a new d_model means new heads at the source's head size:
    `--to d_model=768` on a 12-head, 64-wide-head model gives heads=12 -> 768/64. Only where the
    head size follows from d_model / heads (BERT, GPT-2, and T5/Llama without an explicit d_kv),
    and never over a heads= the user gave; a d_model that no head count fits is refused naming
    the d_model and heads that would."""
    if "d_kv" in update or base.d_kv is not None:
        return
    d, size = update.get("d_model", base.d_model), base.head_dim
    t5 = " (or give d_kv= to change the head size)" if "d_kv" in base.descriptor.args else ""
    if "heads" in update:
        h = update["heads"]
        if d % h == 0 and d // h != size and d % size == 0:
            raise SurgeryError(f"--to: heads grow as whole heads of size {size} (d_model {base.d_model} / heads "
                               f"{base.heads}); d_model={d} with heads={h} makes them {d // h}: "
                               f"give heads={d // size}{t5}")
        return
    if d == base.d_model:
        return
    if d % size:
        lo, hi = d // size * size, (d // size + 1) * size
        options = ([f"d_model={lo} with heads={lo // size}"] if lo > base.d_model else []) + \
                  [f"d_model={hi} with heads={hi // size}"]
        raise SurgeryError(f"--to: heads grow as whole heads of size {size} (d_model {base.d_model} / heads "
                           f"{base.heads}), and d_model={d} is not a multiple of {size}: "
                           f"use {' or '.join(options)}{t5}")
    update["heads"] = d // size
    if base.kv_heads is not None and "kv_heads" not in update:
        # Grouped-query attention: keep the query heads per kv head, so the kv heads grow with them.
        g = base.group_size
        if update["heads"] % g:
            raise SurgeryError(f"--to: d_model={d} gives heads={update['heads']}, not a multiple of the "
                               f"{g} query heads per kv head: give kv_heads= (a divisor of {update['heads']})")
        update["kv_heads"] = update["heads"] // g


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


def _table(plan):
    from rich.table import Table

    table = Table("tensor group", "source", "grown", "layers kept+new")
    for key, (old, new, kept, added) in _groups(plan).items():
        if old == new and not added:
            continue
        table.add_row(key, "x".join(map(str, old)) if old else "-", "x".join(map(str, new)),
                      f"{kept}+{added}" if added or "*" in key else "")
    return table


def check_stream_options(threads: int | None, dtype: str | None) -> None:
    from surgery.ops import OUT_DTYPES

    if threads is not None and not 1 <= threads <= 256:
        raise SurgeryError(f"--threads must be between 1 and 256, got {threads}")
    if dtype is not None and dtype not in OUT_DTYPES:
        raise SurgeryError(f"--dtype: unknown dtype {dtype!r} (choose one of {', '.join(OUT_DTYPES)})")


def dry_run_command(src: Path, *, op: str, to: str, seed: int = 0, threads: int | None = None,
                    dtype: str | None = None) -> None:
    """Plan a growth from the safetensors headers alone and print the memory it will need."""
    from rich.console import Console

    from surgery.checkpoints import resolve_source
    from surgery.io import load_checkpoint
    from surgery.ops import plan_checkpoint
    from surgery.shapes import human_bytes

    if op.split("(")[0] in COMPRESS_OPS:
        raise SurgeryError(f"--dry-run plans growth ops; {op} builds its model in memory: run it without --dry-run")
    console = Console()
    src = resolve_source(src)
    ckpt = load_checkpoint(src)
    dst = parse_to(to, ckpt.spec)
    cp = plan_checkpoint(src, dst, op, seed=seed, threads=threads, dtype=dtype)
    plan = cp.plan
    _print_plan(console, plan, ckpt.spec, dst, " (dry run, weights not read)")
    console.print(f"weights ({cp.dtype}): read {human_bytes(cp.src_bytes)}, write {human_bytes(cp.out_bytes)}; "
                  f"disk needed at the output: {human_bytes(cp.out_bytes)}")
    console.print(f"memory: about {human_bytes(cp.peak_bytes)} peak resident (streamed on {cp.threads} "
                  f"thread{'s' if cp.threads > 1 else ''}, the pipeline holding at most "
                  f"{'twice ' if cp.threads > 1 else ''}the largest working set, {cp.peak_tensor}'s)")
    console.print(f"the probe (skip with --no-probe) loads both models: about {human_bytes(4 * (ckpt.spec.params + dst.params))} in fp32")
    for note in plan.notes:
        console.print(f"[yellow]note:[/] {note}")


def _print_plan(console, plan, src: ModelSpec, dst: ModelSpec, suffix: str = "") -> None:
    """What a growth does: the specs, parameter counts, per-tensor shapes, and which layers repeat."""
    console.print(f"[bold]{plan.op.text}[/]{suffix}: {src.describe()} -> {dst.describe()}")
    console.print(f"parameters: {src.params:,} -> {dst.params:,}")
    console.print(_table(plan))
    for stack, layers in plan.layers.items():
        if len(layers) != len(set(layers)) or layers != list(range(len(layers))):
            console.print(f"{stack} layers from source: {layers}" + (" (repeats start as identity)" if plan.op.identity else ""))


def _quiet_transformers() -> None:
    """transformers only where a model is loaded (the probe, compression ops): the streamed growth
    itself never imports it (about a second of start-up)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the untied-head notice is expected; we report what matters
    hf_logging.disable_progress_bar()


def grow_command(src: Path, *, op: str, to: str, out: Path, seed: int = 0, probe: bool = True,
                 threads: int | None = None, dtype: str | None = None) -> None:
    from rich.console import Console

    from surgery.checkpoints import resolve_source
    from surgery.io import load_checkpoint
    from surgery.ops import grow_checkpoint

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    console = Console()
    src = resolve_source(src)
    if op.split("(")[0] in COMPRESS_OPS:
        name = op.split("(")[0]
        options = compress_options(op)
        _quiet_transformers()
        return compress_command(src, op=name, to=to, out=out, console=console, probe=probe, options=options)
    ckpt = load_checkpoint(src)
    dst = parse_to(to, ckpt.spec)
    plan = grow_checkpoint(src, dst, op, out, seed=seed, threads=threads, dtype=dtype)

    _print_plan(console, plan, ckpt.spec, dst)
    eps_key = plan.family.eps_key
    if plan.config.get(eps_key) != ckpt.config.get(eps_key, plan.config.get(eps_key)):
        console.print(f"{eps_key}: {ckpt.config.get(eps_key)} -> {plan.config[eps_key]} (lossless growth keeps norm statistics)")
    if probe:
        from surgery.ops.probe import relative_change

        _quiet_transformers()
        small, grown = ckpt.model(), load_checkpoint(out).model()
        change = relative_change(small, grown, ckpt.spec.vocab, seed=0)
        console.print(f"function moved: max relative logit change {change:.2e} on a fixed random batch")
    for note in plan.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"wrote {out}")


def compress_options(op: str) -> dict:
    """`share(attention)`, `share(ffn, init=first)`, `factorize(128)`, `distil(select=last)`: the
    op's arguments, checked against the recipe language's (surgery.catalog). The distillation
    losses' weights are refused: this command builds the student, a recipe trains it."""
    from surgery.catalog import COMPRESS_OPS

    name, paren, rest = op.partition("(")
    if not paren:
        return {}
    if not rest.endswith(")"):
        raise SurgeryError(f"--op {op}: expected {name}(ARG, KEY=VALUE)")
    info = COMPRESS_OPS[name].args
    options: dict = {}
    for part in filter(None, (p.strip() for p in rest[:-1].split(","))):
        key, eq, value = (x.strip() for x in part.partition("="))
        if not eq:  # a bare value names its argument: share(ffn) = share(what=ffn), factorize(128) = rank
            key = "rank" if name == "factorize" and part.isdigit() else next((k for k, a in info.items() if part in a.choices), None)
            value = part
        arg = info.get(key)
        if arg is not None and arg.kind == "float":
            raise SurgeryError(f"--op {op}: {key} is a training loss setting; surgery grow only builds the "
                               f"{'student' if name == 'distil' else 'model'} (write it in a recipe)")
        if arg is not None and arg.kind == "int" and value.isdigit():
            options[key] = int(value)
            continue
        if arg is None or value not in arg.choices:
            choices = "; ".join(f"{k}: {', '.join(a.choices) or a.kind}" for k, a in info.items() if a.kind != "float")
            raise SurgeryError(f"--op {op}: unknown argument {part!r} ({choices})")
        options[key] = value
    return options


def compress_command(src: Path, *, op: str, to: str, out: Path, console, probe: bool = True,
                     options: dict | None = None) -> None:
    """`--op factorize|share|distil`: ALBERT factorized embeddings, cross-layer sharing (all,
    attention or ffn: `share(attention)` or `--to share=attention`), or a DistilBERT student, with
    the parameter change and how far the function moved."""
    import json
    import shutil

    from surgery.checkpoints import TOKENIZER_FILES, carry_files
    from surgery.compress import compress_model, load_model
    from surgery.io import atomic_folder
    from surgery.ops.probe import relative_change

    if not (Path(src) / "config.json").exists():
        raise SurgeryError(f"{src}: no such checkpoint folder (config.json missing)")
    config = json.loads((Path(src) / "config.json").read_text())
    try:
        src_spec = ModelSpec.from_hf_config(config)
    except ValueError as err:
        raise SurgeryError(f"{src}: {err}") from None
    target = src_spec.model_copy(update={"family": "albert"}) if op in ("factorize", "share") else src_spec
    options = dict(options or {})
    if op == "moe":  # moe(experts=E, top_k=k): llama -> mixtral, qwen2 -> qwen2_moe (surgery/moe.py)
        from surgery.moe import MOE_OF, moe_problem

        if src_spec.family not in MOE_OF:
            raise SurgeryError(f"--op moe: {moe_problem(src_spec, src_spec, {})[0]}")
        target = src_spec.model_copy(update={"family": MOE_OF[src_spec.family], "experts": options.pop("experts", 8),
                                             "top_k": options.pop("top_k", 2)})
    try:
        dst = ModelSpec(**{**target.model_dump(), **parse_to(to, target).model_dump(exclude_unset=True)})
    except ValueError as err:
        raise SurgeryError(f"--to: {err}") from None
    kept = ("d_model", "heads", "d_ff", "vocab") + (("layers",) if op != "distil" else ())
    changed = [f"{k} {getattr(src_spec, k)} -> {getattr(dst, k)}" for k in kept if getattr(dst, k) != getattr(src_spec, k)]
    if changed:
        raise SurgeryError(f"--op {op} keeps {', '.join(kept)}; --to changes {', '.join(changed)}")
    if op == "factorize":
        rank = options.pop("rank", None)
        if rank is not None and dst.embedding is not None and dst.embedding != rank:
            raise SurgeryError(f"--op factorize({rank}) but --to embedding={dst.embedding}")
        if rank is not None:
            try:
                dst = ModelSpec(**{**dst.model_dump(), "embedding": rank})
            except ValueError as err:
                raise SurgeryError(f"--op factorize({rank}): {err.errors()[0]['msg'].removeprefix('Value error, ')}") from None
        if dst.embedding is None:
            raise SurgeryError("--op factorize needs the embedding size: factorize(E) or --to embedding=E")
    if op == "share":
        what = options.pop("what", None)
        said = dst.share if dst.share != src_spec.share else None
        if what is not None and said is not None and said != what:
            raise SurgeryError(f"--op share({what}) but --to share={said}")
        dst = dst.model_copy(update={"share": what or said or "all"})
    model = load_model(src)
    small = compress_model(model, src_spec, dst, op, options, seed=options.get("seed", 0))
    with atomic_folder(out) as tmp:
        small.save_pretrained(tmp, safe_serialization=True)
        for name in TOKENIZER_FILES:
            if (Path(src) / name).exists():
                shutil.copy2(Path(src) / name, tmp / name)
        carry_files(Path(src), tmp, dst.d_model)
    console.print(f"[bold]{op}[/]: {src_spec.describe()} -> {dst.describe()}")
    console.print(f"parameters: {model.num_parameters():,} -> {small.num_parameters():,}")
    if probe and op != "distil":  # a student is trained to follow; at birth it is not meant to
        change = relative_change(model, small, src_spec.vocab, seed=0)
        console.print(f"function moved: max relative logit change {change:.2e} on a fixed random batch")
    console.print(f"wrote {out}")
