"""Learning curves of a run (Figure 1 of the seed): validation loss against wall time and
against tokens, with the growth points marked."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []


def plot_runs(run_dirs: list[Path], out_file: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    runs = [(Path(d), read_metrics(d)) for d in run_dirs]
    longest = max((r.get("wall_s", 0) for _, rows in runs for r in rows), default=0)
    hours = longest > 7200
    for run_dir, rows in runs:
        val = [r for r in rows if r.get("val_loss") is not None]
        if not val:
            continue
        label = Path(run_dir).name
        for ax, key in zip(axes, ("wall_s", "tokens")):
            scale = 3600 if key == "wall_s" and hours else 1
            line, = ax.plot([r[key] / scale for r in val], [r["val_loss"] for r in val], label=label)
            for g in (r for r in rows if r.get("event") == "grow"):
                ax.axvline(g[key] / scale, color=line.get_color(), ls=":", lw=1)
                ax.text(g[key] / scale, 0.98, f" {g['op']}", transform=ax.get_xaxis_transform(),
                        color=line.get_color(), fontsize=8, ha="left", va="top")
    axes[0].set_xlabel("wall time (h)" if hours else "wall time (s)")
    axes[1].set_xlabel("tokens")
    for ax in axes:
        ax.set_ylabel("validation loss")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    out_file = Path(out_file)
    fig.savefig(out_file, dpi=120)
    plt.close(fig)
    return out_file


def plot_run(run_dir: Path) -> Path:
    return plot_runs([run_dir], Path(run_dir) / "curves.png")
