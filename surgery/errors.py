"""User-facing errors: everything a user can cause ends as one of these, never a traceback."""

from __future__ import annotations


class SurgeryError(Exception):
    """A mistake in the user's input (recipe, checkpoint, data, arguments).

    The CLI prints `str(error)` and exits with status 2.
    """


class RecipeError(SurgeryError):
    """A mistake at a place in a recipe, shown as `FILE:LINE:COL: error: ...` with a caret."""

    def __init__(self, message: str, *, file: str, line: int, column: int, source_line: str = ""):
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        self.source_line = source_line
        super().__init__(self.format())

    def format(self) -> str:
        head = f"{self.file}:{self.line}:{self.column}: error: {self.message}"
        if not self.source_line:
            return head
        caret = " " * (max(self.column, 1) - 1) + "^"
        return f"{head}\n    {self.source_line.rstrip()}\n    {caret}"
