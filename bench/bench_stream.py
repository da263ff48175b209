"""Streaming growth of a checkpoint bigger than comfortable memory, against the physical floor.

`--size large`: a randomly initialised Llama of ~1.1B parameters (TinyLlama's shape: 22 layers,
d_model 2048, 32 heads / 4 kv heads, d_ff 5632, vocab 32000, untied head), fp32 in 5 shards of at
most 1 GiB, grown to ~2.3B (32 layers, d_model 2560, 40 heads / 5 kv heads, d_ff 6912); `--size
small` (a few minutes): 16 layers, 1024, 16 / 4 heads, d_ff 2816 (0.25B, 4 shards) grown to 24
layers, 1280, 20 / 5 heads, d_ff 3520 (0.50B). Each op of `--ops` runs as `surgery grow --no-probe`
(`f`/`l` keep the depth).

Measures peak resident memory and wall time with /usr/bin/time -v, compares with the time to simply
read the source's bytes and write the output's bytes (the physical floor), and prints the dry run's
estimate. Not a test: the large size needs ~25 GB free under --work (default /tmp/surgery-bench).

    python bench/bench_stream.py [--size large|small] [--ops dl,f] [--threads N] [--repeat K] [--work DIR] [--keep]
                                 [--settle S] [--cold]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# size -> (source dims, `--to` of the target); both keep vocab 32000 and the untied head.
SIZES = {
    "large": (dict(layers=22, d_model=2048, heads=32, kv_heads=4, d_ff=5632),
              "layers=32,d_model=2560,heads=40,kv_heads=5,d_ff=6912", 1024**3),  # 1.10B -> 2.33B, 5 shards
    "small": (dict(layers=16, d_model=1024, heads=16, kv_heads=4, d_ff=2816),
              "layers=24,d_model=1280,heads=20,kv_heads=5,d_ff=3520", 256 * 1024**2),  # 0.25B -> 0.50B, 4 shards
}
COMMON = dict(vocab=32000, head="untied", max_positions=2048)


def make_source(folder: Path, dims: dict, shard: int) -> None:
    """Write the source checkpoint tensor by tensor (never the whole model in memory)."""
    import torch
    from transformers import LlamaConfig

    from surgery.families import FAMILIES
    from surgery.io import TensorTask, save_checkpoint
    from surgery.spec import ModelSpec

    LLAMA = FAMILIES["llama"]
    spec = ModelSpec(family="llama", **dims, **COMMON)
    layout = LLAMA.plan_layout(spec)
    dims = LLAMA.dims(spec, {})
    gen = torch.Generator().manual_seed(0)

    def make(shape, norm):
        return (1.0 + 0.1 * torch.randn(shape, generator=gen)) if norm else torch.randn(shape, generator=gen) * 0.02

    tasks = [TensorTask(s.hf, s.shape(dims), torch.float32, (lambda sh=s.shape(dims), n=s.name.endswith("norm.w"): make(sh, n)))
             for s in LLAMA.view(spec, layout)]
    config = LlamaConfig(**spec.hf_config()).to_dict()
    config["architectures"] = ["LlamaForCausalLM"]
    save_checkpoint(folder, tasks, config, shard_bytes=shard)
    print(f"source: {spec.params:,} parameters, {sum(t.nbytes for t in tasks) / 1e9:.2f} GB in "
          f"{len(list(folder.glob('*.safetensors')))} shards")


def timed(cmd: list[str], env: dict, settle: float = 0.0, evict: list[Path] = ()) -> tuple[float, int, str]:
    """(wall seconds, peak RSS KiB, stdout) of cmd under /usr/bin/time -v, started with no dirty
    pages left over from an earlier step (so each step pays for its own writeback only) and
    `settle` seconds after the previous step freed its memory (SETTLE_S). Its CPU time (user + sys,
    all threads) is left in CPU[0]: on a shared machine it moves less than the wall time. evict:
    files dropped from the page cache first (the source, read from the disk then)."""
    os.sync()
    for f in evict:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    time.sleep(settle)
    t0 = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
    CPU[0] = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", r.stderr).group(1)) for k in ("User", "System"))
    return wall, rss, r.stdout


CPU = [0.0]
# Every timed growth and floor starts this long after the step before it deleted its output. A VM
# with free page reporting (this one: Firecracker, page_reporting enabled) hands freed memory back
# to its host a few seconds after it is freed, and the first touch of such memory costs about twice
# as much: the floor alone took 4.2-5.0 s right after a 6.6 GB file was deleted and 7.7-8.5 s when
# started 8-15 s later (5.7-6.0 s after 3-5 s). Without the wait the floor, started a moment after
# the growth's output is deleted, ran on memory still held from the host while the growth, started
# seconds after the floor's, did not. 10 s puts both in the settled state, the one a user's command
# starts in.
SETTLE_S = 10.0


FLOOR = r"""
import sys, os
src, out, nbytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
chunk = 64 << 20
buf = bytearray(chunk)
view = memoryview(buf)
for name in sorted(os.listdir(src)):
    if name.endswith(".safetensors"):
        with open(os.path.join(src, name), "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
left = nbytes
with open(out, "wb", buffering=0) as f:
    while left:
        n = min(chunk, left)
        f.write(view[:n])
        left -= n
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=SIZES, default="large")
    ap.add_argument("--ops", default="dl,f", help="comma-separated growth ops to time (f and l grow width only)")
    ap.add_argument("--threads", type=int, default=None, help="surgery grow --threads (default: its own)")
    ap.add_argument("--repeat", type=int, default=1, help="growth/floor pairs per op; medians are reported")
    ap.add_argument("--work", type=Path, default=Path("/tmp/surgery-bench"))
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints afterwards")
    ap.add_argument("--cold", action="store_true",
                    help="evict the source from the page cache before each timed growth and floor (read from the disk)")
    ap.add_argument("--settle", type=float, default=SETTLE_S,
                    help="seconds to wait before each timed growth and floor (see SETTLE_S; 0: none)")
    args = ap.parse_args()
    work = args.work
    dims, to, shard = SIZES[args.size]
    src, floor = work / f"llama-{args.size}", work / "floor.bin"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; each timed step starts {args.settle:g} s "
          f"after the previous one (--settle)")
    if not (src / "config.json").is_file():
        shutil.rmtree(src, ignore_errors=True)
        t0 = time.perf_counter()
        sys.path.insert(0, str(ROOT))
        make_source(src, dims, shard)
        print(f"made the source in {time.perf_counter() - t0:.0f} s")
    wall_imp, rss_imp, _ = timed([sys.executable, "-c", "import surgery.ops, surgery.io"], env)
    print(f"imports alone: {wall_imp:.1f} s, CPU {CPU[0]:.1f} s, peak RSS {rss_imp / 1024:.0f} MiB")
    src_bytes = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    results = []
    for op in args.ops.split(","):
        # f and l change width only: keep the source's depth.
        op_to = to if op.startswith("d") else ",".join(p for p in to.split(",") if not p.startswith("layers="))
        out = work / f"grown-{op}"
        shutil.rmtree(out, ignore_errors=True)
        base = [sys.executable, "-m", "surgery", "grow", str(src), "--op", op, "--to", op_to]
        if args.threads is not None:
            base += ["--threads", str(args.threads)]
        wall_dry, rss_dry, dry = timed(base + ["--dry-run"], env)
        estimate = re.search(r"memory: about ([\d.]+ \w+)", dry)
        print(f"[{op}] dry run: {wall_dry:.1f} s, peak RSS {rss_dry / 1024:.0f} MiB, "
              f"estimate {estimate.group(1) if estimate else '?'}")
        walls, floors, rsss, loads, cpus, cpus_floor = [], [], [], [], [], []
        for trial in range(args.repeat):
            # Growth and floor alternate, so each pair sees about the same machine.
            loads.append(os.getloadavg()[0])
            evict = sorted(src.glob("*.safetensors")) if args.cold else []
            wall, rss, text = timed(base + ["--out", str(out), "--no-probe"], env, args.settle, evict)
            cpu = CPU[0]
            out_bytes = sum(f.stat().st_size for f in out.glob("*.safetensors"))
            shards = sorted(f.stat().st_size for f in out.glob("*.safetensors"))
            shutil.rmtree(out, ignore_errors=True)  # the floor writes as many bytes: give it the same disk
            floor.unlink(missing_ok=True)
            wall_floor, _, _ = timed([sys.executable, "-c", FLOOR, str(src), str(floor), str(out_bytes)], env,
                                     args.settle, evict)
            cpu_floor = CPU[0]
            floor.unlink(missing_ok=True)
            cpus.append(cpu)
            cpus_floor.append(cpu_floor)
            walls.append(wall)
            floors.append(wall_floor)
            rsss.append(rss)
            print(f"[{op}] grow: {wall:.1f} s wall, peak RSS {rss / 1024:.0f} MiB; read {src_bytes / 1e9:.2f} GB, "
                  f"wrote {out_bytes / 1e9:.2f} GB in {len(shards)} shards; floor (read the source bytes, write as "
                  f"many bytes as the output): {wall_floor:.1f} s; grow / floor {wall / wall_floor:.2f}x; "
                  f"CPU (user+sys) grow {cpu:.1f} s, floor {cpu_floor:.1f} s; "
                  f"load {loads[-1]:.1f} -> {os.getloadavg()[0]:.1f}", flush=True)
        wall, wall_floor = statistics.median(walls), statistics.median(floors)
        results.append(dict(op=op, size=args.size, grow_wall_s=round(wall, 1), floor_wall_s=round(wall_floor, 1),
                            ratio=round(wall / wall_floor, 2), trials=len(walls),
                            # each growth over the floor run right after it: the machine's minute-to-minute
                            # swings (the floor alone moves 2x here) cancel within a pair
                            pair_ratios=[round(w / f, 2) for w, f in zip(walls, floors)],
                            pair_ratio_median=round(statistics.median(w / f for w, f in zip(walls, floors)), 2),
                            grow_cpu_s=round(statistics.median(cpus), 1),
                            floor_cpu_s=round(statistics.median(cpus_floor), 1),
                            grow_peak_rss_mib=round(max(rsss) / 1024),
                            dry_run_estimate=estimate.group(1) if estimate else None,
                            imports_peak_rss_mib=round(rss_imp / 1024), src_gb=round(src_bytes / 1e9, 2),
                            out_gb=round(out_bytes / 1e9, 2), threads=args.threads, settle_s=args.settle, cold=args.cold,
                            load=[round(x, 1) for x in loads]))
    for r in results:
        print(json.dumps(r))
    if not args.keep:
        shutil.rmtree(src, ignore_errors=True)


if __name__ == "__main__":
    main()
