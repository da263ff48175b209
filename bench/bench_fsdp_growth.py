"""Peak memory per rank at a growth step, sharded (parallel=fsdp) against unsharded (ddp).

Two CPU processes (torchrun, gloo) each hold a Llama with AdamW state after one optimizer step,
then do what `surgery run` does at a growth: grow the weights and the AdamW moments (`dl`, depth
and width), build the grown model's optimizer and put the grown state in it.

- `ddp`: every rank holds the whole model and state; growth is surgery.ops.grow_model +
  grow_optimizer_state on its own copy (the loop's DDP path).
- `fsdp`: parameters and moments are FSDP2 shards; growth is surgery.train.sharding.grow (a meta
  model, sharded, filled one tensor at a time from gathered source tensors).

Peak resident memory is read from the kernel (VmHWM, reset through /proc/self/clear_refs just
before the growth), per rank; "growth adds" is that peak minus the resident memory just before.
Each mode runs in fresh processes. Not a test.

    python bench/bench_fsdp_growth.py [--size small|tiny] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMON = dict(family="llama", vocab=8000, head="untied", max_positions=256)
SIZES = {
    # 4 x 512 (13.6M params) -> 8 x 768 (69M params), fp32
    "small": (dict(layers=4, d_model=512, heads=8, kv_heads=8, d_ff=1376),
              dict(layers=8, d_model=768, heads=12, kv_heads=12, d_ff=2048)),
    "tiny": (dict(layers=2, d_model=64, heads=4, kv_heads=4, d_ff=176),
             dict(layers=4, d_model=128, heads=8, kv_heads=8, d_ff=352)),
}


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def worker(mode: str, size: str) -> None:
    import gc

    import torch
    import torch.distributed as dist

    from surgery.families import build_model
    from surgery.ops import grow_model, load_optimizer_state
    from surgery.spec import ModelSpec
    from surgery.train import sharding
    from surgery.train.loop import make_optimizer
    from surgery.train.schedule import RunSettings

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    src, dst = (ModelSpec(**COMMON, **d) for d in SIZES[size])
    settings = RunSettings()
    cpu = torch.device("cpu")
    model = build_model(src, seed=0)
    if mode == "fsdp":
        model = sharding.shard(model, cpu)
    opt = make_optimizer(model, settings)
    ids = torch.randint(0, 8000, (2, 64), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    state = {n: dict(opt.state[p]) for n, p in model.named_parameters() if p in opt.state}
    gc.collect()
    dist.barrier()
    before = _status("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    if mode == "fsdp":
        new, grown = sharding.grow(model, src, dst, "dl", 1, None, state, cpu)
        new_opt = make_optimizer(new, settings)
        sharding.load_optimizer_state(new_opt, new, grown)
    else:
        result = grow_model(model, src, dst, "dl", seed=1)
        new, grown = result.model, result.grow_optimizer_state(state)
        new_opt = make_optimizer(new, settings)
        load_optimizer_state(new_opt, new, grown)
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM")
    del grown
    gc.collect()
    after = _status("VmRSS")
    params = sum(p.numel() for p in new.parameters())  # DTensors count their global size
    row = {"mode": mode, "rank": rank, "rss_before": before, "peak": peak, "growth_adds": peak - before,
           "rss_after": after, "seconds": round(seconds, 2), "src_params": src.params, "dst_params": params}
    rows = [None] * dist.get_world_size()
    dist.all_gather_object(rows, row)
    if rank == 0:
        print("ROWS " + json.dumps(rows), flush=True)
    dist.destroy_process_group()


def launch(mode: str, size: str) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).resolve()), "--worker", mode, "--size", size]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{out.stderr[-4000:]}")
    line = next(l for l in out.stdout.splitlines() if l.startswith("ROWS "))
    return json.loads(line[5:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--worker", choices=("ddp", "fsdp"))
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker, a.size)
        return
    rows = launch("ddp", a.size) + launch("fsdp", a.size)
    mib = lambda b: f"{b / 2**20:,.0f}"
    first = rows[0]
    print(f"growth dl: {first['src_params'] / 1e6:.1f}M -> {first['dst_params'] / 1e6:.1f}M params (fp32, AdamW), "
          f"2 CPU ranks, OMP_NUM_THREADS=1")
    print(f"{'mode':<6}{'rank':>5}{'RSS before MiB':>16}{'peak MiB':>10}{'growth adds MiB':>17}{'RSS after MiB':>15}"
          f"{'s':>7}")
    for r in rows:
        print(f"{r['mode']:<6}{r['rank']:>5}{mib(r['rss_before']):>16}{mib(r['peak']):>10}{mib(r['growth_adds']):>17}"
              f"{mib(r['rss_after']):>15}{r['seconds']:>7}")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
