"""What `surgery run` shows while it works.

On a terminal: a progress bar for the current stage, and above it one line per event (validation,
growth, stage end, fine-tuning score, warnings). Redirected to a file or a pipe: the same event
lines and no bars, so a log reads as the list of what happened rather than the last frame of a
bar. rich decides what a terminal is (and drops colours where there is none).
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn


class RunConsole:
    def __init__(self, quiet: bool = False, console: Console | None = None):
        self.console = console or Console(highlight=False)
        self.bars = self.console.is_terminal and not quiet
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=self.console,
            disable=not self.bars, transient=True,
        )
        self._task = None

    def __enter__(self) -> "RunConsole":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def bar(self, description: str, total: int, completed: int) -> None:
        if self._task is None:
            self._task = self.progress.add_task(description, total=total, completed=completed, info="")
        self.progress.update(self._task, description=description, total=total, completed=completed)

    def advance(self, completed: int, info: str) -> None:
        if self._task is not None:
            self.progress.update(self._task, completed=completed, info=info)

    def line(self, text: str) -> None:
        """One event; `text` is rich markup (escape anything that comes from the user)."""
        # soft_wrap: a log file keeps one event a line, whatever width rich assumes for it.
        self.console.print(text, soft_wrap=True)

    def warn(self, text: str) -> None:
        self.console.print(f"[yellow]warning:[/] {escape(text)}", soft_wrap=True)

    def table(self, table) -> None:
        self.console.print(table)


def fmt_loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
