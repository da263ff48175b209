"""Writing checkpoint shards from tensors made on a few worker threads, each written in place.

Every tensor's place in its shard follows from the shapes alone, so each shard file is laid out
before any tensor is made: its header written and its length set (a tensor never written, a zero
tensor, stays a hole of the file and reads as zeros). A worker then makes a tensor, writes it
straight to its offset (pwrite), also wherever the same bytes go again (a layer repeated by depth
growth), and drops it. No single writer stands in the way: on the benchmark machine one thread
copies into the page cache at about 1 GB/s and two threads writing two files at nearly twice
that, while two threads writing one file take turns on its lock (docs/surgery.md). So a free
worker takes its next tensor from a shard no other worker is writing while there is one.

Memory: a tensor is started only while the working sets of the tensors in hand stay within the
budget; the first is always started, so one tensor larger than the budget still runs. The bytes
depend neither on the thread count nor on the order: each tensor is made from its own inputs.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch

from surgery.errors import SurgeryError

# Largest single pwrite: Linux writes at most ~2 GiB a call, and a shorter hold of the file's lock
# lets a worker whose tensor goes to the same file (a repeated layer's copy) take its turn sooner.
WRITE_CHUNK = 64 << 20


@dataclass
class Placed:
    """A tensor to make and where its bytes go: (shard, offset in that file) for itself first,
    then for every later tensor known to have the same bytes."""
    task: object  # surgery.io.TensorTask
    places: list[tuple[int, int]] = field(default_factory=list)

    @property
    def shard(self) -> int:
        return self.places[0][0]


class Schedule:
    """Which tensor a free worker takes next: the first one waiting in the first shard no worker
    is writing (else in the least busy shard), if its working set fits the budget beside those in
    hand. Plain bookkeeping: the caller holds the lock."""

    DONE = object()

    def __init__(self, placed: list[Placed], shards: int, budget: int):
        self.waiting = [deque() for _ in range(shards)]
        for p in placed:
            self.waiting[p.shard].append(p)
        self.busy = [0] * shards
        self.held, self.budget = 0, budget

    def take(self):
        """A Placed to make now; None: wait until one in hand is released; DONE: nothing left."""
        open_shards = [s for s, q in enumerate(self.waiting) if q]
        if not open_shards:
            return self.DONE
        s = min(open_shards, key=lambda s: self.busy[s])  # the first of the least busy
        p = self.waiting[s][0]
        w = p.task.working_bytes
        if self.held and self.held + w > self.budget:
            return None
        self.waiting[s].popleft()
        self.busy[s] += 1
        self.held += w
        return p

    def release(self, p: Placed) -> None:
        self.busy[p.shard] -= 1
        self.held -= p.task.working_bytes


class Stopped(Exception):
    """Raised inside a worker whose run was stopped (another worker failed, or Ctrl-C) mid-tensor."""


def write_all(fd: int, data: memoryview, offset: int, stopped=None) -> None:
    """All of data at offset of fd, in chunks (a regular file may still write less than asked);
    `stopped()` true between chunks gives up (raises Stopped)."""
    done = 0
    while done < len(data):
        if stopped is not None and stopped():
            raise Stopped
        n = os.pwrite(fd, data[done: done + WRITE_CHUNK], offset + done)
        if n <= 0:
            raise OSError(f"pwrite made no progress at byte {offset + done:,}")
        done += n


class ShardWriter:
    """Lay out the shard files, then make and write every tensor on `threads` workers."""

    def __init__(self, folder: Path, names: list[str], headers: list[bytes], sizes: list[int]):
        self.paths = [Path(folder) / n for n in names]
        self.fds: list[int] = []
        for path, header, size in zip(self.paths, headers, sizes):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                self.fds.append(fd)
                write_all(fd, memoryview(header), 0)
                os.ftruncate(fd, len(header) + size)
            except OSError as err:
                self.close()
                raise SurgeryError(f"{path}: cannot write ({err.strerror or err})") from None
        self.lock = threading.Condition()
        self.error: BaseException | None = None
        self.running = 0  # worker threads started and not yet exited

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def run(self, placed: list[Placed], threads: int, budget: int, init=None) -> None:
        self.schedule = Schedule(placed, len(self.fds), budget)
        threads = max(1, min(threads, len(placed)))
        if threads == 1:
            self._work()
        else:
            workers: list[threading.Thread] = []
            try:
                for i in range(threads):
                    workers.append(threading.Thread(target=self._worker, args=(init,), name=f"surgery-write-{i}",
                                                    daemon=True))
                    workers[-1].start()
                for w in workers:
                    w.join()
            except BaseException as err:  # Ctrl-C: the workers stop at the next chunk and exit
                self._stop(err)
            finally:
                self._join(workers)
        if self.error is not None:
            raise self.error

    def _stop(self, err: BaseException) -> None:
        with self.lock:
            self.error = self.error or err
            self.lock.notify_all()

    def _join(self, workers: list[threading.Thread]) -> None:
        """Wait for every worker to exit, whatever interrupts arrive meanwhile (a second Ctrl-C):
        the files are closed after this, and a worker still writing would write into whatever file
        reused its descriptor. Counted by the workers themselves: an interrupted Thread.join()
        can take a running thread for finished (CPython 3.11)."""
        while True:
            try:
                with self.lock:
                    while self.running > 0:
                        self.lock.wait()
                for w in workers:
                    w.join()
                return
            except BaseException as err:
                self._stop(err)

    def _worker(self, init) -> None:
        # Counted from inside: one not yet counted when _join gives up waiting finds the run
        # stopped and exits before touching a file.
        with self.lock:
            self.running += 1
            stopped = self.error is not None
        try:
            if not stopped:  # a late starter of a stopped run changes nothing process-wide
                self._work(init)
        finally:
            with self.lock:
                self.running -= 1
                self.lock.notify_all()

    def _work(self, init=None) -> None:
        if init is not None:
            init()
        while True:
            with self.lock:
                while True:
                    if self.error is not None:
                        return
                    p = self.schedule.take()
                    if p is Schedule.DONE:
                        return
                    if p is not None:
                        break
                    self.lock.wait()
            try:
                self._make_and_write(p)
            except Stopped:
                pass  # the error that stopped the run is already recorded
            except BaseException as err:
                self._stop(err)
            finally:
                with self.lock:
                    self.schedule.release(p)
                    self.lock.notify_all()

    def _make_and_write(self, p: Placed) -> None:
        x = p.task.made()
        if x.numel():
            data = memoryview(x.reshape(-1).view(torch.uint8).numpy())  # the tensor's own bytes, no copy
            for shard, offset in p.places:
                try:
                    write_all(self.fds[shard], data, offset, stopped=lambda: self.error is not None)
                except OSError as err:  # a full disk, a quota: one line, and the caller removes the folder
                    raise SurgeryError(f"{self.paths[shard]}: cannot write {p.task.name} "
                                       f"({err.strerror or err})") from None
