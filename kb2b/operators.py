"""Growth operators head to head: how much of a scratch run's budget each op needs to reach the
scratch run's loss, over several seeds (`python -m kb2b.operators mini`).

Two pairs, each a small pretrained model grown into a bigger one at step 0 (`grow S init-OP B`)
and trained for the same budget as the bigger model from scratch:

- `t5`: the Ko-bert2BERT pair (seeds/000): T5 Small -> Base, width only (1.5x d_model and heads,
  3x d_ff), span corruption; the headline row (`a`, bert2BERT's AKI) against scratch.
- `bert`: LiGO's Table 1 setting scaled down: BERT Small -> Base, depth 2x and width 1.5x, MLM.

Measurement (per seed k, grown run against the scratch run of the same seed): the target is the
mean of the scratch run's last `TAIL` validation losses (one validation is too noisy a target at
this scale); the share is the step at which the grown run's validation loss first reaches the
target (interpolated between validations) over the scratch run's steps, and the same in wall time
(runs train two side by side, one thread each, so the load is alike but not equal: the step share
is the contention-free figure, every step of a grown run being a Base step). The source model's
own pretraining is not counted (as in the papers); loading and growing it is. The result: mean,
standard deviation and a 95% t-interval over seeds, per op, plus a sweep of the growth point for
one op (`S OP@X B` with S trained from scratch in the run, so its cost is counted).

Resumable run by run (a run with summary.json is skipped, one with a checkpoint resumed).
Recipes are written to RUNS/_recipes/ (the exact text each run trained). `paper` is the same
benchmark at the papers' model sizes for a GPU (one run at a time).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from kb2b.headline import overlap
from kb2b.reproduce import ROOT, say

TAIL = 3  # validations averaged into a run's final loss and the scratch target
BESIDE = 80  # % of a run's time its scratch reference trained too, for its wall-time share to count


@dataclass(frozen=True)
class Pair:
    family: str
    small: str  # model arguments
    base: str
    objective: str
    ops: dict[str, str]  # label -> op as written after `init-` (scratch has no op)
    headline: str | None  # the op given `headline_seeds` seeds, with scratch
    budget: dict | None = None  # the pair's own docs/batch/seq where the scale's are too small for it


@dataclass(frozen=True)
class Scale:
    name: str
    pairs: dict[str, Pair]
    steps: int
    docs: int | None  # corpus articles (None: all)
    batch: int
    seq: int
    val_every: int
    val_batches: int
    seeds: int  # per op
    headline_seeds: int  # scratch and the headline op of a pair that has one
    sweep: tuple[float, ...]  # growth points (share of the budget) of the sweep
    sweep_seeds: int
    lanes: int
    threads: int | None

    def ops(self, pair: str) -> dict[str, str]:
        return {"scratch": "", **self.pairs[pair].ops}


def _pairs(t5: tuple[str, str], bert: tuple[str, str], vocab: int, ramp: int, ligo: int,
           bert_budget: dict | None = None) -> dict[str, Pair]:
    """The two pairs at given sizes (small, base model arguments without the vocabulary)."""

    def ops(width: tuple[str, ...]) -> dict[str, str]:
        return {**{w: w for w in width}, "msg": f"msg(ramp={ramp})", "ligo": f"ligo(steps={ligo})"}

    v = f", vocab={vocab}"
    return {"t5": Pair("t5", t5[0] + v, t5[1] + v, "span_corruption(rate=0.15, mean_span=3)", ops(("f", "a", "l")), "a"),
            "bert": Pair("bert", bert[0] + v, bert[1] + v, "mlm(rate=0.15)", ops(("da", "df", "dl")), None, bert_budget)}


def _mini() -> Scale:
    ramp, ligo = 60, 30
    pairs = _pairs(("layers=3+3, d_model=64, heads=4, d_ff=128", "layers=3+3, d_model=96, heads=6, d_ff=384"),
                   ("layers=2, d_model=64, heads=4, d_ff=256", "layers=4, d_model=96, heads=6, d_ff=384"), 8000, ramp, ligo,
                   # MLM learns from the 15% of tokens it masks: at 8 x 64 on 200 articles neither model left
                   # the unigram plateau in 600 steps, and scratch Base did not beat Small on every seed
                   bert_budget={"docs": 1000, "batch": 16, "seq": 128})
    return Scale("mini", pairs, steps=600, docs=200, batch=8, seq=64, val_every=30, val_batches=8,
                 seeds=3, headline_seeds=5, sweep=(0.1, 0.25, 0.5), sweep_seeds=2, lanes=2, threads=1)


def _paper() -> Scale:
    """Ko-bert2BERT's Small/Base T5 (Table 1) and LiGO's BERT-Small/Base, on a GPU."""
    ramp, ligo = 2000, 100
    pairs = _pairs(("layers=12+12, d_model=512, heads=8, d_ff=1024", "layers=12+12, d_model=768, heads=12, d_ff=3072"),
                   ("layers=6, d_model=512, heads=8, d_ff=2048", "layers=12, d_model=768, heads=12, d_ff=3072"),
                   32000, ramp, ligo)
    return Scale("paper", pairs, steps=100_000, docs=None, batch=128, seq=512, val_every=2000, val_batches=64,
                 seeds=3, headline_seeds=5, sweep=(0.1, 0.25, 0.5), sweep_seeds=1, lanes=1, threads=None)


SCALES = {"mini": _mini, "paper": _paper}


@dataclass(frozen=True)
class Job:
    name: str
    pair: str
    op: str  # label ("scratch", an op label, or "sweep-LABEL@X")
    seed: int
    recipe: str  # the recipe's text
    needs: tuple[str, ...] = ()


def _train_block(sc: Scale, pair: Pair, model: str | None = None) -> str:
    b = {"docs": sc.docs, "batch": sc.batch, "seq": sc.seq, **(pair.budget or {})}
    corpus = f'corpus("ko-pretrain", docs={b["docs"]})' if b["docs"] else 'corpus("ko-pretrain")'
    head = f"train {model} " if model else "train "
    return (f"{head}{sc.steps}steps on {corpus}\n"
            f"    objective {pair.objective}\n"
            f"    optimizer adamw(lr=1e-3, warmup=2%, weight_decay=0.01, schedule=linear)\n"
            f"    val_every={sc.val_every}steps val_batches={sc.val_batches}\n"
            f"    batch_size={b['batch']} seq_len={b['seq']}\n")


def small_name(pair: str) -> str:
    return f"{pair}-S"


def recipe_for(sc: Scale, pair_name: str, label: str, sweep_at: float | None = None) -> str:
    pair = sc.pairs[pair_name]
    models = f"model S = {pair.family}({pair.small})\nmodel B = {pair.family}({pair.base})\n"
    if label == "S":
        return f"model S = {pair.family}({pair.small})\n" + _train_block(sc, pair, "S")
    if label == "scratch":
        return f"model B = {pair.family}({pair.base})\n" + _train_block(sc, pair, "B")
    op = sc.ops(pair_name)[label]
    if sweep_at is not None:  # S from scratch inside the run, grown at the sweep point
        at = max(1, round(sweep_at * sc.steps))
        return models + f"\ngrow S {op}@{at}steps B\n\n" + _train_block(sc, pair)
    # relative to the recipe's folder (RUNS/_recipes), so a moved checkout still resumes
    src = f"../{small_name(pair_name)}/final"
    return models + f'pretrained S = "{src}"\n\ngrow S init-{op} B\n\n' + _train_block(sc, pair)


def sweep_of(sweep_op: str) -> tuple[str, str]:
    """`PAIR:OP` (or `OP`, on the t5 pair) -> (pair, op label)."""
    pair, _, label = sweep_op.rpartition(":")
    return pair or "t5", label


def jobs(sc: Scale, runs: Path, sweep_op: str | None = None, only: set[str] | None = None) -> list[Job]:
    """Every run of the benchmark, in the order they should start: the small models; the headline
    pairs seed by seed (scratch and the headline op side by side, so their wall times compare);
    the other ops seed by seed (each seed's scratch first); the sweep."""
    out: list[Job] = []
    pairs = [p for p in sc.pairs if only is None or p in only]

    def job(p: str, label: str, seed: int) -> Job:
        needs = () if label == "scratch" else (small_name(p),)
        return Job(f"{p}-{label}-s{seed}", p, label, seed, recipe_for(sc, p, label), needs)

    for p in pairs:
        out.append(Job(small_name(p), p, "S", 0, recipe_for(sc, p, "S")))
    headline = [(p, sc.pairs[p].headline) for p in pairs if sc.pairs[p].headline]
    for seed in range(sc.headline_seeds):
        out += [job(p, label, seed) for p, h in headline for label in ("scratch", h)]
    for seed in range(sc.seeds):
        for p in pairs:
            done = ("scratch", sc.pairs[p].headline) if sc.pairs[p].headline else ()
            out += [job(p, label, seed) for label in sc.ops(p) if label not in done]
    if sweep_op:
        p, label = sweep_of(sweep_op)
        for seed in range(sc.sweep_seeds):
            for at in sc.sweep:
                out.append(Job(f"{p}-sweep-{label}@{at:g}-s{seed}", p, f"sweep-{label}@{at:g}", seed,
                               recipe_for(sc, p, label, sweep_at=at)))
    return out


# ------------------------------------------------------------------------------------------------ runner


@dataclass
class Bench:
    scale: Scale
    root: Path = ROOT
    python: str = sys.executable
    lanes: int | None = None

    @property
    def runs(self) -> Path:
        return self.root / "runs" / f"operators-{self.scale.name}"

    @property
    def results(self) -> Path:
        return self.root / "kb2b" / f"results-operators-{self.scale.name}"

    def env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.root) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        if self.scale.threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.scale.threads)
        return env

    def state(self, job: Job | str) -> str:
        d = self.runs / (job if isinstance(job, str) else job.name)
        if (d / "summary.json").exists():
            return "done"
        return "resume" if (d / "checkpoints" / "latest").exists() else "new"

    def command(self, job: Job) -> list[str]:
        recipe = self.runs / "_recipes" / f"{job.name}.grow"
        cmd = [self.python, "-m", "surgery", "run", str(recipe), "--out", str(self.runs / job.name),
               "--no-finetune", "--quiet", "--seed", str(job.seed)]
        return cmd + (["--resume"] if self.state(job) == "resume" else [])

    def write_recipe(self, job: Job) -> None:
        f = self.runs / "_recipes" / f"{job.name}.grow"
        f.parent.mkdir(parents=True, exist_ok=True)
        if f.exists() and f.read_text() != job.recipe and self.state(job) != "new":
            raise SystemExit(f"{f} differs from the benchmark's recipe for a run already started; "
                             f"move {self.runs / job.name} away to rerun it")
        f.write_text(job.recipe)

    def run_one(self, job: Job, dry_run: bool = False) -> bool:
        state = self.state(job)
        if state == "done":
            return True
        if not dry_run:
            self.write_recipe(job)
        cmd = self.command(job)
        say(f"{job.name}: {'resume' if state == 'resume' else 'start'}" + (f"  ({' '.join(cmd[2:])})" if dry_run else ""))
        if dry_run:
            return True
        log = self.runs / "_logs" / f"{job.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        t = time.time()
        with log.open("a") as f:
            f.write(f"\n$ {' '.join(cmd)}\n")
            f.flush()
            rc = subprocess.call(cmd, cwd=self.root, env=self.env(), stdout=f, stderr=subprocess.STDOUT)
        say(f"{job.name}: {'finished' if rc == 0 else f'FAILED (exit {rc}, log {log})'} in {time.time() - t:.0f} s")
        return rc == 0

    def run_all(self, todo: list[Job], dry_run: bool = False) -> bool:
        """Lanes take the next job whose sources are done, in the list's order."""
        lanes = 1 if dry_run else (self.lanes or self.scale.lanes)
        lock, ok, failed = threading.Condition(), [True], set()
        pending, running = list(todo), set()

        def ready(job):
            return all(self.state(n) == "done" or dry_run for n in job.needs)

        def lane():
            while True:
                with lock:
                    while True:
                        if not pending:
                            return
                        blocked = [j for j in pending if any(n in failed for n in j.needs)]
                        for j in blocked:
                            say(f"{j.name}: NOT RUN, its source failed")
                            pending.remove(j)
                            ok[0] = False
                        job = next((j for j in pending if ready(j)), None)
                        if job is not None:
                            pending.remove(job)
                            running.add(job.name)
                            break
                        if not running:  # nothing can become ready
                            for j in pending:
                                say(f"{j.name}: NOT RUN, needs {', '.join(j.needs)}")
                            pending.clear()
                            ok[0] = False
                            return
                        lock.wait()
                good = self.run_one(job, dry_run)
                with lock:
                    running.discard(job.name)
                    if not good:
                        failed.add(job.name)
                        ok[0] = False
                    lock.notify_all()

        threads = [threading.Thread(target=lane) for _ in range(lanes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return ok[0]


# ------------------------------------------------------------------------------------------------ analysis


def val_curve(run_dir: Path) -> list[tuple[int, float, float]]:
    """(step, wall_s, val_loss) of every validation, in order."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r["wall_s"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]


def tail_loss(curve, n: int = TAIL) -> float:
    return statistics.fmean(v for _, _, v in curve[-n:])


def reach(curve, target: float) -> tuple[float, float] | None:
    """(step, wall_s) at which the curve first reaches `target`, linearly interpolated between the
    validation that reaches it and the one before; None when it never does."""
    for i, (step, wall, v) in enumerate(curve):
        if v <= target:
            if i == 0 or curve[i - 1][2] <= target:
                return float(step), float(wall)
            s0, w0, v0 = curve[i - 1]
            f = (v0 - target) / (v0 - v)
            return s0 + f * (step - s0), w0 + f * (wall - w0)
    return None


# two-sided 95% quantiles of Student's t, by degrees of freedom
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def summary(values: list[float]) -> dict:
    """n, mean, standard deviation and the 95% t-interval's half width (None below two values)."""
    n = len(values)
    if not n:
        return {"n": 0}
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if n > 1 else None
    half = _T95.get(n - 1, 1.96) * sd / math.sqrt(n) if sd is not None else None
    return {"n": n, "mean": mean, "sd": sd, "ci95": half, "min": min(values), "max": max(values), "values": values}


def measure(bench: Bench, sweep_op: str | None = None) -> dict:
    sc, runs = bench.scale, bench.runs
    done = lambda name: (runs / name / "summary.json").exists()  # noqa: E731
    out: dict = {"scale": sc.name, "steps": sc.steps, "tail": TAIL, "pairs": {}}
    for p in sc.pairs:
        if not done(small_name(p)):
            continue
        small = tail_loss(val_curve(runs / small_name(p)))
        per_op: dict[str, dict] = {}
        rows = []
        labels = list(sc.ops(p)) + ([f"sweep-{sweep_of(sweep_op)[1]}@{a:g}" for a in sc.sweep]
                                     if sweep_op and sweep_of(sweep_op)[0] == p else [])
        for label in labels:
            steps_pct, wall_pct, finals, margins = [], [], [], []
            for seed in range(max(sc.seeds, sc.headline_seeds, sc.sweep_seeds)):
                ref, run = f"{p}-scratch-s{seed}", f"{p}-{label}-s{seed}"
                if not (done(ref) and done(run)):
                    continue
                ref_curve, curve = val_curve(runs / ref), val_curve(runs / run)
                target = tail_loss(ref_curve)
                ref_summary = json.loads((runs / ref / "summary.json").read_text())
                hit = reach(curve, target)
                row = {"pair": p, "op": label, "seed": seed, "target": target, "final": tail_loss(curve),
                       "small_final": small, "scratch_steps": ref_summary["steps"], "scratch_wall_s": ref_summary["wall_s"],
                       "beside_pct": overlap(runs / ref, runs / run)}
                if hit is not None:
                    row["steps_pct"] = 100 * hit[0] / ref_summary["steps"]
                    row["wall_pct"] = 100 * hit[1] / ref_summary["wall_s"]
                    steps_pct.append(row["steps_pct"])
                    if row["beside_pct"] >= BESIDE:  # only then did both see the same machine load
                        wall_pct.append(row["wall_pct"])
                finals.append(row["final"])
                if label == "scratch":
                    margins.append(small - target)
                rows.append(row)
            if finals:
                per_op[label] = {"steps_pct": summary(steps_pct), "wall_pct": summary(wall_pct),
                                 "final": summary(finals), "reached": f"{len(steps_pct)}/{len(finals)}"}
                if margins:
                    per_op[label]["scratch_beats_small_by"] = summary(margins)
        ref = sc.pairs[p].headline or next(iter(sc.pairs[p].ops))
        out["pairs"][p] = {"small_final": small, "ops": per_op, "runs": rows, "paired_ref": ref,
                           "paired": paired(rows, ref)}
    return out


def paired(rows: list[dict], ref: str) -> dict[str, dict]:
    """Per op, its step share minus the reference op's on the same seed (same scratch target):
    the target's seed noise cancels, so two ops compare more sharply than their means do."""
    share = {(r["op"], r["seed"]): r.get("steps_pct") for r in rows}
    out = {}
    for label in dict.fromkeys(r["op"] for r in rows):
        if label in ("scratch", ref):
            continue
        diffs = [share[(label, k)] - share[(ref, k)] for (op, k) in share
                 if op == label and share[(op, k)] is not None and share.get((ref, k)) is not None]
        if diffs:
            out[label] = summary(diffs)
    return out


def _fmt(s: dict, key: str = "mean", digits: int = 1) -> str:
    if not s.get("n"):
        return "-"
    txt = f"{s['mean']:.{digits}f}"
    if s.get("sd") is not None:
        txt += f" ± {s['sd']:.{digits}f} (95% CI ± {s['ci95']:.{digits}f})"
    return txt


def to_markdown(m: dict) -> str:
    lines = [f"# Growth operators, scale `{m['scale']}` ({m['steps']} steps a run)", "",
             f"Target: the mean of the scratch run's last {m['tail']} validation losses (same seed). "
             "Share: step (and wall time) at which the grown run first reaches it, over the scratch run's; "
             "mean ± standard deviation over seeds, and the 95% t-interval's half width. Wall-time shares "
             f"count only runs that trained beside their scratch run (at least {BESIDE}% of the time; the "
             "`beside` column), since the machine's load changed between runs.", ""]
    for p, d in m["pairs"].items():
        lines += [f"## {p} (small's final loss {d['small_final']:.4f})", "",
                  "| op | seeds reached | % of scratch steps | % of scratch wall time | final loss (mean of last validations) |",
                  "|---|---|---|---|---|"]
        for label, s in d["ops"].items():
            lines.append(f"| {label} | {s['reached']} | {_fmt(s['steps_pct'])} | {_fmt(s['wall_pct'])} | {_fmt(s['final'], digits=4)} |")
        if d.get("paired"):
            lines += ["", f"Paired with `{d['paired_ref']}` on the same seed (op's % of scratch steps minus "
                          f"{d['paired_ref']}'s; negative: faster):", ""]
            lines += [f"- {label}: {_fmt(s)} over {s['n']} seed(s)" for label, s in d["paired"].items()]
        sc = d["ops"].get("scratch", {}).get("scratch_beats_small_by")
        if sc and sc.get("n"):
            lines += ["", f"Scratch Base below Small's final loss by {', '.join(f'{v:.3f}' for v in sc['values'])} "
                          f"(min {sc['min']:.3f}) over {sc['n']} seed(s)."]
        lines += ["", "| run | target | final | % steps | % wall | beside % |", "|---|---|---|---|---|---|"]
        for r in d["runs"]:
            if r["op"] == "scratch":
                continue
            lines.append(f"| {r['pair']}-{r['op']}-s{r['seed']} | {r['target']:.4f} | {r['final']:.4f} | "
                         + (f"{r['steps_pct']:.1f} | {r['wall_pct']:.1f} |" if "steps_pct" in r else "not reached | - |")
                         + f" {r['beside_pct']:.0f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(bench: Bench, m: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(m["pairs"])
    if not pairs:
        return
    fig, axes = plt.subplots(1, len(pairs), figsize=(6.5 * len(pairs), 4.5), squeeze=False)
    for ax, p in zip(axes[0], pairs):
        for label in m["pairs"][p]["ops"]:
            curves = [val_curve(bench.runs / f"{p}-{label}-s{s}") for s in range(10)
                      if (bench.runs / f"{p}-{label}-s{s}" / "summary.json").exists()]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            steps = [c[0] for c in curves[0][:n]]
            vals = [[c[i][2] for c in curves] for i in range(n)]
            mean = [statistics.fmean(v) for v in vals]
            line, = ax.plot(steps, mean, label=f"{label} ({len(curves)})")
            ax.fill_between(steps, [min(v) for v in vals], [max(v) for v in vals], color=line.get_color(), alpha=0.15)
        ax.set_title(f"{p}: validation loss (mean, min-max over seeds)")
        ax.set_xlabel("step")
        ax.set_ylabel("validation loss")
        lo = min(r["final"] for r in m["pairs"][p]["runs"]) if m["pairs"][p]["runs"] else None
        if lo is not None:
            ax.set_ylim(lo - 0.2, lo + 2.0)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)


def report(bench: Bench, sweep_op: str | None) -> Path:
    m = measure(bench, sweep_op)
    out = bench.results
    out.mkdir(parents=True, exist_ok=True)
    (out / "operators.json").write_text(json.dumps(m, indent=1))
    (out / "operators.md").write_text(to_markdown(m))
    plot(bench, m, out)
    say(f"report: {out / 'operators.md'}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kb2b.operators", description=__doc__.split("\n\n")[0])
    p.add_argument("scale", choices=sorted(SCALES), nargs="?", default="mini",
                   help="mini: this CPU, about two hours, two lanes; paper: the papers' sizes on a GPU, one run at a time")
    p.add_argument("--pairs", default=None, help="comma-separated subset of the pairs (t5, bert)")
    p.add_argument("--ops", default=None, help="comma-separated subset of the op labels (scratch is always run)")
    p.add_argument("--sweep", default="t5:a", help="PAIR:OP whose growth point is swept ('' for none)")
    p.add_argument("--lanes", type=int, default=None, help="runs side by side (mini: 2, paper: 1)")
    p.add_argument("--dry-run", action="store_true", help="say what would run; write nothing")
    p.add_argument("--report-only", action="store_true", help="only measure the finished runs and write the report")
    p.add_argument("--root", type=Path, default=ROOT, help="folder holding runs/ and kb2b/ (default: this checkout)")
    a = p.parse_args(argv)
    sc = SCALES[a.scale]()
    # A misspelt pair or op would silently select nothing (and the rest would run): refuse it.
    for flag, given, known in (("--pairs", a.pairs, set(sc.pairs)),
                               ("--ops", a.ops, {label for p in sc.pairs for label in sc.ops(p)}),
                               ("--sweep", a.sweep and sweep_of(a.sweep)[0], set(sc.pairs))):
        unknown = sorted(set(given.split(",")) - known) if given else []
        if unknown:
            p.error(f"{flag}: unknown {', '.join(unknown)}; the {a.scale} scale has {', '.join(sorted(known))}")
    if a.sweep and sweep_of(a.sweep)[1] not in sc.ops(sweep_of(a.sweep)[0]):
        p.error(f"--sweep {a.sweep}: the {sweep_of(a.sweep)[0]} pair has no op {sweep_of(a.sweep)[1]} "
                f"(it has {', '.join(sc.pairs[sweep_of(a.sweep)[0]].ops)})")
    bench = Bench(sc, root=a.root, lanes=a.lanes)
    if not a.report_only:
        todo = jobs(sc, bench.runs, a.sweep or None, set(a.pairs.split(",")) if a.pairs else None)
        if a.ops:
            keep = set(a.ops.split(",")) | {"S", "scratch"}
            todo = [j for j in todo if j.op in keep or j.op.split("@")[0].removeprefix("sweep-") in keep]
        say(f"operators {sc.name}: {len(todo)} runs, {sum(bench.state(j) == 'done' for j in todo)} done, "
            f"runs in {bench.runs}, {bench.lanes or sc.lanes} lane(s), threads/process {sc.threads or 'torch default'}")
        ok = bench.run_all(todo, a.dry_run)
        if a.dry_run:
            return 0
    else:
        ok = True
    report(bench, a.sweep or None)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
