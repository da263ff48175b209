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
):
    """Fine-tune a checkpoint on the study's downstream tasks; scores.json per task, Table 2 average."""
    with user_errors():
        from surgery.finetune.cli import finetune_command

        finetune_command(
            checkpoint, task, out, epochs=epochs, limit=limit, batch_size=batch_size, lr=lr, seed=seed, device=device
        )


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
