"""How much memory a streaming growth needs, from shapes alone (no weight is read).

`grow_checkpoint` makes output tensors on a few workers, each writing the tensor it made at its
place in the output (surgery/shard_writer.py). Making one tensor reads the source tensors it
needs, grows them in fp32, converts the result to the output dtype; the worker writes it and
drops it. Per entry (surgery/ops/entries.py), the peak while making it:

  Read     the raw bytes read, plus an fp32 copy when the checkpoint is not fp32
  Widen    per grown axis, the tensor before and after that axis plus the gathered new units
           (splits and padding are in place); `l`'s random reader split adds its block
           temporaries (a few blocks of BLOCK_ELEMS, not a multiple of the tensor)
  Aki      both widened tensors plus a mask and the result
  Zero     the output;  Built: its inputs and the output (identity blocks of post-LN BERT)
  written  the fp32 result plus its copy in the output dtype

The workers hold at most their budget (twice the largest of these working sets) whatever the
thread count, so the peak is the process baseline (Python, torch) plus that budget; with one
thread (no pool) it is the baseline plus the largest working set. The estimate errs high;
docs/surgery.md compares it with measurements.
"""

from __future__ import annotations

from surgery.ops.entries import BLOCK_ELEMS, Aki, Built, Entry, Read, Widen, Zero
from surgery.view import Role

# Python + torch + surgery imported, measured with /usr/bin/time on the benchmark machine.
BASELINE_BYTES = 300 * 1024**2
# `l`'s random split per block: the parts, their sums, the gathered copies and the normals.
SPLIT_TEMP_BYTES = 4 * 4 * BLOCK_ELEMS


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _cost(e: Entry, src_bytes: dict[str, int]) -> tuple[int, int]:
    """(peak bytes while making e, bytes of e's fp32 result)."""
    out = 4 * _numel(e.shape)
    if isinstance(e, Read):
        raw = src_bytes.get(e.name, out)
        return raw + (out if raw != out else 0), out
    if isinstance(e, Zero):
        return out, out
    if isinstance(e, Built):
        peaks = [_cost(d, src_bytes) for d in e.deps]
        held = sum(r for _, r in peaks)
        return max([held + 2 * out] + [p for p, _ in peaks]), out
    if isinstance(e, Widen):
        peak, size = _cost(e.base, src_bytes)
        shape = list(e.base.shape)
        for a in e._axes_in_order():
            if shape[a] == e.shape[a]:
                continue
            shape[a] = e.shape[a]
            new = 4 * _numel(shape)
            # The copies past the old width are gathered into a temporary before they are placed.
            temps = new - size
            if e.rule.split == "random" and e.axes[a].role is Role.IN:
                temps += SPLIT_TEMP_BYTES
            peak = max(peak, size + new + temps)
            size = new
        return peak, out
    if isinstance(e, Aki):
        p1, r1 = _cost(e.own, src_bytes)
        p2, r2 = _cost(e.upper, src_bytes)
        return max(p1, r1 + p2, r1 + r2 + out + out // 4), out
    return 3 * out, out


def working_bytes(e: Entry, src_bytes: dict[str, int], out_elem_bytes: int) -> int:
    """Peak bytes while making e and converting it to the output dtype."""
    peak, res = _cost(e, src_bytes)
    written = out_elem_bytes * _numel(e.shape)
    return max(peak, res + written if out_elem_bytes != 4 else res)


def estimate_peak(plan, src_bytes: dict[str, int], out_elem_bytes: int, threads: int = 1) -> tuple[int, str, int]:
    """(estimated peak resident bytes, the output tensor with the largest working set, total
    output bytes). src_bytes: neutral source slot name -> bytes as stored (safetensors headers)."""
    worst, worst_name, total = 0, "", 0
    for s in plan.dst_view:
        w = working_bytes(plan.entries[s.name], src_bytes, out_elem_bytes)
        total += out_elem_bytes * _numel(s.shape(plan.dst_dims))
        if w > worst:
            worst, worst_name = w, s.hf
    held = worst if threads <= 1 else 2 * worst  # surgery.io.pipeline_budget
    return BASELINE_BYTES + held, worst_name, total
