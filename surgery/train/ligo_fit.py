"""A ligo growth inside a run: the operator is fitted on the run's own batches and loss, at the
growth, atomically, and its steps count as the run's steps.

Accounting: the fit takes the N steps right after the growth point from the grown model's stage
(steps s..s+N-1 of the run, their batches and masks exactly as training would draw them); the run's
step and token counters advance by N, the learning-rate curve goes on from s+N, and the grown model
trains the rest of its stage. Nothing is checkpointed during the fit: a run resumed from the
checkpoint at the growth point fits again on the same batches under the same seeded randomness
(the global RNG is left untouched by the fit), so it ends exactly where an uninterrupted run ends.
The grown model's AdamW starts fresh (the small model's moments do not map through a learned
operator).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from surgery.errors import SurgeryError
from surgery.train.data import step_rng


def grow_in_run(trainer, model, src_spec, dst_spec, growth, seed: int, opt_state=None):
    """The ligo op inside a run (catalog.OPS["ligo"].in_run): fitted on the run's batches; AdamW
    restarts after it, whatever optimizer_on_grow says."""
    return fit_in_run(trainer, model, src_spec, dst_spec, growth, seed), None


def fit_in_run(trainer, model, src_spec, dst_spec, growth, seed: int):
    """Grow `model` by ligo for `trainer` (surgery.train.loop.Trainer); returns the grown model."""
    from surgery.catalog import OBJECTIVES_WITHOUT_GROWTH
    from surgery.ops.ligo import grow_ligo

    obj = trainer.s.objective
    key = "span(sbo=true)" if obj == "span" and trainer.s.objective_params.get("sbo") else obj
    if key in OBJECTIVES_WITHOUT_GROWTH:  # the plan refuses it too
        raise SurgeryError(f"ligo with objective {key}: {OBJECTIVES_WITHOUT_GROWTH[key]} reads the model's weights "
                           "besides its forward call, which the fit cannot follow")
    opts = dict(growth.options)
    n = int(opts.pop("steps", 100))
    lr = float(opts.pop("lr", 1e-3))
    select = opts.pop("select", "stack")
    layers = opts.pop("layers", None)
    at = trainer.ligo_at  # (index of the segment being entered, TrainState) or None (a teacher rebuilt on resume)
    st = at[1] if at is not None else None
    start = st.step if st is not None else 0
    if at is not None:
        index = at[0]
        end = trainer.bounds[index][1]
        if start + n >= end:
            raise SurgeryError(f"ligo(steps={n}) at step {start} leaves {trainer.segments[index].name} no step of its "
                               f"own (its stage ends at step {end}); use fewer steps or grow earlier")
    s, dev = trainer.s, trainer.acc.device
    spe = trainer.order.steps_per_epoch

    def batches():
        for k in range(n):
            step = start + k
            micro = []
            for m in range(s.grad_accum):
                idx = trainer.order.indices(step, m)
                b = trainer.objective(trainer.train_blocks[idx], step_rng(s.seed, step, m), block_ids=idx, epoch=step // spe)
                micro.append({key: v.to(dev) for key, v in b.items()})
            yield micro

    def loss_fn(m, batch):
        with trainer.acc.autocast():
            return trainer.objective.loss(m, trainer.aux, batch)[0]

    t0 = time.perf_counter()
    devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        # Dropout during the fit: a function of (seed, growth step), whatever ran before.
        torch.manual_seed(int(np.random.default_rng([s.seed, 104729, start]).integers(2**62)))
        result = grow_ligo(model, src_spec, dst_spec, loss_fn=loss_fn, batches=batches(), steps=n, lr=lr,
                           seed=seed, select=select, layers=layers, device=dev)
    wall = time.perf_counter() - t0
    if st is not None:
        st.step += n
        st.tokens += n * trainer.tokens_per_step
        name = trainer.segments[at[0]].name
        trainer.log({"event": "ligo", "stage": at[0], "model": name, "from_step": start, "step": st.step,
                     "tokens": st.tokens, "fit_steps": n, "loss_first": result.losses[0], "loss_last": result.losses[-1],
                     "operator_params": result.operator.num_parameters(), "fit_s": round(wall, 3)})
        trainer.ui.line(f"step {st.step:>6}  ligo: fitted the growth operator ({result.operator.num_parameters():,} "
                        f"parameters) on steps {start}..{st.step - 1}: loss {result.losses[0]:.4f} -> "
                        f"{result.losses[-1]:.4f}, {wall:.1f} s")
    return result.model
