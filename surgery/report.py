"""`surgery report`: finished runs side by side, as Table 2 of the seed, and their learning curves.

A run directory holds `summary.json` and `metrics.jsonl` (from `surgery run`) and, per fine-tuned
task, `finetune/<task>/scores.json`. Columns follow Table 2: train time, its ratio to the Base
run, validation loss, each task's scores and the paper's average. One more column answers the
seed's headline question directly: the wall time at which a run first reached the Base run's
final validation loss, as a share of Base's time.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from surgery.errors import SurgeryError
from surgery.train.curves import plot_runs, read_metrics

# Table 2's score columns: (task, score key, header).
SCORE_COLUMNS = (
    ("klue-nli", "accuracy", "NLI Acc"),
    ("korquad-ext", "exact_match", "Ext EM"),
    ("korquad-ext", "f1", "Ext F1"),
    ("korquad-gen", "exact_match", "Gen EM"),
    ("korquad-gen", "f1", "Gen F1"),
    ("news-summ", "rouge_l", "ROUGE-L"),
)


@dataclass
class RunRow:
    name: str
    wall_s: float
    steps: int
    tokens: int
    val_loss: float | None
    curve: list[tuple[float, float]]  # (wall_s, val_loss)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)

    def time_to_reach(self, target: float) -> float | None:
        return next((t for t, v in self.curve if v <= target), None)

    @property
    def average(self) -> float | None:
        from surgery.metrics import table2_average

        try:
            return table2_average(self.scores)
        except SurgeryError:
            return None


def load_run(run_dir: Path) -> RunRow:
    run_dir = Path(run_dir)
    summary_file = run_dir / "summary.json"
    if not summary_file.exists():
        raise SurgeryError(f"{run_dir} is not a finished run (no summary.json): run `surgery run` first")
    summary = json.loads(summary_file.read_text())
    rows = read_metrics(run_dir)
    curve = [(r["wall_s"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    scores = {}
    for f in sorted((run_dir / "finetune").glob("*/scores.json")):
        data = json.loads(f.read_text())
        data = data.get("scores", data) if isinstance(data.get("scores"), dict) else data  # finetune nests them
        scores[f.parent.name] = {k: v for k, v in data.items() if isinstance(v, (int, float))}
    return RunRow(run_dir.name, summary["wall_s"], summary["steps"], summary["tokens"],
                  summary.get("final_val_loss"), curve, scores)


def build_table(runs: list[RunRow], base: str | None) -> tuple[list[str], list[list[str]]]:
    base_row = next((r for r in runs if r.name == base), None)
    if base is not None and base_row is None:
        raise SurgeryError(f"--base {base}: no run of that name among {', '.join(r.name for r in runs)}")
    header = ["Model", "Train time (h)", "Ratio (/Base)", "Valid loss", "To Base loss (/Base)",
              *[c[2] for c in SCORE_COLUMNS], "Avrg. score"]
    body = []
    for r in runs:
        ratio = f"{100 * r.wall_s / base_row.wall_s:.2f}" if base_row else "-"
        reach = "-"
        if base_row and base_row.val_loss is not None:
            t = r.time_to_reach(base_row.val_loss)
            reach = f"{100 * t / base_row.wall_s:.2f}" if t is not None else "not reached"
        scores = [r.scores.get(task, {}).get(key) for task, key, _ in SCORE_COLUMNS]
        body.append([
            r.name, f"{r.wall_s / 3600:.3f}", ratio, f"{r.val_loss:.4f}" if r.val_loss is not None else "-", reach,
            *[f"{s:.2f}" if s is not None else "-" for s in scores],
            f"{r.average:.2f}" if r.average is not None else "-",
        ])
    return header, body


# Shorter headers for the terminal only (Markdown and CSV keep Table 2's), explained in a caption.
SHORT = {"Train time (h)": "Time h", "Ratio (/Base)": "Time %B", "Valid loss": "Val loss",
         "To Base loss (/Base)": "Reach %B", "Avrg. score": "Avg"}
CAPTION = "%B: percent of the Base run's train time; Reach: time to reach Base's final val loss"


def terminal_tables(header: list[str], body: list[list[str]], title: str, width: int) -> list:
    """The table as it fits `width` columns: columns that are empty in every run are left out, and
    when the rest is still too wide it is cut into several tables, each led by the Model column.
    Names and numbers are never cut or wrapped."""
    from rich import box
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table

    keep = [i for i in range(len(header)) if i == 0 or any(row[i] not in ("-", "") for row in body)]

    def table(cols: list[int], title: str | None) -> Table:
        t = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        for i in cols:
            name = SHORT.get(header[i], header[i])
            t.add_column(name, justify="left" if i == 0 else "right", no_wrap=True,
                         min_width=max([len(name)] + [len(row[i]) for row in body]))
        for row in body:
            t.add_row(*(row[i] for i in cols))
        return t

    def fits(cols: list[int]) -> bool:
        probe = Console(width=10_000)
        return Measurement.get(probe, probe.options, table(cols, None)).maximum <= width

    groups, current = [], [0]
    for i in keep[1:]:
        if len(current) > 1 and not fits(current + [i]):
            groups.append(current)
            current = [0]
        current.append(i)
    groups.append(current)
    return [table(cols, title if n == 0 else None) for n, cols in enumerate(groups)]


def write_report(run_dirs: list[Path], out_dir: Path, base: str | None = None, console=None) -> dict[str, Path]:
    from rich.console import Console

    if not run_dirs:
        raise SurgeryError("name at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    if base is None and any(r.name == "B" for r in runs):
        base = "B"
    header, body = build_table(runs, base)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    title = "Runs (Table 2 layout)" + (f", ratios against {base}" if base else "")
    console = console or Console()
    tables = terminal_tables(header, body, title, console.width)
    for table in tables:
        console.print(table)
    if any(c.header in SHORT.values() and c.header.endswith("%B") for t in tables for c in t.columns):
        console.print(CAPTION)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(row) + " |" for row in body]
    files = {"markdown": out_dir / "report.md", "csv": out_dir / "report.csv",
             "png": out_dir / "curves.png", "svg": out_dir / "curves.svg"}
    files["markdown"].write_text("\n".join(md) + "\n")
    with files["csv"].open("w", newline="") as f:
        csv.writer(f).writerows([header, *body])
    plot_runs([Path(d) for d in run_dirs], files["png"])
    plot_runs([Path(d) for d in run_dirs], files["svg"])
    return files
