"""How much memory a streaming growth needs, from shapes alone (no weight is read).

`grow_checkpoint` makes one output tensor at a time: it reads the source tensors that tensor needs
(fp32 for the arithmetic), grows them, converts the result to the output dtype and writes it, and
keeps nothing. So its peak is the process baseline (Python, torch) plus the worst single output
tensor's working set. Per entry (surgery/ops/entries.py):

  Read     the raw bytes read, plus an fp32 copy when the checkpoint is not fp32
  Widen    its input plus the grown tensor and temporaries: 2x the output for copy rules, 5x under
           `l`'s random reader split (the grown copy, the random parts, their sums, the quotient,
           the product)
  Aki      both widened tensors plus a mask and the result
  Zero     the output;  Built: its inputs and the output (identity blocks of post-LN BERT)
  written  the fp32 result plus its copy in the output dtype

The estimate is deliberately simple and errs high; docs/surgery.md compares it with a measurement.
"""

from __future__ import annotations

from surgery.ops.entries import Aki, Built, Entry, Read, Widen, Zero
from surgery.view import Role

# Python + torch + surgery imported, measured with /usr/bin/time on the benchmark machine.
BASELINE_BYTES = 300 * 1024**2


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
        peak, base = _cost(e.base, src_bytes)
        random_split = e.rule.split == "random" and any(a.role is Role.IN for a in e.axes)
        return max(peak, base + (5 if random_split else 2) * out), out
    if isinstance(e, Aki):
        p1, r1 = _cost(e.own, src_bytes)
        p2, r2 = _cost(e.upper, src_bytes)
        return max(p1, r1 + p2, r1 + r2 + out + out // 4), out
    return 3 * out, out


def estimate_peak(plan, src_bytes: dict[str, int], out_elem_bytes: int) -> tuple[int, str, int]:
    """(estimated peak resident bytes, the output tensor that sets it, total output bytes).

    src_bytes: neutral source slot name -> bytes as stored (from the safetensors headers)."""
    worst, worst_name, total = 0, "", 0
    for s in plan.dst_view:
        e = plan.entries[s.name]
        peak, res = _cost(e, src_bytes)
        written = out_elem_bytes * _numel(s.shape(plan.dst_dims))
        total += written
        peak = max(peak, res + written)
        if peak > worst:
            worst, worst_name = peak, s.hf
    return BASELINE_BYTES + worst, worst_name, total
