"""The seed's two headline numbers, measured from finished runs (`python -m kb2b.headline RUNS_ROOT --out DIR`).

1. Time to Base's loss: the wall time at which a run's validation loss first reaches the final
   validation loss of Base trained from scratch (B), as a share of B's whole wall time (paper:
   S_init-a_B 50.2%). Measured per seed against the B run of the same seed (B / S_init-a_B,
   B-seed1 / S_init-a_B-seed1); `first` is the first validation at or below the target (what
   `surgery report` prints), `interp` interpolates linearly between that validation and the one
   before it. `steps` is the same share counted in optimizer steps, which CPU contention does not
   disturb (for S_init-a_B every step is a B step, so it is the contention-free time ratio).
   Reuse accounting as in the paper: the source model's (S's) own pretraining time is not counted;
   loading and growing its checkpoint is (it lies inside the run's wall time).
2. Score gain at equal time: Table 2 average of a run minus B's, for runs that train the same
   budget as B (paper: T_init-da_B +2.62).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from surgery.report import load_run
from surgery.train.curves import read_metrics

PAIRS = [("B", "S_init-a_B"), ("B-seed1", "S_init-a_B-seed1")]
EQUAL_TIME = ["S_init-f_B", "S_init-a_B", "T_init-da_B", "T_init-d_S_a_B"]
PAPER = {"S_init-a_B": 50.21, "T_init-da_B gain": 2.62}
# Table 2 of the seed: row -> (n, train epochs or steps, train time h, ratio /Base %, valid loss, average score).
PAPER_TABLE2 = {
    "T": (1, "5", 6.6, 28.21, 1.1845, 66.27), "S": (2, "5", 11.6, 49.57, 1.1487, 69.40),
    "S_a_B": (3, "2-3", 18.7, 79.91, 1.1346, 69.71), "T_d_S_a_B": (4, "1-1-3", 17.2, 73.50, 1.1221, 70.63),
    "T_da_B": (5, "2-3", 15.7, 67.09, 1.1146, 70.91), "B": (6, "5", 23.4, 100.0, 1.0994, 69.74),
    "S_init-a_B_28000steps": (7, "28000", 11.75, 50.21, 1.0986, 70.17),
    "T_init-d_S_a_B": (8, "2-3", 23.4, 100.0, 1.0383, 71.49), "S_init-f_B": (9, "5", 23.4, 100.0, 1.0146, 71.59),
    "S_init-a_B": (10, "5", 23.4, 100.0, 1.0076, 71.70), "T_init-da_B": (11, "5", 23.4, 100.0, 0.9870, 72.36),
}


def val_curve(run_dir: Path) -> list[tuple[float, int, float]]:
    return [(r["wall_s"], r["step"], r["val_loss"]) for r in read_metrics(run_dir) if r.get("val_loss") is not None]


def time_to_reach(curve, target: float) -> dict | None:
    """First validation at or below `target`: its wall time and step, and the wall time
    interpolated linearly from the validation before it."""
    for i, (t, step, v) in enumerate(curve):
        if v <= target:
            interp = t
            if i > 0 and curve[i - 1][2] > target:
                t0, _, v0 = curve[i - 1]
                interp = t0 + (t - t0) * (v0 - target) / (v0 - v)
            return {"wall_s": t, "step": step, "wall_s_interp": interp}
    return None


def interval(run_dir: Path) -> tuple[float, float]:
    """When a run trained, in epoch seconds: summary.json's mtime minus its wall time, to the mtime."""
    import json as _json

    f = Path(run_dir) / "summary.json"
    end = f.stat().st_mtime
    return end - _json.loads(f.read_text())["wall_s"], end


def overlap(base_dir: Path, run_dir: Path) -> float:
    """Share of the run's training time during which the base run trained too (100: same load)."""
    (b0, b1), (r0, r1) = interval(base_dir), interval(run_dir)
    return 100 * max(0.0, min(b1, r1) - max(b0, r0)) / max(1e-9, r1 - r0)


def reach_ratio(base_dir: Path, run_dir: Path) -> dict:
    base, run = load_run(base_dir), load_run(run_dir)
    hit = time_to_reach(val_curve(run_dir), base.val_loss)
    out = {"run": run.name, "base": base.name, "target_val_loss": base.val_loss, "base_wall_s": base.wall_s,
           "base_steps": base.steps, "run_wall_s": run.wall_s, "run_final_val_loss": run.val_loss}
    out["overlap_with_base_pct"] = overlap(base_dir, run_dir)
    if hit is None:
        return {**out, "reached": False}
    return {**out, "reached": True, "first_pct": 100 * hit["wall_s"] / base.wall_s,
            "interp_pct": 100 * hit["wall_s_interp"] / base.wall_s, "steps_pct": 100 * hit["step"] / base.steps,
            "reach_wall_s": hit["wall_s"], "reach_step": hit["step"]}


def spread(values: list[float]) -> dict:
    return {"values": values, "mean": statistics.fmean(values), "min": min(values), "max": max(values),
            "n": len(values)} if values else {"values": [], "n": 0}


def headline(root: Path) -> dict:
    root = Path(root)
    have = {d.name for d in root.iterdir() if (d / "summary.json").exists()} if root.exists() else set()
    result: dict = {"paper": PAPER, "time_to_base_loss": [], "all_runs_vs_B": [], "score_gain_vs_B": {}}
    for b, s in PAIRS:
        if b in have and s in have:
            result["time_to_base_loss"].append(reach_ratio(root / b, root / s))
    if "B" in have:
        for name in sorted(have - {"B"}):
            result["all_runs_vs_B"].append(reach_ratio(root / "B", root / name))
        others = [r for r in result["all_runs_vs_B"] if r["reached"] and not r["run"].startswith(("B", "S_init-a_B"))]
        # by steps: the wall times of runs that did not train beside B saw another machine load
        result["best_other"] = min(others, key=lambda r: r["steps_pct"]) if others else None
    reached = [r for r in result["time_to_base_loss"] if r["reached"]]
    result["S_init-a_B_ratio"] = {k: spread([r[k] for r in reached]) for k in ("first_pct", "interp_pct", "steps_pct")}
    avgs = {n: load_run(root / n).average for n in have}
    bases = [avgs[b] for b, _ in PAIRS if avgs.get(b) is not None]
    result["averages"] = avgs
    result["B_average"] = spread(bases)
    for name in EQUAL_TIME:
        runs = [n for n in (name, f"{name}-seed1") if avgs.get(n) is not None]
        if runs and bases:
            gains = [avgs[n] - avgs[b] for n, (b, _) in zip(runs, PAIRS) if avgs.get(b) is not None] \
                if name == "S_init-a_B" else [avgs[name] - sum(bases) / len(bases)] if avgs.get(name) is not None else []
            result["score_gain_vs_B"][name] = spread(gains)
    return result


def to_markdown(h: dict) -> str:
    lines = ["# Headline numbers (kb2b.headline)", "",
             "Time to reach the Base run's final validation loss, as % of Base's wall time (paper: S_init-a_B 50.21%).",
             "Source-model pretraining time not counted (as in the paper); checkpoint load and growth are.", "",
             "| run | base | target loss | reached at (first val, % wall) | interpolated (% wall) | steps (% of base steps) | run's final loss | trained beside base (%) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in h["time_to_base_loss"] + ([h["best_other"]] if h.get("best_other") else []):
        if r["reached"]:
            lines.append(f"| {r['run']} | {r['base']} | {r['target_val_loss']:.4f} | {r['first_pct']:.1f} | "
                         f"{r['interp_pct']:.1f} | {r['steps_pct']:.1f} | {r['run_final_val_loss']:.4f} | {r['overlap_with_base_pct']:.0f} |")
        else:
            lines.append(f"| {r['run']} | {r['base']} | {r['target_val_loss']:.4f} | not reached | - | - | {r['run_final_val_loss']:.4f} | {r['overlap_with_base_pct']:.0f} |")
    for k, s in h["S_init-a_B_ratio"].items():
        if s["n"]:
            lines.append(f"\nS_init-a_B {k}: mean {s['mean']:.1f}, range {s['min']:.1f}-{s['max']:.1f} over {s['n']} seed(s)")
    lines += ["", "All runs against B (seed 0). Wall-time shares compare only where the run trained beside B "
              "(last column near 100); otherwise the machine load differed (shared 2-core CPU) and the step share is the fairer one "
              "(exact for runs whose every step is a B step: the init- rows).", "",
              "| run | reached at (% of B wall) | interpolated | steps % | trained beside B (%) |", "|---|---|---|---|---|"]
    for r in h["all_runs_vs_B"]:
        lines.append(f"| {r['run']} | " + (f"{r['first_pct']:.1f} | {r['interp_pct']:.1f} | {r['steps_pct']:.1f} |"
                                           if r["reached"] else "not reached | - | - |") + f" {r['overlap_with_base_pct']:.0f} |")
    lines += ["", "Score gain at equal time (Table 2 average minus B's; paper: T_init-da_B +2.62):", ""]
    b = h["B_average"]
    if b["n"]:
        lines.append(f"B average: {', '.join(f'{v:.2f}' for v in b['values'])} (mean {b['mean']:.2f})")
    for name, s in h["score_gain_vs_B"].items():
        if s["n"]:
            lines.append(f"- {name}: {', '.join(f'{v:+.2f}' for v in s['values'])}" + (f" (mean {s['mean']:+.2f})" if s["n"] > 1 else ""))
    return "\n".join(lines) + "\n"


def paper_vs_ours(root: Path) -> str:
    """Table 2's time ratio, validation loss and average beside ours, row by row (`-`: not run)."""
    root = Path(root)
    base = load_run(root / "B") if (root / "B" / "summary.json").exists() else None
    lines = ["| n | Model | epochs/steps | paper ratio (/Base) | ours ratio (/Base) | paper valid loss | ours valid loss | "
             "paper loss - Base | ours loss - Base | paper avg | ours avg | paper avg - Base | ours avg - Base |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, (n, ep, _h, ratio, loss, avg) in PAPER_TABLE2.items():
        run = load_run(root / name) if (root / name / "summary.json").exists() else None
        pb = PAPER_TABLE2["B"]
        cells = [str(n), name, ep, f"{ratio:.2f}"]
        cells.append(f"{100 * run.wall_s / base.wall_s:.2f}" if run and base else "-")
        cells += [f"{loss:.4f}", f"{run.val_loss:.4f}" if run and run.val_loss is not None else "-"]
        cells += [f"{loss - pb[4]:+.4f}", f"{run.val_loss - base.val_loss:+.4f}" if run and base else "-"]
        cells += [f"{avg:.2f}", f"{run.average:.2f}" if run and run.average is not None else "-"]
        cells += [f"{avg - pb[5]:+.2f}",
                  f"{run.average - base.average:+.2f}" if run and base and run.average is not None and base.average is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m kb2b.headline")
    p.add_argument("root", type=Path, help="folder of run directories, e.g. runs/ko-bert2bert-mini")
    p.add_argument("--out", type=Path, default=None, help="write headline.md and headline.json here")
    a = p.parse_args(argv)
    h = headline(a.root)
    md = to_markdown(h)
    print(md)
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "headline.md").write_text(md)
        (a.out / "headline.json").write_text(json.dumps(h, indent=1, default=str))
        (a.out / "paper_vs_ours.md").write_text(paper_vs_ours(a.root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
