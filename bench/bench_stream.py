"""Streaming growth of a checkpoint bigger than comfortable memory: a randomly initialised Llama of
~1.1B parameters (TinyLlama's shape: 22 layers, d_model 2048, 32 heads / 4 kv heads, d_ff 5632,
vocab 32000, untied head), fp32 in shards of at most 1 GB, grown by `dl` to ~2.3B parameters
(32 layers, d_model 2560, 40 heads / 5 kv heads, d_ff 6912) with `surgery grow --no-probe`.

Measures peak resident memory and wall time with /usr/bin/time -v, compares with the time to simply
read the source's bytes and write the output's bytes (the physical floor), and prints the dry run's
estimate. Not a test: needs ~25 GB free under --work (default /tmp/surgery-bench) and minutes.

    python bench/bench_stream.py [--work /tmp/surgery-bench] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = dict(layers=22, d_model=2048, heads=32, kv_heads=4, d_ff=5632, vocab=32000, head="untied", max_positions=2048)
TO = "layers=32,d_model=2560,heads=40,kv_heads=5,d_ff=6912"
SHARD = 1024**3


def make_source(folder: Path) -> None:
    """Write the source checkpoint tensor by tensor (never the whole model in memory)."""
    import torch
    from transformers import LlamaConfig

    from surgery.families import LLAMA, Layout
    from surgery.io import TensorTask, save_checkpoint
    from surgery.spec import ModelSpec

    spec = ModelSpec(family="llama", **SRC)
    layout = Layout("LlamaForCausalLM", untied_head=True)
    dims = LLAMA.dims(spec, {})
    gen = torch.Generator().manual_seed(0)

    def make(shape, norm):
        return (1.0 + 0.1 * torch.randn(shape, generator=gen)) if norm else torch.randn(shape, generator=gen) * 0.02

    tasks = [TensorTask(s.hf, s.shape(dims), torch.float32, (lambda sh=s.shape(dims), n=s.name.endswith("norm.w"): make(sh, n)))
             for s in LLAMA.view(spec, layout)]
    config = LlamaConfig(**spec.hf_config()).to_dict()
    config["architectures"] = ["LlamaForCausalLM"]
    save_checkpoint(folder, tasks, config, shard_bytes=SHARD)
    print(f"source: {spec.params:,} parameters, {sum(t.nbytes for t in tasks) / 1e9:.2f} GB in "
          f"{len(list(folder.glob('*.safetensors')))} shards")


def timed(cmd: list[str], env: dict) -> tuple[float, int, str]:
    """(wall seconds, peak RSS KiB, stdout) of cmd under /usr/bin/time -v."""
    t0 = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
    return wall, rss, r.stdout


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
    ap.add_argument("--work", type=Path, default=Path("/tmp/surgery-bench"))
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints afterwards")
    args = ap.parse_args()
    work = args.work
    src, out, floor = work / "llama-1.1b", work / "llama-2.3b", work / "floor.bin"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    if not (src / "model.safetensors.index.json").is_file():
        shutil.rmtree(src, ignore_errors=True)
        t0 = time.perf_counter()
        sys.path.insert(0, str(ROOT))
        make_source(src)
        print(f"made the source in {time.perf_counter() - t0:.0f} s")
    shutil.rmtree(out, ignore_errors=True)
    floor.unlink(missing_ok=True)

    base = [sys.executable, "-m", "surgery", "grow", str(src), "--op", "dl", "--to", TO]
    wall_dry, rss_dry, dry = timed(base + ["--dry-run"], env)
    print(dry)
    print(f"dry run: {wall_dry:.1f} s, peak RSS {rss_dry / 1024:.0f} MiB")
    wall_imp, rss_imp, _ = timed([sys.executable, "-c", "import surgery.ops, surgery.io"], env)
    print(f"imports alone: {wall_imp:.1f} s, peak RSS {rss_imp / 1024:.0f} MiB")

    wall, rss, text = timed(base + ["--out", str(out), "--no-probe"], env)
    src_bytes = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    out_bytes = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    shards = sorted(f.stat().st_size for f in out.glob("*.safetensors"))
    print(f"grow dl: {wall:.1f} s wall, peak RSS {rss / 1024:.0f} MiB; read {src_bytes / 1e9:.2f} GB, "
          f"wrote {out_bytes / 1e9:.2f} GB in {len(shards)} shards (largest {shards[-1] / 1e9:.2f} GB)")

    wall_floor, rss_floor, _ = timed([sys.executable, "-c", FLOOR, str(src), str(floor), str(out_bytes)], env)
    print(f"floor (read the source bytes, write as many bytes as the output): {wall_floor:.1f} s, "
          f"peak RSS {rss_floor / 1024:.0f} MiB")
    print(f"grow / floor: {wall / wall_floor:.1f}x")

    index = json.loads((out / "model.safetensors.index.json").read_text())
    from_headers = subprocess.run([sys.executable, "-c",
                                   "import sys; from surgery.io import load_checkpoint; c = load_checkpoint(sys.argv[1]); "
                                   "print(c.spec.describe(), c.spec.params)", str(out)],
                                  capture_output=True, text=True, env=env).stdout.strip()
    print(f"output: {from_headers}; {len(index['weight_map'])} tensors")
    result = dict(grow_wall_s=round(wall, 1), grow_peak_rss_mib=round(rss / 1024), floor_wall_s=round(wall_floor, 1),
                  imports_peak_rss_mib=round(rss_imp / 1024), dry_run_peak_rss_mib=round(rss_dry / 1024),
                  src_gb=round(src_bytes / 1e9, 2), out_gb=round(out_bytes / 1e9, 2), out_shards=len(shards))
    print(json.dumps(result))
    floor.unlink(missing_ok=True)
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
