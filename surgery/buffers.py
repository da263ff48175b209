"""Large scratch tensors reused across the tensors of a streamed growth.

A streamed growth makes hundreds of tensors of a few recurring sizes (a layer's q, k, v, ... in
every layer), each tens to hundreds of MB. Fresh memory of that size comes from the kernel as
new pages that it zeroes on first touch, and goes back to it when the tensor is freed: on this
CPU that zeroing was a third of a large growth's CPU time, a pass over every byte read and every
byte written that the copy itself does not need. Inside `pooled()` (the streaming writer,
surgery/io.py), `empty()` hands out views of buffers kept from earlier tensors instead.

A buffer is reused only once no tensor refers to it any more (its storage's reference count is
back to the pool's own): no explicit release, so a tensor that outlives its step - kept by a
caller, or still being written - simply keeps its buffer. The pool keeps at most `limit` bytes;
beyond, `empty()` is torch.empty. Outside `pooled()` it is always torch.empty. Like torch.empty,
the memory is uninitialised: every caller overwrites all of it.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch

MIN_BYTES = 4 << 20  # smaller tensors: the allocator already reuses its heap for them


def _use_count(buf: torch.Tensor) -> int:
    return torch._C._storage_Use_Count(buf.untyped_storage()._cdata)


class BufferPool:
    def __init__(self, limit: int):
        self.limit = limit
        self.lock = threading.Lock()
        self.buffers: list[tuple[torch.Tensor, int]] = []  # (uint8 buffer, use count when unused)

    @property
    def nbytes(self) -> int:
        return sum(b.numel() for b, _ in self.buffers)

    def empty(self, shape, dtype: torch.dtype) -> torch.Tensor:
        n = 1
        for s in shape:
            n *= s
        nbytes = n * torch.empty((), dtype=dtype).element_size()
        if nbytes < MIN_BYTES:
            return torch.empty(shape, dtype=dtype)
        with self.lock:
            free = [b for b, idle in self.buffers if _use_count(b) == idle]
            fit = [b for b in free if nbytes <= b.numel() <= 2 * nbytes]
            if fit:
                buf = min(fit, key=torch.Tensor.numel)
            else:
                held = self.nbytes
                # Make room: let go of idle buffers that cannot serve this size, largest first
                # (the embedding's, once the layers have started).
                for b in sorted(free, key=torch.Tensor.numel, reverse=True):
                    if held + nbytes <= self.limit:
                        break
                    self.buffers = [(x, i) for x, i in self.buffers if x is not b]
                    held -= b.numel()
                if held + nbytes > self.limit:
                    return torch.empty(shape, dtype=dtype)
                buf = torch.empty(nbytes, dtype=torch.uint8)
                self.buffers.append((buf, _use_count(buf)))
            # The view is made under the lock: from here on the buffer counts as in use.
            return buf[:nbytes].view(dtype).reshape(shape)


_active: BufferPool | None = None
_active_lock = threading.Lock()


def empty(shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """torch.empty(shape, dtype=dtype), from the active pool's buffers when inside `pooled()`."""
    pool = _active
    if pool is None:
        return torch.empty(shape, dtype=dtype)
    return pool.empty(tuple(shape), dtype)


@contextmanager
def pooled(limit: int):
    """Serve `empty()` from a pool of at most `limit` bytes for the duration (one at a time: a
    nested or concurrent one runs unpooled)."""
    global _active
    with _active_lock:
        mine = _active is None
        if mine:
            _active = BufferPool(limit)
    try:
        yield
    finally:
        if mine:
            with _active_lock:
                _active = None
