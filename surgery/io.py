"""Checkpoint folders: `config.json` + `*.safetensors` (one file, or shards with
`model.safetensors.index.json`), read lazily tensor by tensor and written by streaming.

- `load_checkpoint(path) -> Checkpoint`: spec, family, layout, config, and lazy tensor access
  (only the safetensors headers are read up front, by surgery/headers.py; `get(name)` reads one
  tensor with one plain read and keeps nothing: no memory maps, no caches; `read_into(name, out)`
  reads one straight into the kept block of the tensor it grows into, one preadv of its rows).
  `Checkpoint.model()` loads it with transformers' from_pretrained.
- `save_checkpoint(out_dir, source, config=None)`: source is a PreTrainedModel, a dict of tensors
  (with `config`), or a list of `TensorTask`s (name, shape, dtype, make) made one at a time. Each
  shard's safetensors header is written first from the known shapes, and each tensor's bytes go
  to their place as soon as it is made (surgery/shard_writer.py), so peak memory is about one
  tensor per worker, not one model. Tied tensors are written
  once (transformers re-ties them on load); any tensor is cloned to contiguous memory before
  writing, so shared storage never reaches the file.
- Writes are atomic: everything goes to a temporary folder beside the target, renamed into place
  at the end; on any error the temporary folder is removed and the target is untouched.
Only safetensors is read: no pickle.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch

from surgery.buffers import empty, pooled
from surgery.checkpoints import TOKENIZER_FILES, carry_files
from surgery.errors import SurgeryError
from surgery.families import FAMILIES
from surgery.families.build import layout_of_checkpoint
from surgery.headers import (
    INDEX_NAME,
    SINGLE_NAME,
    HeaderError,
    TensorInfo,
    checkpoint_files,
    read_headers,
)

DEFAULT_SHARD_BYTES = 2 * 1024**3
MIN_SPLIT_SHARD_BYTES = 512 * 1024**2
MAX_DEFAULT_THREADS = 4
_IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}


class Checkpoint:
    """A checkpoint folder opened lazily: only the safetensors headers are read up front."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise SurgeryError(f"{self.path}: no such checkpoint folder")
        cfg_path = self.path / "config.json"
        if not cfg_path.is_file():
            raise SurgeryError(f"{self.path}: no config.json")
        try:
            self.config: dict = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SurgeryError(f"{cfg_path}: not valid JSON ({err})") from None
        if self.config.get("model_type") not in FAMILIES:
            raise SurgeryError(f"{self.path}: unsupported architecture {self.config.get('model_type')!r} "
                               f"(supported: {', '.join(FAMILIES)})")
        try:
            files = checkpoint_files(self.path)
        except HeaderError as err:
            raise SurgeryError(str(err)) from None
        if not files:
            bins = list(self.path.glob("*.bin")) + list(self.path.glob("*.pt"))
            hint = " (pickle .bin weights are not read: convert them to safetensors)" if bins else ""
            raise SurgeryError(f"{self.path}: no *.safetensors weights{hint}")
        for f in files:
            if not f.is_file():
                raise SurgeryError(f"{f}: shard named in {INDEX_NAME} is missing")
        try:
            self.tensors: dict[str, TensorInfo] = read_headers(files)
        except HeaderError as err:
            raise SurgeryError(str(err)) from None
        self._files = {k: v.file for k, v in self.tensors.items()}
        self.family, self.layout, self.spec = layout_of_checkpoint(self.config, set(self._files), self.get)

    def names(self) -> list[str]:
        return list(self._files)

    def __contains__(self, name: str) -> bool:
        return name in self._files

    def get(self, name: str) -> torch.Tensor:
        """One tensor, read with one plain read into its own memory (a buffer reused from an earlier
        tensor inside the streaming writer, surgery/buffers.py; no memory map: mapped pages of
        a large source would stay resident and count against the process)."""
        info = self.tensors.get(name)
        if info is None:
            raise SurgeryError(f"{self.path}: checkpoint has no tensor {name}")
        buf = empty((info.nbytes,), torch.uint8)  # a reused buffer inside the streaming writer
        try:
            with open(info.file, "rb", buffering=0) as f:
                f.seek(info.start)
                got = f.readinto(memoryview(buf.numpy())) if info.nbytes else 0
        except OSError as err:
            raise SurgeryError(f"{info.file}: cannot read tensor {name} ({err})") from None
        if got != info.nbytes:
            raise SurgeryError(f"{info.file}: truncated while reading tensor {name} "
                               f"(the file ends before byte {info.end:,})")
        return buf.view(_DTYPES[info.dtype]).reshape(info.shape)

    def read_into(self, name: str, out: torch.Tensor) -> bool:
        """Read tensor `name` straight into `out`, a matrix of its shape and dtype whose rows are
        contiguous but may be spaced apart (the kept block of a grown tensor): one preadv of
        every row's bytes, the kernel copying from the page cache to where the rows stay. False
        (nothing read) where `out` does not fit; a short read is refused as in get()."""
        info = self.tensors.get(name)
        if (info is None or _DTYPES[info.dtype] != out.dtype or tuple(info.shape) != tuple(out.shape)
                or out.dim() != 2 or out.stride(1) != 1 or not out.numel()):
            return False
        rows = out.view(torch.uint8).numpy() if out.is_contiguous() else None
        if rows is None:  # numpy views the strided block; each row is one contiguous run of bytes
            import numpy as np

            rows = out.numpy().view(np.uint8)
        iov = [memoryview(r) for r in rows] if out.stride(0) != out.shape[1] else [memoryview(rows).cast("B")]
        done = 0
        try:
            with open(info.file, "rb", buffering=0) as f:
                i = 0
                while i < len(iov):
                    got = os.preadv(f.fileno(), iov[i: i + _IOV_MAX], info.start + done)
                    if got <= 0:
                        break  # the file ends early
                    done += got
                    while i < len(iov) and got >= len(iov[i]):  # skip what was filled (a read may stop short)
                        got -= len(iov[i])
                        i += 1
                    if got:
                        iov[i] = iov[i][got:]
        except OSError as err:
            raise SurgeryError(f"{info.file}: cannot read tensor {name} ({err})") from None
        if done != info.nbytes:
            raise SurgeryError(f"{info.file}: truncated while reading tensor {name} "
                               f"(the file ends before byte {info.end:,})")
        return True

    def dtype(self, name: str) -> torch.dtype:
        return _DTYPES[self.tensors[name].dtype]

    def model(self):
        """The checkpoint as its transformers class, loaded by from_pretrained."""
        import transformers

        cls = getattr(transformers, self.layout.model_class)
        return cls.from_pretrained(str(self.path))


def load_checkpoint(path: str | Path) -> Checkpoint:
    return Checkpoint(Path(path))


@dataclass
class TensorTask:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    make: Callable[[], torch.Tensor]
    cost: int | None = None  # peak bytes while making it (surgery/ops/memory.py); None: 2x its bytes
    # The name of an earlier task known to make the same bytes (a layer repeated by depth growth):
    # that one's bytes are written here too, by the worker that made them, instead of made again.
    same_as: str | None = None
    # All zero bytes (depth growth's identity blocks zero what writes into the residual stream):
    # never made or written: left as a hole of the file, which reads as zeros.
    zeros: bool = False

    @property
    def computed(self) -> bool:
        """Made by a worker (not copied from an earlier tensor, not zeros)."""
        return self.same_as is None and not self.zeros

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=self.dtype).element_size()

    @property
    def working_bytes(self) -> int:
        if not self.computed:
            return 0
        return max(self.cost if self.cost is not None else 2 * self.nbytes, self.nbytes)

    def made(self) -> torch.Tensor:
        """The tensor, checked against the plan, contiguous in the planned dtype on the CPU."""
        x = self.make()
        if tuple(x.shape) != tuple(self.shape):
            raise RuntimeError(f"{self.name}: made shape {tuple(x.shape)}, planned {self.shape}")
        return x.detach().to("cpu", self.dtype).contiguous()


def default_threads() -> int:
    """Workers of the streaming pipeline: the CPUs this process may use, at most 4 (beyond that the
    disk, not the arithmetic, is the limit, and each worker holds a tensor)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_THREADS, n))


def shard_bytes_for(total: int) -> int:
    """Shard size of a streamed output of `total` bytes: at most DEFAULT_SHARD_BYTES, and small
    enough for as many files as default_threads() may start workers, MAX_DEFAULT_THREADS (each
    writes a file of its own; two writing one file take turns on its lock:
    surgery/shard_writer.py), but no smaller than 512 MiB a shard. A function of the size alone,
    so the files do not depend on the thread count."""
    return max(MIN_SPLIT_SHARD_BYTES, min(DEFAULT_SHARD_BYTES, -(-total // MAX_DEFAULT_THREADS)))


def pipeline_budget(tasks: list[TensorTask]) -> int:
    """Bytes the workers may hold at once (the working sets of the tensors they are making and
    writing): twice the largest single one, so memory follows the largest tensor, not the thread
    count or the model."""
    return 2 * max((t.working_bytes for t in tasks), default=0)


def _one_torch_thread() -> None:
    # The workers are the parallelism: intra-op threads on top would oversubscribe the cores.
    torch.set_num_threads(1)


@contextmanager
def atomic_folder(out_dir: str | Path):
    """Yield a temporary folder that becomes `out_dir` only if the block completes."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SurgeryError(f"{out}: output folder exists and is not empty")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    except OSError as err:  # a parent that is a file, no permission, a read-only file system
        raise SurgeryError(f"{out}: cannot create the output folder ({_reason(err)})") from None
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except OSError as err:  # writing the config, copying the tokenizer, the final rename
        shutil.rmtree(tmp, ignore_errors=True)
        raise SurgeryError(f"{out}: cannot write ({_reason(err)})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _reason(err: OSError) -> str:
    return f"{err.filename}: {err.strerror}" if err.filename and err.strerror else str(err)


def _header(tasks: list[TensorTask], metadata: dict[str, str]) -> bytes:
    header: dict = {"__metadata__": metadata}
    offset = 0
    for t in tasks:
        header[t.name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def write_tensors(folder: Path, tasks: Iterable[TensorTask], shard_bytes: int = DEFAULT_SHARD_BYTES, *,
                  threads: int = 1, budget: int | None = None) -> list[str]:
    """Write tasks into `folder` as model.safetensors or shards + index. Returns the file names.

    Each shard is laid out from the planned shapes first (header written, length set); tensors
    are then made on `threads` workers, within `budget` bytes of working sets in hand, and each
    written at its place as soon as it is made (surgery/shard_writer.py). Tensors with the same
    bytes as an earlier one (`same_as`) are written from it; zero tensors stay holes. The bytes do
    not depend on `threads`."""
    from surgery.shard_writer import Placed, ShardWriter

    tasks = list(tasks)
    shards: list[list[TensorTask]] = [[]]
    size = 0
    for t in tasks:
        if shards[-1] and size + t.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    meta = {"format": "pt"}
    names = ([SINGLE_NAME] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    headers = [_header(shard, meta) for shard in shards]
    placed: dict[str, Placed] = {}
    holes: set[str] = set()
    for i, (shard, header) in enumerate(zip(shards, headers)):
        offset = len(header)
        for t in shard:
            first = placed.get(t.same_as) if t.same_as is not None else None
            if t.zeros or t.same_as in holes:
                holes.add(t.name)  # a hole: nothing made or written
            elif t.same_as is not None and (first is None or first.task.nbytes != t.nbytes):
                raise ValueError(f"{t.name}: same_as={t.same_as!r} names no earlier tensor "
                                 f"{'of its size' if first is not None else 'made or zero'}")
            elif first is not None:
                first.places.append((i, offset))
            else:
                placed[t.name] = Placed(t, [(i, offset)])
            offset += t.nbytes
    budget = budget if budget is not None else pipeline_budget(tasks)
    writer = ShardWriter(folder, names, headers, [sum(t.nbytes for t in shard) for shard in shards])
    torch_threads = torch.get_num_threads()  # the workers set one each; it is process-wide
    try:
        # Large tensors reuse the buffers of earlier ones (surgery/buffers.py), up to the budget.
        with pooled(budget):
            writer.run(list(placed.values()), threads, budget, init=_one_torch_thread)
    finally:
        writer.close()
        torch.set_num_threads(torch_threads)
    if len(shards) == 1:
        return names
    weight_map = {t.name: name for name, shard in zip(names, shards) for t in shard}
    index = {"metadata": {"total_size": sum(t.nbytes for t in tasks)}, "weight_map": weight_map}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2))
    return names + [INDEX_NAME]


def _model_tasks(model) -> tuple[dict, list[TensorTask]]:
    """A model's tensors with ties written once (the first name of each storage)."""
    seen: set[int] = set()
    tasks = []
    for name, t in model.state_dict().items():
        key = t.data_ptr()
        if key in seen and t.numel():
            continue
        seen.add(key)
        tasks.append(TensorTask(name, tuple(t.shape), t.dtype, (lambda t=t: t.clone())))
    config = model.config.to_dict()
    config["architectures"] = [type(model).__name__]
    return config, tasks


def save_checkpoint(out_dir: str | Path, source, config: dict | None = None, *,
                    shard_bytes: int = DEFAULT_SHARD_BYTES, carry_from: str | Path | None = None,
                    threads: int = 1, budget: int | None = None) -> Path:
    """Write `source` (model, {name: tensor} with config, or [TensorTask] with config) atomically."""
    if hasattr(source, "state_dict") and hasattr(source, "config"):
        model_config, tasks = _model_tasks(source)
        config = config or model_config
    elif isinstance(source, Mapping):
        if config is None:
            raise ValueError("save_checkpoint of a tensor dict needs config=")
        tasks = [TensorTask(k, tuple(v.shape), v.dtype, (lambda v=v: v.clone())) for k, v in source.items()]
    else:
        if config is None:
            raise ValueError("save_checkpoint of tensor tasks needs config=")
        tasks = list(source)
    with atomic_folder(out_dir) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
        write_tensors(tmp, tasks, shard_bytes, threads=threads, budget=budget)
        if carry_from is not None:
            for name in TOKENIZER_FILES:  # the tokenizer travels with the weights
                f = Path(carry_from) / name
                if f.is_file():
                    shutil.copy2(f, tmp / name)
            # and what surgery does not own (sentence-transformers' files), widths updated
            from surgery.spec import ModelSpec

            carry_files(Path(carry_from), tmp, ModelSpec.from_hf_config(config).d_model)
    return Path(out_dir)


__all__ = ["Checkpoint", "TensorTask", "load_checkpoint", "save_checkpoint", "write_tensors", "atomic_folder"]
