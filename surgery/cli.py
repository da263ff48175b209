"""The `surgery` command line. Each command imports its implementation lazily so that
`surgery plan` stays fast (no torch import) and a user's mistake ends as one line, exit 2."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from surgery.errors import SurgeryError

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
        print(text if text.startswith(("error:",)) or ": error: " in text else f"error: {text}", file=sys.stderr)
        raise typer.Exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise typer.Exit(130)


@app.command()
def plan(
    recipe: Path = typer.Argument(..., help="A .grow recipe file."),
    json_out: bool = typer.Option(False, "--json", help="Print the plan as one JSON object."),
):
    """Dry run: the typed plan, every stage, every shape change, parameter counts and FLOPs."""
    with user_errors():
        from surgery.plan_cli import plan_command

        plan_command(recipe, json_out=json_out)


@app.command()
def run(
    recipe: Path = typer.Argument(Path("recipes/demo.grow"), help="A .grow recipe (default: the demo)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default: runs/<recipe name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run directory's last checkpoint."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print the plan (same as `surgery plan`)."),
    no_finetune: bool = typer.Option(False, "--no-finetune", help="Stop after pretraining."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
):
    """End to end: tokenizer, data, pretraining with growth, checkpoints, fine-tuning, report."""
    with user_errors():
        from surgery.run_cli import run_command

        run_command(recipe, out=out, resume=resume, dry_run=dry_run, finetune=not no_finetune, quiet=quiet)


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
    op: str = typer.Option(..., "--op", help="Growth op: d, f, a, l, da, df, dl (see `surgery plan --help`)."),
    to: str = typer.Option(..., "--to", help="Target dimensions, e.g. layers=12+12,d_model=768,heads=12,d_ff=3072"),
    out: Path = typer.Option(..., "--out", help="Output folder (must not exist or be empty)."),
    seed: int = typer.Option(0, "--seed", help="Seed for random mappings and symmetry breaking."),
):
    """One surgery on a checkpoint folder; the result loads with transformers' from_pretrained."""
    with user_errors():
        from surgery.grow_cli import grow_command

        grow_command(src, op=op, to=to, out=out, seed=seed)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
