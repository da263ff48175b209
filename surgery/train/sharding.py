"""Sharded training (`parallel=fsdp`): FSDP2 (`torch.distributed.fsdp.fully_shard`) over every
process, each transformer block its own unit, then the root (embeddings, head, final norms).

Every parameter and its AdamW moments live as DTensor shards (dim 0 split over the ranks); the
loop drives them as it drives DDP, except where a whole tensor is needed:

- **growth** (`grow`): the grown model is built on the meta device, sharded, then filled one
  tensor at a time. Each output tensor's Entry (surgery/ops/entries.py) reads the source tensors
  it needs through `full_tensor()` (an all-gather of that one tensor), makes the full grown tensor,
  and the rank keeps only its rows; the Adam moments follow the same entry. The peak on a rank is
  its shards of both models and their moments, plus one output tensor's working set (its full
  value and the full source tensors it reads). The whole model is never gathered.
- **stage folders and checkpoints** are ordinary from_pretrained folders (and the same
  optimizer.safetensors as a DDP run): tensor by tensor, every rank takes part in that tensor's
  all-gather and the first rank writes it into a safetensors file laid out in advance
  (surgery.io.write_tensors), so it holds one full tensor at a time. A checkpoint written by
  FSDP resumes under DDP, one process or FSDP with any process count.
- **resume** builds the model on the meta device, shards it, and each rank reads only its rows
  of each tensor (and of each AdamW moment) from the checkpoint's files.

Gradient clipping sums the squared local shards and all-reduces the sum (`clip_grad_norm_`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from surgery.errors import SurgeryError

PARALLEL = ("ddp", "fsdp")


@dataclass(frozen=True)
class ShardInfo:
    """What growth needs to know of a sharded model, read before sharding (the class FSDP2
    subclasses, the family and layout its tensor names follow)."""

    cls: type
    family: object
    layout: object


def _dtensor():
    from torch.distributed.tensor import DTensor

    return DTensor


def is_sharded(model) -> bool:
    return getattr(model, "_surgery_shard", None) is not None


def resharded(model):
    """The model with every FSDP unit back to its shards (its parameters the DTensors the
    optimizer holds)."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()
    return model


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole value of a (possibly sharded) tensor: an all-gather every rank takes part in."""
    return t.full_tensor() if isinstance(t, _dtensor()) else t


def _mesh(device: torch.device):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (torch.distributed.get_world_size(),))


def block_modules(model, family, layout, spec) -> list[str]:
    """The module path of every transformer block: the longest module prefix shared by the
    tensor names of a (stack, layer) of the family's view (a container's parent)."""
    by_block: dict[tuple, list[list[str]]] = {}
    for slot in family.view(spec, layout):
        if slot.layer is not None:
            by_block.setdefault((slot.stack, slot.layer), []).append(slot.hf.split(".")[:-1])
    names = []
    for parts in by_block.values():
        prefix = parts[0]
        for p in parts[1:]:
            n = 0
            while n < min(len(prefix), len(p)) and prefix[n] == p[n]:
                n += 1
            prefix = prefix[:n]
        # up to a module with a forward of its own (T5's block.i.layer is a ModuleList)
        while prefix and isinstance(model.get_submodule(".".join(prefix)), (torch.nn.ModuleList, torch.nn.ModuleDict)):
            prefix = prefix[:-1]
        if prefix:
            names.append(".".join(prefix))
    return names


def shard(model, device: torch.device, info: ShardInfo | None = None, spec=None):
    """fully_shard each block, then the root. The model's parameters become DTensor shards."""
    from torch.distributed.fsdp import fully_shard

    from surgery.families.build import layout_of_model, spec_of_model

    if is_sharded(model):
        return model
    if info is None:
        family, layout = layout_of_model(model)
        info, spec = ShardInfo(type(model), family, layout), spec_of_model(model)
    mesh = _mesh(device)
    for name in block_modules(model, info.family, info.layout, spec):
        fully_shard(model.get_submodule(name), mesh=mesh)
    # The root too is resharded after its forward, so between steps (validation, growth,
    # checkpoints) every parameter is its DTensor shard, the optimizer's key.
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    model._surgery_shard = info
    return model


def _local_of(value: torch.Tensor, like) -> torch.Tensor:
    """This rank's rows of a full tensor, as `like` (a DTensor parameter) splits it: a copy."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(like.dtype), like.device_mesh, like.placements, src_data_rank=None).to_local().clone()


def _as_shard(value: torch.Tensor, like):
    """A full tensor as a DTensor sharded like the parameter `like` (rows of this rank only)."""
    DTensor = _dtensor()
    return DTensor.from_local(_local_of(value, like).to(like.device), like.device_mesh, like.placements,
                              run_check=False, shape=like.shape, stride=like.stride())


# -- growth -----------------------------------------------------------------------------------

class _ShardedSource:
    """A sharded model's tensors and moments by neutral name, each gathered when an Entry reads it
    (and dropped when that output tensor is made)."""

    def __init__(self, plan, params: dict, state: dict | None):
        self.slots, self.params, self.state = plan.src_view, params, state or {}

    def _name(self, neutral, have):
        s = self.slots[neutral]
        return next((n for n in (s.hf, *s.aliases) if n in have), None)

    def tensor(self, neutral):
        name = self._name(neutral, self.params)
        if name is None:
            raise SurgeryError(f"source has no tensor for {neutral} ({self.slots[neutral].hf})")
        return full(self.params[name].detach())

    def moment(self, neutral, key):
        name = self._name(neutral, self.state)
        m = None if name is None else self.state[name].get(key)
        return None if m is None else full(m)


def _meta_model(info: ShardInfo, config: dict):
    """The grown model's modules with parameters on the meta device (no memory); buffers are real."""
    from accelerate import init_empty_weights
    from transformers.initialization import no_init_weights

    from surgery.families.build import give_own_head

    cfg = info.cls.config_class.from_dict(config)
    with init_empty_weights(include_buffers=False), no_init_weights():
        new = info.cls(cfg)
    if info.layout.untied_head:
        with init_empty_weights(include_buffers=False):
            give_own_head(new, torch.empty_like(new.get_output_embeddings().weight))
    new.tie_weights(recompute_mapping=False)  # as grow_model does: ties before sharding, so they hold
    return new


def grow(model, src_spec, dst_spec, op: str, seed: int, options: dict | None, opt_state: dict | None,
         device: torch.device):
    """Grow a sharded model (and its AdamW state by name, DTensor moments) without gathering it
    whole: (the grown model, sharded; its AdamW state by name, or None)."""
    from surgery.ops.growth import plan_growth
    from surgery.ops.optim import grow_state

    info: ShardInfo = resharded(model)._surgery_shard
    plan = plan_growth(info.family, src_spec, dst_spec, op, info.layout, model.config.to_dict(), seed=seed,
                       options=options)
    params = dict(model.named_parameters(remove_duplicate=False))
    source = _ShardedSource(plan, params, opt_state)
    new = _meta_model(info, plan.config)
    buffers = {n: b.clone() for n, b in new.named_buffers()}
    shard(new, device, ShardInfo(info.cls, info.family, plan.dst_layout), dst_spec)
    new.to_empty(device=device)
    with torch.no_grad():
        for n, b in buffers.items():  # to_empty left them uninitialised
            new.get_buffer(n).copy_(b)
    by_hf = plan.dst_view.by_hf()
    dtype = next(model.parameters()).dtype
    step = None
    if opt_state:
        steps = [v["step"] for v in opt_state.values() if isinstance(v, dict) and "step" in v]
        step = max(steps, key=lambda s: float(s)) if steps else torch.tensor(0.0)
    grown: dict[str, dict] = {}
    with torch.no_grad():
        for name, p in new.named_parameters():  # the same order on every rank: the gathers pair up
            slot = by_hf.get(name)
            if slot is None:
                raise SurgeryError(f"grown parameter {name} is not in the {info.family.name} view")
            entry = plan.entries[slot.name]
            value = entry.weight(source)
            p.to_local().copy_(_local_of(value.to(dtype), p))
            del value
            if opt_state:
                one = grow_state({name: entry}, source, {"": {"step": step}}, {name: p.dtype})[name]
                grown[name] = {"exp_avg": _as_shard(one["exp_avg"], p), "exp_avg_sq": _as_shard(one["exp_avg_sq"], p),
                               "step": one["step"]}
                del one
    new.train(model.training)
    return new, (grown if opt_state else None)


def load_optimizer_state(optimizer, model, state: dict[str, dict]) -> None:
    """Put AdamW state by name (full tensors from a checkpoint, or DTensor shards from growth)
    into an optimizer over a sharded model."""
    DTensor = _dtensor()
    for name, p in model.named_parameters():
        if name in state:
            optimizer.state[p] = {k: (v.clone() if k == "step" or isinstance(v, DTensor) else _as_shard(v, p))
                                  for k, v in state[name].items()}


# -- reading a checkpoint's rows --------------------------------------------------------------

def _my_rows(n: int, like) -> tuple[int, int]:
    """The rows [start, stop) of an n-row tensor this rank holds, as FSDP2 splits dim 0 (torch.chunk)."""
    world, rank = like.device_mesh.size(), like.device_mesh.get_local_rank()
    chunk = -(-n // world)
    start = min(n, rank * chunk)
    return start, min(n, start + chunk)


def _read_rows(info, like) -> torch.Tensor:
    """This rank's rows of a stored tensor (TensorInfo), read from the file alone."""
    from surgery.io import _DTYPES

    dtype = _DTYPES[info.dtype]
    if not info.shape:
        (start, stop), row_elems = (0, 1), 1
    else:
        start, stop = _my_rows(info.shape[0], like)
        row_elems = 1
        for d in info.shape[1:]:
            row_elems *= d
    elem = torch.empty((), dtype=dtype).element_size()
    nbytes = (stop - start) * row_elems * elem
    buf = torch.empty(nbytes, dtype=torch.uint8)
    if nbytes:
        with open(info.file, "rb", buffering=0) as f:
            f.seek(info.start + start * row_elems * elem)
            if f.readinto(memoryview(buf.numpy())) != nbytes:
                raise SurgeryError(f"{info.file}: truncated while reading {info.name}")
    out = buf.view(dtype)
    return out.reshape(()) if not info.shape else out.reshape((stop - start, *info.shape[1:]))


def _rows_as_shard(info, like):
    local = _read_rows(info, like).to(like.dtype)
    if tuple(local.shape) != tuple(like.to_local().shape):
        raise SurgeryError(f"{info.name}: rows {tuple(local.shape)} do not fit the shard {tuple(like.to_local().shape)}")
    return _dtensor().from_local(local.to(like.device), like.device_mesh, like.placements, run_check=False,
                                 shape=like.shape, stride=like.stride())


def can_load(folder: Path) -> bool:
    import json

    from surgery.families import FAMILIES

    cfg = json.loads((Path(folder) / "config.json").read_text())
    family = FAMILIES.get(cfg.get("model_type"))
    return family is not None and family.has_view


def load_model(folder: Path, device: torch.device):
    """A from_pretrained folder as a sharded model, each rank reading only its rows of each tensor
    (a meta model, sharded, then filled from the files)."""
    import transformers

    from surgery.io import load_checkpoint

    ck = load_checkpoint(folder)
    info = ShardInfo(getattr(transformers, ck.layout.model_class), ck.family, ck.layout)
    new = _meta_model(info, ck.config)
    buffers = {n: b.clone() for n, b in new.named_buffers()}
    shard(new, device, info, ck.spec)
    new.to_empty(device=device)
    by_hf = ck.family.view(ck.spec, ck.layout).by_hf()
    with torch.no_grad():
        for n, b in buffers.items():
            new.get_buffer(n).copy_(b)
        for name, p in new.named_parameters():
            slot = by_hf.get(name)
            names = (slot.hf, *slot.aliases) if slot is not None else (name,)
            stored = next((x for x in (name, *names) if x in ck), None)
            if stored is None:
                raise SurgeryError(f"{folder}: no tensor for {name}")
            p.to_local().copy_(_read_rows(ck.tensors[stored], p).to(p.dtype))
    return new


def read_optimizer_rows(path: Path, model) -> dict[str, dict]:
    """A checkpoint's optimizer.safetensors (AdamW state by parameter name) as this rank's shards."""
    from surgery.headers import read_headers

    if not Path(path).exists():
        return {}
    tensors = read_headers([Path(path)])
    out: dict[str, dict] = {}
    for name, p in model.named_parameters():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            info = tensors.get(f"{name}::{key}")
            if info is None:
                continue
            if key == "step" or not info.shape:
                out.setdefault(name, {})[key] = _read_rows(info, p).clone()
            else:
                out.setdefault(name, {})[key] = _rows_as_shard(info, p)
    return out


# -- training ---------------------------------------------------------------------------------

def clip_grad_norm_(params, max_norm: float) -> torch.Tensor:
    """Scale the gradients so their global norm is at most max_norm; the norm before (a plain
    tensor): the squares of the local shards summed, then all-reduced (non-DTensor gradients are
    the same on every rank and are counted once)."""
    DTensor = _dtensor()
    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g.to_local() for g in grads if isinstance(g, DTensor)]
    plain = [g for g in grads if not isinstance(g, DTensor)]
    dev = (sharded or plain)[0].device if (sharded or plain) else torch.device("cpu")
    sq = torch.zeros((), device=dev, dtype=torch.float32)
    for g in sharded:
        sq += g.float().pow(2).sum()
    torch.distributed.all_reduce(sq)
    for g in plain:
        sq += g.float().pow(2).sum()
    norm = sq.sqrt()
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for g in sharded + plain:
        g.mul_(coef.to(g.dtype))
    return norm


# -- writing ----------------------------------------------------------------------------------

class _Gathers:
    """Full tensors made in one fixed order on every rank (each an all-gather). The first rank
    writes them as they come; if its write fails, it still makes the rest (`drain`), so the
    others are never left waiting in a collective."""

    def __init__(self):
        self.makers: list = []
        self.done = 0

    def add(self, make):
        i = len(self.makers)
        self.makers.append(make)

        def run():
            assert i == self.done, "tensors gathered out of order"
            self.done += 1
            return make()

        return run

    def drain(self) -> None:
        while self.done < len(self.makers):
            self.done += 1
            self.makers[self.done - 1]()


def _model_tasks(model, gathers: _Gathers):
    """The model's tensors by state_dict name, ties written once (the first name), as TensorTasks."""
    from surgery.io import TensorTask

    info: ShardInfo = resharded(model)._surgery_shard
    names = list(model.state_dict())
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers())
    seen: set[int] = set()
    tasks = []
    for name in names:
        t = params.get(name, buffers.get(name))
        if t is None:
            continue
        if id(t) in seen:
            continue
        seen.add(id(t))
        tasks.append(TensorTask(name, tuple(t.shape), t.dtype, gathers.add(lambda t=t: full(t.detach()))))
    config = model.config.to_dict()
    config["architectures"] = [info.cls.__name__]
    return config, tasks


def _optimizer_tasks(optimizer, model, gathers: _Gathers):
    from surgery.io import TensorTask

    tasks = []
    for name, p in model.named_parameters():
        for k, v in sorted(optimizer.state.get(p, {}).items()):
            tasks.append(TensorTask(f"{name}::{k}", tuple(v.shape), v.dtype,
                                    gathers.add(lambda v=v: full(v.detach()).clone())))
    return tasks


def _write_file(path: Path, tasks) -> None:
    """tasks as one safetensors file at `path` (written through a scratch folder beside it)."""
    from surgery.io import write_tensors

    scratch = path.with_name(f".{path.name}.tmp")
    scratch.mkdir()
    written = write_tensors(scratch, tasks, shard_bytes=1 << 62)
    (scratch / written[0]).rename(path)
    scratch.rmdir()


def save_pretrained(model, folder: Path, main: bool) -> None:
    """Every rank: the model as a from_pretrained folder at `folder`, written by the first rank
    one gathered tensor at a time."""
    import json

    from surgery.io import write_tensors

    gathers = _Gathers()
    config, tasks = _model_tasks(model, gathers)
    if not main:
        gathers.drain()
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
        write_tensors(folder, tasks)
    finally:
        gathers.drain()


def save_checkpoint(root: Path, step: int, model, optimizer, trainer_state: dict, main: bool) -> None:
    """Every rank: surgery.train.checkpoint.save_checkpoint of a sharded model and optimizer (the
    same files as an unsharded run's), written by the first rank tensor by tensor."""
    from surgery.train import checkpoint as ckpt

    gathers = _Gathers()
    config, model_tasks = _model_tasks(model, gathers)
    opt_tasks = _optimizer_tasks(optimizer, model, gathers)
    if not main:
        gathers.drain()
        return

    def write(tmp: Path) -> None:
        import json

        from surgery.io import write_tensors

        tmp.mkdir()
        (tmp / "model").mkdir()
        (tmp / "model" / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
        write_tensors(tmp / "model", model_tasks)
        if opt_tasks:
            _write_file(tmp / "optimizer.safetensors", opt_tasks)
        ckpt.write_rng_and_state(tmp, trainer_state)

    try:
        ckpt.save_checkpoint(root, step, model, optimizer, trainer_state, write=write)
    finally:
        gathers.drain()
