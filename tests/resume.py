"""Stop a training run part way and resume it: the check every resumable feature shares."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file


def run(segments, settings, out: Path, corpus_base: Path, **kw) -> dict:
    from surgery.train.loop import Trainer

    return Trainer(segments, settings, out, run_name="t", quiet=True, corpus_base=corpus_base, **kw).run()


def stop_and_resume(segments, settings, out: Path, corpus_base: Path, stop: int) -> dict:
    """Run to step `stop` in `out`, then resume there to the end; the resumed run's summary."""
    run(segments, settings, out, corpus_base, stop_after_step=stop)
    return run(segments, settings, out, corpus_base, resume=True)


def same_final_weights(a: Path, b: Path) -> bool:
    x, y = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
