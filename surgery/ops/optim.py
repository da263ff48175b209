"""Growing Adam's state with the weights.

Rule (chosen deliberately, see docs/surgery.md): every moment follows its weight through the same
mapping, divided by the sum s of the weight factors over the copies of each source entry:
  exp_avg' = exp_avg[src] / s,   exp_avg_sq' = exp_avg_sq[src] / s**2,   step kept.
Under FPI the grown model's gradient on every copy is exactly G[src] / s (writers: s = copy count;
readers, whose weights are divided by the count: s = 1), so these are exactly the moments the
grown model would hold had it been trained from the start; one Adam step on the grown model from
the grown state gives the grown state of the small model's next step (tested). This is
staged-training's m/k, v/k^2 extended to every block: no block is zeroed, so no copy takes the
oversized first steps that zero moments under an old bias-correction step count produce.
Tensors (or padding units) with no source - identity blocks' zeroed outputs, LEMON padding -
get zero moments; a tensor that is wholly new also restarts its step at 0, so Adam's bias
correction gives it an ordinary first step (MSG keeps the step; with zero moments that makes the
first update ~3x the learning rate at beta2=0.999).
"""

from __future__ import annotations

import torch

from surgery.ops.entries import Entry, Source


def grow_state(entries_by_param: dict[str, Entry], src: Source, state: dict[str, dict], dtypes: dict[str, torch.dtype]) -> dict[str, dict]:
    steps = [v["step"] for v in state.values() if isinstance(v, dict) and "step" in v]
    step = max(steps, key=lambda s: float(s)) if steps else torch.tensor(0.0)
    out = {}
    for name, entry in entries_by_param.items():
        dtype = dtypes[name]
        fresh = entry.fresh
        step_t = torch.zeros_like(torch.as_tensor(step, dtype=torch.float32)) if fresh else torch.as_tensor(step).clone()
        out[name] = {
            "exp_avg": entry.moment(src, "exp_avg").to(dtype),
            "exp_avg_sq": entry.moment(src, "exp_avg_sq").to(dtype),
            "step": step_t,
        }
    return out


def optimizer_state_by_name(optimizer: torch.optim.Optimizer, model) -> dict[str, dict]:
    """An Adam(W) optimizer's state keyed by parameter name (the form grow_optimizer_state takes)."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {by_id[id(p)]: dict(s) for p, s in optimizer.state.items() if id(p) in by_id}


def load_optimizer_state(optimizer: torch.optim.Optimizer, model, state: dict[str, dict]) -> None:
    """Put a grown state (by name) into an optimizer built over the grown model's parameters."""
    for name, p in model.named_parameters():
        if name in state:
            # Own copies: AdamW updates moments and the step count in place, so entries that
            # share storage (as grown state may) would be advanced once per parameter.
            optimizer.state[p] = {k: (v if k == "step" else v.to(p.device)).clone() for k, v in state[name].items()}
