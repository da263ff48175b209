"""Token blocks for pretraining and the deterministic order they are served in.

Documents are tokenized once (cached as .npy beside the tokenizer), joined with the separator the
family uses, and cut into fixed blocks. The order of blocks in epoch e is a permutation seeded by
(seed, e), so the batch at any optimizer step is a pure function of that step: resuming needs no
data-loader state, only the step number.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np

from surgery.train.tokenizer import cache_dir


def tokenize_documents(docs: list[str], tokenizer, key: str, chunk: int = 2000, progress=None) -> np.ndarray:
    """All documents as one int32 stream, each followed by the family's separator (T5 `</s>`,
    BERT `[SEP]`); cached by `key` so a second run skips the work."""
    h = hashlib.sha256(f"{key}:{len(docs)}:{sum(map(len, docs))}".encode()).hexdigest()[:16]
    path = cache_dir() / "tokens" / f"{h}.npy"
    if path.exists():
        return np.load(path)
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    parts = []
    task = progress.add_task("tokenizing", total=len(docs), info="") if progress else None
    for i in range(0, len(docs), chunk):
        enc = tokenizer(docs[i : i + chunk], add_special_tokens=False)["input_ids"]
        for ids in enc:
            parts.append(np.asarray(ids, dtype=np.int32))
            parts.append(np.asarray([sep], dtype=np.int32))
        if progress:
            progress.update(task, advance=len(enc))
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, stream)
    tmp.replace(path)
    return stream


def to_blocks(stream: np.ndarray, block_len: int) -> np.ndarray:
    n = len(stream) // block_len
    return stream[: n * block_len].reshape(n, block_len)


def to_doc_blocks(stream: np.ndarray, block_len: int, sep: int, pad: int, min_len: int | None = None) -> np.ndarray:
    """Doc-sentences packing: each document (the tokens between separators) cut into blocks of
    `block_len`; a document's last piece is padded with `pad`, or dropped when shorter than
    `min_len` (default block_len // 4, at least 2). No block crosses a document boundary."""
    min_len = max(2, block_len // 4) if min_len is None else min_len
    ends = np.flatnonzero(stream == sep)
    starts = np.concatenate([[0], ends[:-1] + 1]) if len(ends) else np.zeros(0, dtype=int)
    rows = []
    for s, e in zip(starts, ends):
        for i in range(s, e, block_len):
            piece = stream[i : min(e, i + block_len)]
            if len(piece) >= min_len:
                rows.append(np.pad(piece, (0, block_len - len(piece)), constant_values=pad))
    return np.stack(rows).astype(stream.dtype) if rows else np.zeros((0, block_len), dtype=stream.dtype)


@dataclass
class BatchOrder:
    """Which blocks make up micro-batch `micro` of optimizer step `step`."""

    n_blocks: int
    batch_size: int
    grad_accum: int
    seed: int

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.n_blocks // (self.batch_size * self.grad_accum))

    def indices(self, step: int, micro: int) -> np.ndarray:
        epoch, within = divmod(step, self.steps_per_epoch)
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_blocks)
        start = (within * self.grad_accum + micro) * self.batch_size
        idx = perm[start : start + self.batch_size]
        if len(idx) < self.batch_size:  # corpus smaller than one batch: wrap around
            idx = np.resize(perm, self.batch_size)
        return idx


def step_rng(seed: int, step: int, micro: int) -> np.random.Generator:
    """The masking randomness of one micro-batch, independent of how the run got there."""
    return np.random.default_rng([seed, 7919, step, micro])


def validation_batches(blocks: np.ndarray, objective, batch_size: int, seed: int, max_batches: int):
    """Fixed validation batches (same masks every time) so losses are comparable across steps
    and across a growth."""
    n = min(len(blocks), batch_size * max_batches)
    out = []
    for j, i in enumerate(range(0, n, batch_size)):
        out.append(objective(blocks[i : i + batch_size], np.random.default_rng([seed, 104729, j]),
                             block_ids=np.arange(i, min(n, i + batch_size)), epoch=0))
    return out
