"""Benchmark (not a test): stream-grow a T5 of the paper's Small size (12+12, 512, 8 heads, d_ff
1024, vocab 32128) to Base (12+12, 768, 12 heads, d_ff 3072) with `grow_checkpoint`.

Each growth runs in a fresh child process, so its peak RSS (VmHWM) is the growth's own, with
the imports (torch + transformers) measured separately as the baseline.

    python kb2b/bench_grow.py [--ops f,l,a] [--work DIR] [--threads N] [--probe]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(family="t5", layers=12, decoder_layers=12, d_model=512, heads=8, d_ff=1024, vocab=32128)
BASE = dict(family="t5", layers=12, decoder_layers=12, d_model=768, heads=12, d_ff=3072, vocab=32128)

CHILD = """
import json, sys, time

def hwm_kib():
    # VmHWM belongs to this process image (ru_maxrss would carry the parent's peak over fork+exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

t0 = time.perf_counter()
from surgery.ops import grow_checkpoint
from surgery.spec import ModelSpec
base_rss = hwm_kib()
t1 = time.perf_counter()
if sys.argv[1] != "imports-only":
    grow_checkpoint(sys.argv[2], ModelSpec(**json.loads(sys.argv[3])), sys.argv[1], sys.argv[4], seed=0,
                    threads=int(sys.argv[5]) or None)
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "grow_s": t2 - t1, "import_rss_kib": base_rss,
                  "peak_rss_kib": hwm_kib()}))
"""


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def run_child(*args: str) -> dict:
    # THP as `surgery grow` sets it (surgery/cli.py), before torch loads in the child.
    env = {"THP_MEM_ALLOC_ENABLE": "1", **os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, *args], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", default="f,l,a")
    ap.add_argument("--work", default=None)
    ap.add_argument("--probe", action="store_true", help="also load both models and measure the logit change")
    ap.add_argument("--threads", type=int, default=0, help="pipeline workers (default: grow_checkpoint's)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from surgery.families import build_model
    from surgery.io import save_checkpoint
    from surgery.spec import ModelSpec

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_grow_"))
    src = work / "t5-small"
    if not src.exists():
        save_checkpoint(src, build_model(ModelSpec(**SMALL), seed=0))
    base = run_child("imports-only", "", "", "", "0")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB RAM, "
          f"python {platform.python_version()}")
    print(f"source {src}: {folder_bytes(src) / 2**20:.0f} MiB; imports alone: peak RSS "
          f"{base['import_rss_kib'] / 2**10:.0f} MiB")
    print("| op | wall s (growth) | peak RSS MiB | output MiB | peak RSS - imports, as share of output |")
    print("| --- | --- | --- | --- | --- |")
    probes: dict[str, Path] = {}
    for op in args.ops.split(","):
        out = work / f"t5-base-{op}"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        r = run_child(op, str(src), json.dumps(BASE), str(out), str(args.threads))
        size = folder_bytes(out)
        extra = (r["peak_rss_kib"] - base["import_rss_kib"]) * 1024
        print(f"| {op} | {r['grow_s']:.1f} | {r['peak_rss_kib'] / 2**10:.0f} | {size / 2**20:.0f} | "
              f"{extra / 2**20:.0f} MiB = {extra / size:.2f} |", flush=True)
        if args.probe:
            probes[op] = out
    if args.probe:
        from surgery.io import load_checkpoint
        from surgery.ops.probe import relative_change

        small = load_checkpoint(src).model()
        for op, out in probes.items():
            print(f"probe {op}: max relative logit change {relative_change(small, load_checkpoint(out).model(), 32128):.2e}")


if __name__ == "__main__":
    main()
