"""`surgery run`: plan, pretrain with growth, fine-tune, and say where everything went.

A run folder is never lost without being asked: one holding an unfinished run is continued with
`--resume` or replaced with `--overwrite`, a finished one is replaced only with `--overwrite`, and
two processes never write one folder at once (a lock naming the holder's pid).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from contextlib import nullcontext
from pathlib import Path

from surgery.errors import SurgeryError

DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "demo.grow"

# What `surgery run` writes into a run folder; --overwrite removes exactly these.
RUN_FILES = ("plan.json", "metrics.jsonl", "summary.json", "curves.png", "stages", "final", "checkpoints",
             "finetune", "logs")
LOCK = ".surgery-run.lock"


def default_run_dir(recipe: Path) -> Path:
    """`runs/<path under recipes/>` beside the `recipes` folder the recipe lives in (so recipes
    can name each other's outputs, e.g. `../../runs/ko-bert2bert-mini/S/final`), else
    `runs/<recipe name>` in the current folder."""
    recipe = recipe.resolve()
    for parent in recipe.parents:
        if parent.name == "recipes":
            return parent.parent / "runs" / recipe.relative_to(parent).with_suffix("")
    return Path("runs") / recipe.stem


class RunLock:
    """An exclusive lock on a run folder (filelock: an OS lock the kernel drops when its process
    dies, so a killed run's lock is taken over). The holder's pid sits beside it for the message."""

    def __init__(self, run_dir: Path):
        from filelock import FileLock

        self.pid_file = run_dir / (LOCK + ".pid")
        self.lock = FileLock(run_dir / LOCK, timeout=0)

    def __enter__(self) -> "RunLock":
        from filelock import Timeout

        try:
            self.lock.acquire()
        except Timeout:
            pid = self.pid_file.read_text().strip() if self.pid_file.exists() else "?"
            raise SurgeryError(f"{self.pid_file.parent} is in use by another `surgery run` (pid {pid}); "
                               f"wait for it to end or use another --out") from None
        self.pid_file.write_text(f"{os.getpid()}\n")
        return self

    def __exit__(self, *exc) -> None:
        self.pid_file.unlink(missing_ok=True)
        self.lock.release()


def is_primary() -> bool:
    """The first process of a launch (torchrun, accelerate launch), or the only one: the one that
    guards, clears and writes the run folder and prints."""
    return os.environ.get("RANK", "0") in ("0", "")


def set_threads() -> int:
    """Intra-op threads for this process: OMP_NUM_THREADS when set (torchrun sets 1 when it starts
    several processes and the variable is unset); otherwise the cores this process may use divided
    by the processes on this machine, at least 1, so ranks do not fight over cores."""
    import torch

    if os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        n = max(1, int(os.environ["OMP_NUM_THREADS"]))
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        n = max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def cpu_launch_warning() -> str | None:
    """`accelerate launch --cpu --num_processes N` (without an MPI hostfile) starts ONE process and
    says nothing: its simple launcher sets ACCELERATE_USE_CPU and no WORLD_SIZE. The count asked
    for is read from the launcher's command line (our parent process, Linux /proc)."""
    if "ACCELERATE_USE_CPU" not in os.environ or int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return None
    try:
        argv = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    asked = 1
    for i, arg in enumerate(argv):
        for flag in ("--num_processes", "--num-processes"):
            if arg == flag and i + 1 < len(argv) and argv[i + 1].isdigit():
                asked = int(argv[i + 1])
            elif arg.startswith(flag + "=") and arg.split("=", 1)[1].isdigit():
                asked = int(arg.split("=", 1)[1])
    if asked <= 1:
        return None
    return (f"`accelerate launch` was asked for {asked} processes but started one (on CPU it runs a single "
            f"process); for {asked} use `torchrun --nproc_per_node {asked} -m surgery run ...`")


def run_state(run_dir: Path) -> tuple[str, int | None]:
    """("finished" | "unfinished" | "nothing", the step of its last checkpoint). A run that
    stopped before its first checkpoint (bad data, a stop during tokenization) has nothing to
    continue from and nothing worth keeping: "nothing"."""
    from surgery.train.checkpoint import latest_checkpoint, read_state

    latest = latest_checkpoint(run_dir / "checkpoints")
    step = read_state(latest)["step"] if latest is not None else None
    if (run_dir / "summary.json").exists():
        return "finished", step
    return ("unfinished" if step is not None else "nothing"), step


def command_line(recipe: Path, out: Path, *extra: str) -> str:
    return shlex.join(["surgery", "run", str(recipe), "--out", str(out), *extra])


def check_run_dir(run_dir: Path, recipe: Path, *, resume: bool, overwrite: bool, remove: bool = True) -> None:
    """Refuse what would lose a run; with --overwrite remove everything of the old one (`remove`:
    only the first of several processes removes; all of them refuse alike, reading the same files)."""
    state, step = run_state(run_dir)
    if resume and overwrite:
        raise SurgeryError("--resume and --overwrite contradict each other: choose one")
    if resume:
        if step is None:
            raise SurgeryError(f"--resume: no complete checkpoint in {run_dir / 'checkpoints'}; "
                               f"run without --resume to start afresh")
        return
    if state == "unfinished" and not overwrite:
        raise SurgeryError(f"{run_dir} holds an unfinished run (stopped at step {step}): continue it with "
                           f"`{command_line(recipe, run_dir, '--resume')}` or replace it with --overwrite")
    if state == "finished" and not overwrite:
        raise SurgeryError(f"{run_dir} holds a finished run: replace it with --overwrite (its checkpoints, "
                           f"stages and fine-tuning scores are removed) or choose another --out")
    if not remove:
        return
    for name in RUN_FILES:  # overwrite, or nothing worth keeping: no file of the old run stays
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def run_command(recipe: Path, *, out: Path | None = None, resume: bool = False, dry_run: bool = False,
                finetune: bool = True, quiet: bool = False, seed: int | None = None, overwrite: bool = False,
                report_to: str | None = None, parallel: str | None = None) -> dict:
    from surgery.plan import INPUTS, plan_file
    from surgery.plan_cli import plan_command

    if not recipe.exists() and recipe == Path("recipes/demo.grow"):
        recipe = DEFAULT_RECIPE  # the default works from any folder
    if dry_run:
        plan_command(recipe, json_out=False)
        return {}
    # every file the run reads (corpus, checkpoints, task data) is there before anything is written
    plan = plan_file(recipe, require_inputs=INPUTS if finetune else INPUTS - {"finetune"})
    from surgery.train.console import RunConsole
    from surgery.train.loop import RunInterrupted, Trainer
    from surgery.train.schedule import compile_plan

    if parallel is not None:
        from surgery.plan.chain import objective_key, sharded_problem
        from surgery.train.sharding import PARALLEL

        if parallel not in PARALLEL:
            raise SurgeryError(f"--parallel must be one of {', '.join(PARALLEL)}; got {parallel!r}")
        problem = sharded_problem(plan.stages, objective_key(plan.train.objective), plan.train.freeze is not None) if parallel == "fsdp" else None
        if problem is not None:
            raise SurgeryError(f"--parallel fsdp: {problem}")
        plan = plan.model_copy(update={"train": plan.train.model_copy(update={"parallel": parallel})})
    segments, settings = compile_plan(plan)
    if seed is not None:
        # Another training seed (init, data order, masks, growth) on the recipe's validation batches.
        from dataclasses import replace

        settings = replace(settings, seed=seed, val_seed=settings.seed if settings.val_seed is None else settings.val_seed)
    run_dir = out or default_run_dir(recipe)
    run_dir.mkdir(parents=True, exist_ok=True)
    set_threads()
    # Under torchrun / accelerate launch every process runs this; the first one locks, clears and
    # writes the folder and prints, the others train beside it silently (one bar, one set of lines).
    primary = is_primary()
    ui = RunConsole(quiet=quiet) if primary else RunConsole(quiet=True, console=_silent_console())
    warning = cpu_launch_warning()
    if warning and primary:
        ui.warn(warning)
    with RunLock(run_dir) if primary else nullcontext():
        # Every process refuses alike (the same files), so none is left waiting for the others.
        check_run_dir(run_dir, recipe, resume=resume, overwrite=overwrite, remove=primary)
        trainer = Trainer(segments, settings, run_dir, run_name=plan.name, plan_json=plan.model_dump(mode="json"),
                          resume=resume, quiet=quiet, corpus_base=Path(plan.file).parent, report_to=report_to,
                          console=ui)
        try:
            summary = trainer.run()
        except RunInterrupted as stop:
            if not primary:
                raise SystemExit(130) from None
            saved = "checkpoint saved" if stop.saved else "the checkpoint could not be written (see above)"
            print(f"interrupted ({stop.signal_name}) at step {stop.step}, {saved}; continue with "
                  f"`{command_line(recipe, run_dir, '--resume')}`", file=sys.stderr)
            raise SystemExit(130) from None
        if finetune and plan.finetune:
            from surgery.finetune import finetune as run_task
            from surgery.finetune.params import from_recipe

            scores = {}
            for task in plan.finetune:
                # No bars where there is no terminal: a log file gets the score line below instead.
                scores[task.name] = run_task(run_dir / "final", task.name, run_dir / "finetune" / task.name,
                                             **{"progress": ui.bars, **from_recipe(task.params)})
                shown = ", ".join(f"{k} {v:.2f}" for k, v in scores[task.name].items())
                ui.line(f"fine-tuned {task.name}: {shown}")
            summary["finetune"] = scores
    ui.line(f"run directory: {run_dir}  (metrics.jsonl, curves.png, stages/, final/)")
    return summary


def _silent_console():
    from rich.console import Console

    return Console(file=open(os.devnull, "w"), highlight=False)
