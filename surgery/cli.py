"""The `surgery` command line. Each command imports its implementation lazily so that
`surgery plan` stays fast (no torch import) and a user's mistake ends as one line, exit 2."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from surgery.errors import SurgeryError
from surgery.help_text import syntax_help

app = typer.Typer(
    help="Grow transformer language models by recipe: plan, grow, run, fine-tune, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@contextmanager
def user_errors():
    """Turn a user's mistake into `error: ...` on stderr and exit status 2."""
    try:
        yield
    except SurgeryError as err:
        text = str(err)
        if os.environ.get("RANK", "0") not in ("0", ""):  # several processes: the first one says it
            raise typer.Exit(2)
        print(text if text.startswith(("error:",)) or ": error: " in text else f"error: {text}", file=sys.stderr)
        raise typer.Exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise typer.Exit(130)


@contextmanager
def _imports_uncollected():
    """Import with Python's cyclic garbage collector off, then move everything imported out of its
    reach (gc.freeze): importing torch creates ~10^6 long-lived objects that the collector would
    otherwise traverse again and again (about 10% of a small `surgery grow`'s CPU time). Memory
    is still freed by reference counting; the collector runs as usual afterwards."""
    import gc

    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


PLAN_HELP = """Dry run: the typed plan, every stage, every shape change, parameter counts and FLOPs.

Checks the recipe and prints its plan; a mistake is reported as FILE:LINE:COL with a caret and
exit status 2. Nothing is loaded or trained (the checkpoint of `pretrained` need not exist yet).

""" + syntax_help()


@app.command(help=PLAN_HELP)
def plan(
    recipe: Path = typer.Argument(..., help="A .grow recipe file."),
    json_out: bool = typer.Option(
        False, "--json", help="Print the plan as one JSON object: models (dims, params, hf_config), stages, train, finetune, cost."
    ),
):
    with user_errors():
        from surgery.plan_cli import plan_command

        plan_command(recipe, json_out=json_out)


@app.command()
def run(
    recipe: Path = typer.Argument(Path("recipes/demo.grow"), help="A .grow recipe (default: the demo)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default: runs/<recipe name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run directory's last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run directory's earlier run (finished or "
                                   "not): its checkpoints, stages, metrics and fine-tuning scores are removed."),
    report_to: Optional[str] = typer.Option(None, "--report-to", help="Log to a tracker: tensorboard, wandb or mlflow "
                                            "(offline, under RUN/logs), or none (default: the recipe's report_to)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print the plan (same as `surgery plan`)."),
    no_finetune: bool = typer.Option(False, "--no-finetune", help="Stop after pretraining."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars (event lines still print)."),
    seed: Optional[int] = typer.Option(
        None, "--seed", help="Override the recipe's training seed (init, data order, masks); validation batches stay the recipe's."
    ),
    parallel: Optional[str] = typer.Option(
        None, "--parallel", help="Several processes: ddp (each holds the whole model) or fsdp (parameters and AdamW "
        "state sharded); default: the recipe's parallel."
    ),
):
    """End to end: tokenizer, data, pretraining with growth, checkpoints, fine-tuning, report."""
    with user_errors():
        from surgery.run_cli import run_command

        run_command(recipe, out=out, resume=resume, dry_run=dry_run, finetune=not no_finetune, quiet=quiet,
                    seed=seed, overwrite=overwrite, report_to=report_to, parallel=parallel)


@app.command()
def report(
    runs: list[Path] = typer.Argument(..., help="Run directories made by `surgery run`."),
    out: Path = typer.Option(Path("report"), "--out", help="Folder for report.md, report.csv and the curves."),
    base: Optional[str] = typer.Option(None, "--base", help="Run that ratios refer to (default: a run named B)."),
):
    """Table-2-style comparison of finished runs (terminal, Markdown, CSV) and their learning curves."""
    with user_errors():
        from surgery.report import write_report

        files = write_report(runs, out, base=base)
        print("wrote " + ", ".join(str(f) for f in files.values()))


@app.command()
def grow(
    src: Path = typer.Argument(..., help="Checkpoint folder: config.json + *.safetensors."),
    op: str = typer.Option(..., "--op", help="Growth op: d, f, a, l, da, df, dl, d(identity); or a compression op: factorize, share "
                         "(share(attention|ffn|all, init=mean|first|middle)), distil."),
    to: str = typer.Option(..., "--to", help="Target dimensions, e.g. layers=12+12,d_model=768,heads=12,d_ff=3072"),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (must not exist or be empty)."),
    seed: int = typer.Option(0, "--seed", help="Seed for random mappings and symmetry breaking."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Read only the safetensors headers: print the plan, "
                                 "bytes to read and write and the peak memory the growth will need; write nothing."),
    probe: bool = typer.Option(True, "--probe/--no-probe", help="Load both models afterwards and report how far "
                               "the function moved (needs both models in memory; skip it for big checkpoints)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Workers, each making a tensor and writing "
                                          "it in place (default: the usable CPUs, at most 4); the output is the same for any N."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Output dtype: float32, bfloat16 or float16 "
                                        "(default: the source's; the growth arithmetic is fp32 either way)."),
):
    """One surgery on a checkpoint folder; the result loads with transformers' from_pretrained."""
    # Before torch loads (it reads this once): the growth allocates GBs of short-lived large tensors,
    # and transparent huge pages cut the cost of faulting them in by about a third.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    with user_errors():
        with _imports_uncollected():
            from surgery.grow_cli import (
                check_stream_options,
                dry_run_command,
                grow_command,
            )
            from surgery.io import load_checkpoint  # noqa: F401  torch, while the collector is off
            from surgery.ops import grow_checkpoint  # noqa: F401

        check_stream_options(threads, dtype)
        if dry_run:
            dry_run_command(src, op=op, to=to, seed=seed, threads=threads, dtype=dtype)
            return
        if out is None:
            raise SurgeryError("--out is needed (or --dry-run)")
        grow_command(src, op=op, to=to, out=out, seed=seed, probe=probe, threads=threads, dtype=dtype)


@app.command()
def finetune(
    checkpoint: Path = typer.Argument(..., help="Checkpoint folder: config.json, *.safetensors and its tokenizer."),
    task: str = typer.Option(..., "--task", help="klue-nli, korquad-ext, korquad-gen, news-summ; comma-separated or 'all'."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default CHECKPOINT/finetune); one subfolder per task."),
    epochs: int = typer.Option(3, "--epochs", help="Training epochs."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Cap training and eval examples, for quick runs."),
    batch_size: int = typer.Option(16, "--batch-size"),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (default 5e-5 encoders, 3e-4 T5)."),
    seed: int = typer.Option(42, "--seed"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if present)."),
    save_model: bool = typer.Option(False, "--save-model", help="Also save the fine-tuned model (OUT/TASK/model)."),
    teacher: Optional[Path] = typer.Option(None, "--teacher", help="TinyBERT task-specific distillation from this fine-tuned model (or a --save-model output folder): layer losses, then prediction loss."),
    distil_epochs: Optional[int] = typer.Option(None, "--distil-epochs", help="Epochs of the layer-loss phase with --teacher (default: --epochs)."),
    train_data: Optional[Path] = typer.Option(None, "--train-data", help="The task's training file in the shared data's format (default: ../shared/data)."),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help="The task's evaluation file (default: ../shared/data)."),
):
    """Fine-tune a checkpoint on the study's downstream tasks; scores.json per task, Table 2 average."""
    with user_errors():
        from surgery.finetune.cli import finetune_command

        finetune_command(
            checkpoint, task, out, epochs=epochs, limit=limit, batch_size=batch_size, lr=lr, seed=seed, device=device,
            save_model=save_model or None, teacher=teacher, distil_epochs=distil_epochs, train_data=train_data,
            eval_data=eval_data,
        )


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
