"""The fine-tuning tasks by name: surgery.catalog.TASKS says what each is and where it lives."""

from __future__ import annotations

from surgery.catalog import TASKS as _INFO
from surgery.catalog import resolve
from surgery.finetune.base import Task

TASKS: tuple[str, ...] = tuple(_INFO)


def tasks() -> dict[str, type[Task]]:
    return {name: resolve(info.impl) for name, info in _INFO.items()}
