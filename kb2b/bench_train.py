"""Benchmark: tokens/s of `surgery run`'s loop against a minimal hand-written loop over the same
`transformers` model and the same batches, on this machine.

    python -m kb2b.bench_train [--steps 60] [--batch-size 16] [--seq-len 128] [--procs 1,2]

The surgery figure is read from its own metrics.jsonl (tokens and wall time between the first
and the last logged training step, so data preparation and the final save are left out); the
hand loop times the same steps (same batches and masks, made in the loop) with plain AdamW,
no validation, no logging, no checkpoints.
Validation and checkpoints are pushed past the end so both loops do the same work.
`--procs 1,2` also runs the surgery loop under `torchrun --nproc_per_node 2` (DDP, gloo on CPU) on
the same global batches and reports its tokens/s; each process gets OMP_NUM_THREADS (default:
the usable cores divided by the process count, as `surgery run` does).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from surgery.spec import ModelSpec
from surgery.train.data import step_rng
from surgery.train.loop import Trainer
from surgery.train.schedule import RunSettings, Segment

SPEC = ModelSpec(family="t5", layers=4, decoder_layers=4, d_model=96, heads=6, d_ff=256, vocab=2000)


def surgery_tokens_per_s(settings: RunSettings, steps: int, out: Path) -> tuple[float, Trainer]:
    trainer = Trainer([Segment("B", SPEC, (0, "steps"), (steps, "steps"))], settings, out, run_name="bench", quiet=True)
    trainer.run()
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("train_loss") is not None]
    first, last = train[0], train[-1]
    return (last["tokens"] - first["tokens"]) / (last["wall_s"] - first["wall_s"]), trainer


def hand_tokens_per_s(trainer: Trainer, settings: RunSettings, steps: int) -> float:
    from surgery.families import build_model

    model = build_model(SPEC, seed=settings.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr)
    t0, start_step = None, settings.log_every
    for s in range(steps):
        if s == start_step:
            t0 = time.perf_counter()
        # Masking happens inside the timed loop in both, as any pretraining loop must do it.
        batch = trainer.objective(trainer.train_blocks[trainer.order.indices(s, 0)], step_rng(settings.seed, s, 0))
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return trainer.tokens_per_step * (steps - start_step) / (time.perf_counter() - t0)


def procs_rate(n: int, args) -> float | None:
    """tokens/s of the surgery loop with n processes (torchrun), best of `repeats`."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(max(1, usable // n))))
    best = None
    for _ in range(args.repeats):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), "-m",
               "kb2b.bench_train", "--worker", "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--seq-len", str(args.seq_len)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
        if out.returncode != 0 or not lines:
            print(f"{n} processes failed: {out.stderr[-2000:]}", file=sys.stderr)
            return None
        rate = json.loads(lines[-1])["tokens_per_s"]
        best = rate if best is None else max(best, rate)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--procs", default="1", help="process counts for the surgery loop, e.g. 1,2")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    settings = RunSettings(corpus="demo", batch_size=args.batch_size, seq_len=args.seq_len, lr=1e-3,
                           val_every=10**9, val_batches=1, log_every=10, warmup=(0.0, "steps"))
    if args.worker:  # one rank under torchrun: the first prints the rate
        from surgery.run_cli import set_threads

        set_threads()
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer([Segment("B", SPEC, (0, "steps"), (args.steps, "steps"))], settings, Path(tmp) / "w",
                              run_name="bench", quiet=True)
            trainer.run()
            if trainer.acc.is_main_process:
                rows = [json.loads(l) for l in (Path(tmp) / "w" / "metrics.jsonl").read_text().splitlines()]
                train = [r for r in rows if r.get("train_loss") is not None]
                rate = (train[-1]["tokens"] - train[0]["tokens"]) / (train[-1]["wall_s"] - train[0]["wall_s"])
                print(json.dumps({"tokens_per_s": rate}))
        return
    counts = [int(c) for c in args.procs.split(",")]
    from surgery.run_cli import set_threads

    set_threads()  # as `surgery run`: OMP_NUM_THREADS, else the usable cores
    # Alternate the two, best of `repeats` each, so a busy machine slows both alike.
    ours, hand = 0.0, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            rate, trainer = surgery_tokens_per_s(settings, args.steps, Path(tmp) / f"run{r}")
            ours = max(ours, rate)
            hand = max(hand, hand_tokens_per_s(trainer, settings, args.steps))
    result = {"model": SPEC.describe(), "params": SPEC.params, "steps": args.steps,
              "batch_size": args.batch_size, "seq_len": args.seq_len, "threads": torch.get_num_threads(),
              "surgery_tokens_per_s": round(ours), "hand_loop_tokens_per_s": round(hand),
              "ratio": round(ours / hand, 3)}
    for n in counts:
        if n > 1:
            rate = procs_rate(n, args)
            result[f"surgery_{n}proc_tokens_per_s"] = round(rate) if rate else None
    result["load_average"] = os.getloadavg()[0]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
