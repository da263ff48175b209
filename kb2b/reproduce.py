"""Run the Ko-bert2BERT reproduction end to end: pretraining (in dependency order), fine-tuning, report.

    python -m kb2b.reproduce mini            # recipes/ko-bert2bert-mini, ~1 h on a 2-core CPU
    python -m kb2b.reproduce paper --lanes 1 # recipes/ko-bert2bert, on a GPU machine
    python -m kb2b.reproduce mini --dry-run  # print what would run and what is skipped

Pretraining runs in *waves*; a wave is one or more *lanes* run side by side (one process each),
a lane is a list of runs run one after the other, and the next wave starts when every lane of this
one has finished. The waves put the `init-` runs after the T and S runs they load, and pair runs of
about the same length so the two that are compared for time (B and S_init-a_B, per seed) train at the
same time under the same load. Then every run is fine-tuned on the tasks of its recipe's `finetune`
line (the lanes as a pool), then `surgery report` writes the Table 2 report and
`kb2b.headline` the headline numbers.

Resumable: a run whose `summary.json` exists is skipped, one with a checkpoint is continued with
`surgery run --resume`, a task whose `scores.json` exists is skipped. Every subprocess logs to
`runs/<scale>/_logs/<run>.{pretrain,finetune}.log`; this driver prints one timestamped line per
event (run it with nohup and a log file, see kb2b/README.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Job:
    name: str  # run directory name, also the report's row name
    recipe: str  # recipe stem under recipes/<scale>/
    seed: int | None = None  # None: the recipe's own seed
    needs: tuple[str, ...] = ()  # runs whose final/ checkpoint this one loads


def J(name, recipe=None, seed=None, needs=()):
    return Job(name, recipe or name, seed, tuple(needs))


# Waves of lanes of jobs (see the module doc). Table 2's rows, and a second seed of B and S_init-a_B.
WAVES: list[list[list[Job]]] = [
    [[J("S")], [J("T"), J("T_da_B")]],
    [[J("B")], [J("S_init-a_B", needs=["S"])]],
    [[J("B-seed1", "B", seed=1)], [J("S_init-a_B-seed1", "S_init-a_B", seed=1, needs=["S"])]],
    [[J("T_init-da_B", needs=["T"])], [J("S_init-f_B", needs=["S"])]],
    [[J("S_init-a_B_28000steps", needs=["S"]), J("T_d_S_a_B")], [J("T_init-d_S_a_B", needs=["T"]), J("S_a_B")]],
]

# Table 2's row order for the report; extra seeds follow.
TABLE2_ORDER = ["T", "S", "S_a_B", "T_d_S_a_B", "T_da_B", "B", "S_init-a_B_28000steps", "T_init-d_S_a_B",
                "S_init-f_B", "S_init-a_B", "T_init-da_B"]

SCALES = {"mini": "ko-bert2bert-mini", "paper": "ko-bert2bert"}


@dataclass
class Plan:
    scale: str
    root: Path = ROOT
    lanes: int | None = None  # None: as the waves say; 1: everything one after the other
    waves: list[list[list[Job]]] = field(default_factory=lambda: WAVES)
    threads: int | None = 1  # OMP/torch threads per process (None: leave torch's default)
    python: str = sys.executable

    @property
    def recipes(self) -> Path:
        return self.root / "recipes" / SCALES.get(self.scale, self.scale)

    @property
    def runs(self) -> Path:
        return self.root / "runs" / SCALES.get(self.scale, self.scale)

    @property
    def logs(self) -> Path:
        return self.runs / "_logs"

    @property
    def results(self) -> Path:
        return self.root / "kb2b" / f"results-{self.scale}"

    def lane_waves(self) -> list[list[list[Job]]]:
        if self.lanes == 1:  # one lane: the waves' jobs in order
            return [[[job for wave in self.waves for lane in wave for job in lane]]]
        return self.waves

    def jobs(self) -> list[Job]:
        return [job for wave in self.waves for lane in wave for job in lane]

    def run_dir(self, job: Job) -> Path:
        return self.runs / job.name

    def env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.root) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        if self.threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads)
        return env


def say(msg: str) -> None:
    print(time.strftime("%Y-%m-%d %H:%M:%S"), msg, flush=True)


def pretrain_state(plan: Plan, job: Job) -> str:
    """'done' (summary.json), 'resume' (a checkpoint to continue), or 'new'."""
    d = plan.run_dir(job)
    if (d / "summary.json").exists():
        return "done"
    if (d / "checkpoints" / "latest").exists():
        return "resume"
    return "new"


def pretrain_command(plan: Plan, job: Job) -> list[str]:
    cmd = [plan.python, "-m", "surgery", "run", str(plan.recipes / f"{job.recipe}.grow"), "--out", str(plan.run_dir(job)),
           "--no-finetune", "--quiet"]
    if job.seed is not None:
        cmd += ["--seed", str(job.seed)]
    if pretrain_state(plan, job) == "resume":
        cmd.append("--resume")
    return cmd


def run_logged(plan: Plan, cmd: list[str], log: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        return subprocess.call(cmd, cwd=plan.root, env=plan.env(), stdout=f, stderr=subprocess.STDOUT)


def pretrain(plan: Plan, job: Job, dry_run: bool = False) -> bool:
    state = pretrain_state(plan, job)
    if state == "done":
        say(f"pretrain {job.name}: done already, skipped")
        return True
    missing = [n for n in job.needs if not (plan.runs / n / "summary.json").exists()]
    if missing:
        say(f"pretrain {job.name}: NOT RUN, needs {', '.join(missing)} first")
        return False
    cmd = pretrain_command(plan, job)
    say(f"pretrain {job.name}: {'resume' if state == 'resume' else 'start'}" + (f"  ({' '.join(cmd[2:])})" if dry_run else ""))
    if dry_run:
        return True
    t = time.time()
    rc = run_logged(plan, cmd, plan.logs / f"{job.name}.pretrain.log")
    say(f"pretrain {job.name}: {'finished' if rc == 0 else f'FAILED (exit {rc})'} in {time.time() - t:.0f} s")
    return rc == 0


def finetune_tasks(plan: Plan, job: Job) -> list[tuple[str, dict]]:
    from surgery.plan import plan_file

    return [(t.name, dict(t.params)) for t in plan_file(plan.recipes / f"{job.recipe}.grow").finetune]


def finetune_todo(plan: Plan, job: Job) -> list[str]:
    d = plan.run_dir(job)
    return [name for name, _ in finetune_tasks(plan, job) if not (d / "finetune" / name / "scores.json").exists()]


def finetune(plan: Plan, job: Job, dry_run: bool = False) -> bool:
    if not (plan.run_dir(job) / "summary.json").exists():
        say(f"finetune {job.name}: NOT RUN, pretraining did not finish")
        return False
    todo = finetune_todo(plan, job)
    if not todo:
        say(f"finetune {job.name}: done already, skipped")
        return True
    say(f"finetune {job.name}: {', '.join(todo)}")
    if dry_run:
        return True
    t = time.time()
    cmd = [plan.python, "-m", "kb2b.reproduce", "_finetune", str(plan.recipes / f"{job.recipe}.grow"), str(plan.run_dir(job))]
    rc = run_logged(plan, cmd, plan.logs / f"{job.name}.finetune.log")
    say(f"finetune {job.name}: {'finished' if rc == 0 else f'FAILED (exit {rc})'} in {time.time() - t:.0f} s")
    return rc == 0


def take_lock(lock: Path) -> bool:
    """An exclusive lock file holding our pid; a lock whose process is gone is taken over."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            return True
        except FileExistsError:
            try:
                os.kill(int(lock.read_text() or 0), 0)
                return False  # held by a live process
            except (ProcessLookupError, ValueError):
                lock.unlink(missing_ok=True)
            except PermissionError:
                return False
    return False


def finetune_one_run(recipe: Path, run_dir: Path) -> None:
    """Fine-tune RUN_DIR/final on each task of the recipe's `finetune` line not yet scored
    (one process at a time per run: `finetune/.lock`)."""
    lock = run_dir / "finetune" / ".lock"
    if not take_lock(lock):
        print(f"{run_dir}: another process is fine-tuning it ({lock}); skipped", flush=True)
        return
    try:
        _finetune_one_run(recipe, run_dir)
    finally:
        lock.unlink(missing_ok=True)


def _finetune_one_run(recipe: Path, run_dir: Path) -> None:
    import json

    from surgery.finetune import finetune as run_task
    from surgery.finetune.params import from_recipe
    from surgery.plan import plan_file

    for task in plan_file(recipe).finetune:
        out = run_dir / "finetune" / task.name
        if (out / "scores.json").exists():
            continue
        t = time.time()
        scores = run_task(run_dir / "final", task.name, out, **{"progress": False, **from_recipe(task.params)})
        print(f"{task.name}: {json.dumps(scores)}  ({time.time() - t:.0f} s)", flush=True)


def report(plan: Plan, dry_run: bool = False) -> bool:
    order = TABLE2_ORDER + [j.name for j in plan.jobs() if j.name not in TABLE2_ORDER]
    dirs = [plan.runs / n for n in order if (plan.runs / n / "summary.json").exists()]
    missing = [n for n in order if not (plan.runs / n / "summary.json").exists()]
    say(f"report: {len(dirs)} runs" + (f"; PARTIAL, missing {', '.join(missing)}" if missing else "") + f" -> {plan.results}")
    if dry_run or not dirs:
        return not missing
    cmd = [plan.python, "-m", "surgery", "report", *map(str, dirs), "--out", str(plan.results)]
    if (plan.runs / "B" / "summary.json").exists():
        cmd += ["--base", "B"]
    rc = run_logged(plan, cmd, plan.logs / "report.log")
    rc2 = run_logged(plan, [plan.python, "-m", "kb2b.headline", str(plan.runs), "--out", str(plan.results)],
                     plan.logs / "report.log")
    say(f"report: {'written' if rc == rc2 == 0 else 'FAILED'} (log {plan.logs / 'report.log'})")
    return rc == rc2 == 0 and not missing


def finetune_finished(plan: Plan, dry_run: bool = False) -> bool:
    """Fine-tune every run whose pretraining has finished (one at a time); to run beside the
    pretraining waves (`--finetune-only`)."""
    done = [j for j in plan.jobs() if (plan.run_dir(j) / "summary.json").exists()]
    return all([finetune(plan, j, dry_run) for j in done])


def reproduce(plan: Plan, dry_run: bool = False, skip_finetune: bool = False) -> bool:
    say(f"reproduce {plan.scale}: recipes {plan.recipes}, runs {plan.runs}, threads/process {plan.threads}")
    ok = True
    for i, wave in enumerate(plan.lane_waves()):
        say(f"wave {i + 1}: " + " | ".join(" then ".join(j.name for j in lane) for lane in wave))

        def lane_run(lane):
            return all([pretrain(plan, job, dry_run) for job in lane])

        if len(wave) == 1:
            ok &= lane_run(wave[0])
        else:
            with ThreadPoolExecutor(len(wave)) as pool:
                ok &= all(pool.map(lane_run, wave))
    if not skip_finetune:
        width = 1 if plan.lanes == 1 else max(len(w) for w in plan.waves)
        with ThreadPoolExecutor(width) as pool:
            ok &= all(pool.map(lambda j: finetune(plan, j, dry_run), plan.jobs()))
    ok &= report(plan, dry_run)
    say("reproduce: " + ("complete" if ok else "INCOMPLETE (see above)"))
    return ok


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_finetune"]:
        finetune_one_run(Path(argv[1]), Path(argv[2]))
        return 0
    p = argparse.ArgumentParser(prog="python -m kb2b.reproduce", description=__doc__.split("\n\n")[0])
    p.add_argument("scale", choices=sorted(SCALES), help="mini: recipes/ko-bert2bert-mini (CPU); paper: recipes/ko-bert2bert (GPU)")
    p.add_argument("--lanes", type=int, choices=[1, 2], default=None,
                   help="1: one run at a time (default for paper); 2: the waves' pairs side by side (default for mini)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process (mini default 1; paper: torch's default)")
    p.add_argument("--dry-run", action="store_true", help="Only say what would run and what is skipped.")
    p.add_argument("--no-finetune", action="store_true", help="Pretraining and the report only.")
    p.add_argument("--finetune-only", action="store_true",
                   help="Only fine-tune the runs whose pretraining has finished, one at a time (can run beside the main command).")
    p.add_argument("--report-only", action="store_true", help="Only (re)write the report from finished runs.")
    a = p.parse_args(argv)
    mini = a.scale == "mini"
    plan = Plan(a.scale, lanes=a.lanes if a.lanes is not None else (2 if mini else 1),
                threads=a.threads if a.threads is not None else (1 if mini else None))
    if a.finetune_only:
        return 0 if finetune_finished(plan, a.dry_run) else 1
    if a.report_only:
        return 0 if report(plan) else 1
    return 0 if reproduce(plan, dry_run=a.dry_run, skip_finetune=a.no_finetune) else 1


if __name__ == "__main__":
    sys.exit(main())
