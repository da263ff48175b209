"""Growth ops on the neutral view: depth (`d`, `d(identity)`), width (`f`, `a`, `l`) and their
combinations (`da`, `df`, `dl`), in memory (`grow_model`, for a training loop that grows mid-run)
or streaming between checkpoint folders (`grow_checkpoint`, for `surgery grow`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from surgery.errors import SurgeryError
from surgery.families.build import give_own_head, layout_of_model, spec_of_model
from surgery.ops.entries import Zero
from surgery.ops.growth import OPS, GrowthPlan, parse_op, plan_growth
from surgery.ops.optim import grow_state, load_optimizer_state, optimizer_state_by_name
from surgery.spec import ModelSpec

__all__ = ["OPS", "GrownModel", "GrowthPlan", "CheckpointPlan", "grow_model", "grow_checkpoint", "plan_checkpoint",
           "plan_growth", "parse_op",
           "optimizer_state_by_name", "load_optimizer_state"]


class _ModelSource:
    """The small model's tensors and optimizer state, by neutral name."""

    def __init__(self, plan: GrowthPlan, tensors: dict[str, torch.Tensor], state: dict[str, dict] | None = None):
        self.slots = plan.src_view
        self.tensors = tensors
        self.state = state or {}

    def _name(self, neutral: str, have) -> str | None:
        s = self.slots[neutral]
        return next((n for n in (s.hf, *s.aliases) if n in have), None)

    def tensor(self, neutral):
        name = self._name(neutral, self.tensors)
        if name is None:
            raise SurgeryError(f"source has no tensor for {neutral} ({self.slots[neutral].hf})")
        return self.tensors[name]

    def moment(self, neutral, key):
        name = self._name(neutral, self.state)
        return None if name is None else self.state[name].get(key)


@dataclass
class GrownModel:
    """The result of growing a model in memory."""

    model: object  # transformers PreTrainedModel, same class as the input, target dims
    plan: GrowthPlan
    _source: _ModelSource = field(repr=False)

    def grow_optimizer_state(self, state: dict[str, dict]) -> dict[str, dict]:
        """Adam state by parameter name ({"exp_avg", "exp_avg_sq", "step"}) of the small model ->
        the same for every parameter of the grown model (rule: surgery/ops/optim.py)."""
        src = _ModelSource(self.plan, self._source.tensors, state)
        by_hf = self.plan.dst_view.by_hf()
        entries, dtypes = {}, {}
        for name, p in self.model.named_parameters():
            slot = by_hf.get(name)
            if slot is None:
                raise SurgeryError(f"grown parameter {name} is not in the {self.plan.family.name} view")
            entries[name] = self.plan.entries[slot.name]
            dtypes[name] = p.dtype
        return grow_state(entries, src, state, dtypes)


def _new_model(model, config: dict, untied: bool):
    from transformers.initialization import no_init_weights

    cfg = type(model.config).from_dict(config)
    with no_init_weights():
        new = type(model)(cfg)
    if untied:  # where transformers ties the head whatever the config says (T5)
        give_own_head(new, torch.zeros_like(new.get_output_embeddings().weight))
    return new


def _planner(op: str):
    """The op's planner as its registry entry names it (msg's is its own module); plan_growth for
    the plain ops, and for ops grown only inside a run (ligo: in_run), which it refuses with why."""
    from surgery.catalog import OPS as CATALOG
    from surgery.catalog import resolve

    info = CATALOG.get(op)
    return resolve(info.impl) if info is not None and info.in_run is None else plan_growth


def grow_model(model, src: ModelSpec, dst: ModelSpec, op: str, *, seed: int = 0, options: dict | None = None) -> GrownModel:
    """Grow a transformers model (T5ForConditionalGeneration, BertForMaskedLM, BertModel) by `op`."""
    family, layout = layout_of_model(model)
    actual = spec_of_model(model)
    if (actual.family, actual.stacks, actual.d_model, actual.heads, actual.d_ff, actual.head, actual.n_kv_heads) != \
            (src.family, src.stacks, src.d_model, src.heads, src.d_ff, src.head, src.n_kv_heads):
        raise SurgeryError(f"the model is {actual.describe()} (head={actual.head}), not {src.describe()} (head={src.head})")
    config = model.config.to_dict()
    plan = _planner(op)(family, src, dst, op, layout, config, seed=seed, options=options)
    tensors = {k: v.detach() for k, v in model.state_dict().items()}
    source = _ModelSource(plan, tensors)
    new = _new_model(model, plan.config, layout.untied_head)
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    values = {s.hf: plan.entries[s.name].weight(source).to(dtype) for s in plan.dst_view}
    missing, unexpected = new.load_state_dict(values, strict=False)
    aliases = {a for s in plan.dst_view for a in s.aliases}
    missing = [m for m in missing if m not in aliases]
    if missing or unexpected:
        raise SurgeryError(f"grown state does not fit {type(model).__name__}: missing {missing}, unexpected {unexpected}")
    # Re-tie after loading (the untied head was dropped from the tie map, so it stays separate).
    new.tie_weights(recompute_mapping=False)
    new.to(device)
    new.train(model.training)
    return GrownModel(new, plan, source)


@dataclass
class CheckpointPlan:
    """A streaming growth planned from the safetensors headers alone (`surgery grow --dry-run`)."""

    plan: GrowthPlan
    src_bytes: int  # the source's weights as stored
    out_bytes: int  # the output's weights
    peak_bytes: int  # estimated peak resident memory of grow_checkpoint (surgery/ops/memory.py)
    peak_tensor: str  # the output tensor with the largest working set
    dtype: str  # the output's dtype
    threads: int  # workers of the streaming pipeline


OUT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _out_dtype(ckpt, plan: GrowthPlan, dtype: str | torch.dtype | None) -> torch.dtype:
    """The output's dtype: the source's (its token embedding's) unless asked."""
    if dtype is None:
        emb = plan.src_view["embed.tok"].hf
        return ckpt.dtype(emb) if emb in ckpt else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in OUT_DTYPES:
        raise SurgeryError(f"unknown dtype {dtype!r} (choose one of {', '.join(OUT_DTYPES)})")
    return OUT_DTYPES[dtype]


def _source_bytes(ckpt, plan: GrowthPlan) -> dict[str, int]:
    out = {}
    for s in plan.src_view:
        name = next((n for n in (s.hf, *s.aliases) if n in ckpt), None)
        if name is not None:
            out[s.name] = ckpt.tensors[name].nbytes
    return out


def plan_checkpoint(src_dir, dst: ModelSpec, op: str, seed: int = 0, options: dict | None = None, *,
                    threads: int | None = None, dtype: str | None = None) -> CheckpointPlan:
    """Plan growing the checkpoint folder `src_dir` and estimate its memory; reads headers only."""
    from surgery.io import default_threads, load_checkpoint
    from surgery.ops.memory import estimate_peak

    ckpt = load_checkpoint(src_dir)
    plan = plan_growth(ckpt.family, ckpt.spec, dst, op, ckpt.layout, ckpt.config, seed=seed, options=options)
    out_dtype = _out_dtype(ckpt, plan, dtype)
    threads = threads or default_threads()
    elem = torch.empty((), dtype=out_dtype).element_size()
    peak, tensor, out = estimate_peak(plan, _source_bytes(ckpt, plan), elem, threads)
    return CheckpointPlan(plan, sum(t.nbytes for t in ckpt.tensors.values()), out, peak, tensor,
                          str(out_dtype).removeprefix("torch."), threads)


def grow_checkpoint(src_dir, dst: ModelSpec, op: str, out_dir, seed: int = 0, options: dict | None = None, *,
                    shard_bytes: int | None = None, threads: int | None = None,
                    dtype: str | torch.dtype | None = None) -> GrowthPlan:
    """Grow the checkpoint folder `src_dir` into `out_dir`, streamed: each output tensor is made
    from only the source tensors it needs (read when it is made, dropped right after) on
    `threads` workers (default: surgery.io.default_threads()), each writing the tensor it made at
    its place in its shard (surgery/shard_writer.py); memory is bounded by twice the largest
    tensor's working set, not by the model. Shards: `shard_bytes`, default
    surgery.io.shard_bytes_for(the output's size). The bytes written do not depend on `threads`,
    and equal what grow_model makes with the same seed. dtype: the output's (default: the
    source's); the growth arithmetic is fp32 either way."""
    from surgery.io import (
        TensorTask,
        default_threads,
        load_checkpoint,
        save_checkpoint,
        shard_bytes_for,
    )
    from surgery.ops.memory import working_bytes

    ckpt = load_checkpoint(src_dir)
    plan = plan_growth(ckpt.family, ckpt.spec, dst, op, ckpt.layout, ckpt.config, seed=seed, options=options)
    out_dtype = _out_dtype(ckpt, plan, dtype)

    class _CkptSource:
        def tensor(self, neutral):
            s = plan.src_view[neutral]
            name = next((n for n in (s.hf, *s.aliases) if n in ckpt), None)
            if name is None:
                raise SurgeryError(f"{src_dir}: checkpoint has no tensor {s.hf}")
            return ckpt.get(name)

        def read_into(self, neutral, out) -> bool:
            s = plan.src_view[neutral]
            name = next((n for n in (s.hf, *s.aliases) if n in ckpt), None)
            return name is not None and ckpt.read_into(name, out)

        def moment(self, neutral, key):
            return None

    source = _CkptSource()
    known = set(plan.src_view.by_hf())
    passthrough = [n for n in ckpt.names() if any(re.match(p, n) for p in ckpt.family.passthrough)]
    unknown = sorted(set(ckpt.names()) - known - set(passthrough))
    if unknown:
        raise SurgeryError(f"{src_dir}: tensors the {ckpt.family.name} adapter does not know: "
                           f"{', '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''}")
    src_bytes = _source_bytes(ckpt, plan)
    elem = torch.empty((), dtype=out_dtype).element_size()
    tasks, first = [], {}  # id(entry) -> the first tensor made from it
    for s in plan.dst_view:
        e = plan.entries[s.name]
        # Depth growth repeats a layer's entries (stacked copies, identity blocks' q/k/v/ffn-in):
        # the same entry makes the same bytes, so they are copied, not made again.
        tasks.append(TensorTask(s.hf, s.shape(plan.dst_dims), out_dtype, (lambda e=e: e.weight(source)),
                                working_bytes(e, src_bytes, elem), same_as=first.get(id(e)),
                                zeros=type(e) is Zero))
        first.setdefault(id(e), s.hf)
    tasks += [TensorTask(n, ckpt.tensors[n].shape, ckpt.dtype(n), (lambda n=n: ckpt.get(n))) for n in passthrough]
    config = dict(plan.config)
    if "architectures" not in config:
        config["architectures"] = [ckpt.layout.model_class]
    if dtype is not None:
        config["torch_dtype" if "torch_dtype" in config else "dtype"] = str(out_dtype).removeprefix("torch.")
    threads = threads or default_threads()
    shard_bytes = shard_bytes or shard_bytes_for(sum(t.nbytes for t in tasks))
    save_checkpoint(Path(out_dir), tasks, config, shard_bytes=shard_bytes, carry_from=src_dir, threads=threads)
    return plan
