"""The fine-tuning tasks by name: surgery.catalog.TASKS says what each is and where it lives."""

from __future__ import annotations

import importlib

from surgery.catalog import TASKS as _INFO
from surgery.finetune.base import Task

TASKS: tuple[str, ...] = tuple(_INFO)


def tasks() -> dict[str, type[Task]]:
    out = {}
    for name, info in _INFO.items():
        module, _, cls = info.impl.partition(":")
        out[name] = getattr(importlib.import_module(module), cls)
    return out
