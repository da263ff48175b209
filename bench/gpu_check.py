"""GPU check: does `surgery run`'s loop keep a GPU busy, and does growth mid-run behave there?

For T5-Base (12+12 layers, d_model 768) and a 12x768 BERT, in bf16 where the GPU has it:

- tokens/s and MFU of the project's loop (`surgery.train.loop.Trainer`, one stage, no validation or
  checkpoints inside the timed steps) and of a minimal hand loop (plain AdamW, autocast) on the same
  batches and masks;
- one growth mid-run (half the layers, `d(identity)`, into the full model) with the validation loss
  before and after it (equal for T5, whose pre-norm blocks make identity stacking exact);
- with 2+ GPUs, the project's loop again with 2 processes (torchrun, DDP) on the same global batches.

MFU = 6 x parameters x tokens/s / (peak bf16 FLOP/s x GPUs); attention FLOPs are left out and
tokens are the raw text tokens of a step, so it is a lower bound. Prints one table.

    python bench/gpu_check.py [--steps 60] [--batch-size 32] [--seq-len 128]
    python bench/gpu_check.py --small [--two-processes]  # tiny models, a few steps: CPU, seconds (a test)
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

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Dense bf16 peak FLOP/s by device name (vendor figures, no sparsity).
PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12,
         "RTX 4090": 165e12, "RTX 3090": 71e12}

FULL = {"t5-base": (dict(family="t5", layers=12, decoder_layers=12, d_model=768, heads=12, d_ff=3072, vocab=32128),
                    "span_corruption"),
        "bert-12x768": (dict(family="bert", layers=12, d_model=768, heads=12, d_ff=3072, vocab=30522), "mlm")}
SMALL = {"t5-tiny": (dict(family="t5", layers=2, decoder_layers=2, d_model=32, heads=4, d_ff=64, vocab=2000),
                     "span_corruption"),
         "bert-tiny": (dict(family="bert", layers=2, d_model=32, heads=4, d_ff=64, vocab=2000), "mlm")}


def spec_of(fields: dict):
    from surgery.spec import ModelSpec

    return ModelSpec(**fields)


def silent():
    from rich.console import Console

    from surgery.train.console import RunConsole

    return RunConsole(quiet=True, console=Console(file=open(os.devnull, "w")))


def settings_for(objective: str, args, steps: int):
    import torch

    from surgery.train.schedule import RunSettings

    precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return RunSettings(corpus="demo", objective=objective, batch_size=args.batch_size, seq_len=args.seq_len,
                       lr=1e-4, warmup=(0.0, "steps"), val_every=10**9, val_batches=2, log_every=args.log_every,
                       precision=precision, seed=0, max_grad_norm=1.0)


def loop_rate(spec, objective: str, args, out: Path):
    """(tokens/s of the project's loop between its first and last logged step, the trainer)."""
    from surgery.train.loop import Trainer
    from surgery.train.schedule import Segment

    s = settings_for(objective, args, args.steps)
    trainer = Trainer([Segment("M", spec, (0, "steps"), (args.steps, "steps"))], s, out, run_name="gpu-check",
                      quiet=True, console=silent())
    trainer.run()
    if not trainer.acc.is_main_process:
        return None, trainer
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("train_loss") is not None]
    first, last = train[0], train[-1]
    return (last["tokens"] - first["tokens"]) / max(1e-9, last["wall_s"] - first["wall_s"]), trainer


def hand_rate(spec, trainer, args) -> float:
    """A minimal loop on the same batches: model, AdamW, autocast, clip, step; nothing else."""
    import torch

    from surgery.families import build_model
    from surgery.train.bert_objectives import as_model_kind
    from surgery.train.data import step_rng

    dev = trainer.acc.device
    model = as_model_kind(build_model(spec, seed=0), getattr(trainer.objective, "model_kind", "mlm")).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()
    start = args.log_every
    t0 = None
    for step in range(args.steps):
        if step == start:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        idx = trainer.order.indices(step, 0)
        batch = trainer.objective(trainer.train_blocks[idx], step_rng(0, step, 0), block_ids=idx, epoch=0)
        batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = trainer.loss(model, batch)[0]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return trainer.tokens_per_step * (args.steps - start) / (time.perf_counter() - t0)


def growth(spec, objective: str, args, out: Path) -> tuple[float, float]:
    """Half the layers train to the middle of the budget, grow by d(identity) into `spec`, go on:
    (validation loss just before the growth, just after)."""
    from surgery.train.loop import Trainer
    from surgery.train.schedule import Growth, Segment

    half = spec.model_copy(update={"layers": max(1, spec.layers // 2)} | (
        {"decoder_layers": max(1, spec.decoder_layers // 2)} if spec.decoder_layers else {}))
    mid = max(1, args.steps // 2)
    s = settings_for(objective, args, args.steps)
    segs = [Segment("half", half, (0, "steps"), (mid, "steps")),
            Segment("full", spec, (mid, "steps"), (args.steps, "steps"), grow=Growth("d", {"depth": "identity"}))]
    Trainer(segs, s, out, run_name="gpu-check-grow", quiet=True, console=silent()).run()
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    at = next(i for i, r in enumerate(rows) if r.get("event") == "grow")
    return rows[at - 1]["val_loss"], rows[at + 1]["val_loss"]


def two_process_rate(name: str, args) -> float | None:
    """The project's loop with 2 processes (torchrun, one GPU each): tokens/s of the global batch."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
           "--worker", name, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
           "--seq-len", str(args.seq_len)] + (["--small"] if args.small else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode != 0 or not lines:
        print(f"2 processes failed ({out.returncode}): {out.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1])["tokens_per_s"]


def peak_flops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAKS.items() if k in name), None)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="tiny models, a few steps (CPU, seconds)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--two-processes", action="store_true",
                    help="measure 2 processes even without 2 GPUs (CPU: gloo; checks the path, not the speed)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.steps = args.steps or (6 if args.small else 60)
    args.batch_size = args.batch_size or (4 if args.small else 32)
    args.seq_len = args.seq_len or (32 if args.small else 128)
    args.log_every = max(1, args.steps // 6)
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    models = SMALL if args.small else FULL
    if args.worker:  # one rank of two_process_rate
        with tempfile.TemporaryDirectory() as tmp:
            rate, _ = loop_rate(spec_of(models[args.worker][0]), models[args.worker][1], args, Path(tmp) / "w")
        if rate is not None:
            print(json.dumps({"tokens_per_s": rate}))
        return []
    peak = peak_flops()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (text, objective) in models.items():
            spec = spec_of(text)
            ours, trainer = loop_rate(spec, objective, args, Path(tmp) / f"{name}-loop")
            hand = hand_rate(spec, trainer, args)
            before, after = growth(spec, objective, args, Path(tmp) / f"{name}-grow")
            two = two_process_rate(name, args) if gpus >= 2 or args.two_processes else None
            mfu = (lambda r, n=1: 6 * spec.params * r / (peak * n) if peak and r else None)
            rows.append({"model": name, "params": spec.params, "loop_tok_s": ours, "hand_tok_s": hand,
                         "ratio": ours / hand, "loop_mfu": mfu(ours), "hand_mfu": mfu(hand),
                         "val_before_grow": before, "val_after_grow": after, "two_proc_tok_s": two,
                         "two_proc_mfu": mfu(two, 2)})
    device = torch.cuda.get_device_name() if gpus else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device}, GPUs: {gpus}, precision: {settings_for('mlm', args, 1).precision}, "
          f"steps {args.steps}, batch {args.batch_size}, seq_len {args.seq_len}, load {os.getloadavg()[0]:.1f}")
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"
    num = lambda v: "-" if v is None else f"{v:,.0f}"
    head = ("model", "params", "loop tok/s", "hand tok/s", "ratio", "loop MFU", "hand MFU", "val before->after grow",
            "2-proc tok/s", "2-proc MFU")
    table = [head] + [(r["model"], f"{r['params'] / 1e6:.1f}M", num(r["loop_tok_s"]), num(r["hand_tok_s"]),
                       f"{r['ratio']:.3f}", pct(r["loop_mfu"]), pct(r["hand_mfu"]),
                       f"{r['val_before_grow']:.4f} -> {r['val_after_grow']:.4f}", num(r["two_proc_tok_s"]),
                       pct(r["two_proc_mfu"])) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return rows


if __name__ == "__main__":
    main()
