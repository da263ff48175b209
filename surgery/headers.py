"""safetensors headers without torch: every tensor's file, dtype, shape and byte range.

A safetensors file is an 8-byte little-endian header length, a JSON header
(`{name: {"dtype", "shape", "data_offsets": [start, end]}, "__metadata__": {...}}`, offsets relative
to the end of the header), then the raw bytes. Reading the header is enough to plan a growth and
its memory (`surgery grow --dry-run`), and the byte ranges let `surgery.io` read one tensor with
one plain `read` (no memory map whose pages would stay resident).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
MAX_HEADER = 100 * 1024**2
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1}


class HeaderError(ValueError):
    """A file that is not a readable safetensors file (message names the file)."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    file: Path
    dtype: str  # safetensors dtype string: F32, BF16, ...
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def read_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors of one safetensors file, from its header alone."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise HeaderError(f"{path}: not a readable safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > min(MAX_HEADER, size - 8):
                raise HeaderError(f"{path}: not a readable safetensors file (header length {n} out of range)")
            header = json.loads(f.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HeaderError(f"{path}: not a readable safetensors file ({err})") from None
    if not isinstance(header, dict):
        raise HeaderError(f"{path}: not a readable safetensors file (header is not an object)")
    base = 8 + n
    out: dict[str, TensorInfo] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (a, b) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError) as err:
            raise HeaderError(f"{path}: not a readable safetensors file (bad entry for {name}: {err})") from None
        t = TensorInfo(name, path, dtype, shape, base + int(a), base + int(b))
        if dtype not in DTYPE_BYTES or t.numel * DTYPE_BYTES[dtype] != t.nbytes or t.start < base:
            raise HeaderError(f"{path}: not a readable safetensors file (entry {name} is inconsistent)")
        out[name] = t
    need = max((t.end for t in out.values()), default=base)
    if need > size:
        # A copy or download cut short: say so, rather than fail on whichever tensor is read last.
        raise HeaderError(f"{path}: truncated: its header describes {need:,} bytes, the file has {size:,}")
    return out


def checkpoint_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint folder: the shards its index names, model.safetensors, or
    every *.safetensors."""
    folder = Path(folder)
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise HeaderError(f"{index}: not a safetensors index ({err})") from None
        return sorted({folder / v for v in weight_map.values()})
    if (folder / SINGLE_NAME).is_file():
        return [folder / SINGLE_NAME]
    return sorted(folder.glob("*.safetensors"))


def read_headers(files: list[Path]) -> dict[str, TensorInfo]:
    out: dict[str, TensorInfo] = {}
    for f in files:
        out.update(read_header(f))
    return out
