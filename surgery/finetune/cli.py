"""`surgery finetune`: run tasks one after another, print their scores and the Table 2 average."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from surgery.errors import SurgeryError
from surgery.finetune.run import finetune
from surgery.finetune.tasks import TASKS
from surgery.metrics import TABLE2_AVERAGED, table2_average


def parse_tasks(text: str) -> list[str]:
    names = list(TASKS) if text.strip() == "all" else [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise SurgeryError(f"unknown task {', '.join(unknown) or repr(text)}: choose from {', '.join(TASKS)} or 'all'")
    return names


def output_root(checkpoint: Path, out: Path | None) -> Path:
    """Where fine-tuning writes: --out, else beside the run the checkpoint belongs to (a run's
    final/ -> RUN/finetune, a stage folder -> RUN/finetune-stages/STAGE); never into the checkpoint
    or anywhere outside a run unasked."""
    if out is not None:
        return out
    ckpt = checkpoint.resolve()
    if (ckpt.parent / "plan.json").is_file() and ckpt.name == "final":
        return ckpt.parent / "finetune"
    if ckpt.parent.name == "stages" and (ckpt.parent.parent / "plan.json").is_file():
        return ckpt.parent.parent / "finetune-stages" / ckpt.name
    raise SurgeryError(f"{checkpoint} is not a run's final/ or stage folder: say where to write with --out "
                       "(fine-tuning never writes into the checkpoint)")


def finetune_command(checkpoint: Path, task: str, out: Path | None, **params) -> dict[str, dict[str, float]]:
    from surgery.checkpoints import resolve_source

    names = parse_tasks(task)
    checkpoint = resolve_source(checkpoint)
    root = output_root(checkpoint, out)
    params = {k: v for k, v in params.items() if v is not None}
    results = {name: finetune(checkpoint, name, root / name, **params) for name in names}
    table = Table(title=f"fine-tuning {checkpoint}")
    for column in ("task", "score", "value"):
        table.add_column(column)
    for name, scores in results.items():
        for metric, value in scores.items():
            table.add_row(name, metric, f"{value:.2f}")
    if all(t in results for t, _ in TABLE2_AVERAGED):
        table.add_row("average", "Table 2 (NLI acc, Ext F1, Gen F1, ROUGE-L)", f"{table2_average(results):.2f}")
    Console().print(table)
    return results
