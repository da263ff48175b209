"""The registry of model families: one descriptor module per family (surgery/families/<name>.py).

Torch-free: `surgery plan` reads descriptors. What builds or reads `transformers` models lives in
`surgery.families.build` (`build_model`, `layout_of_model`, `layout_of_checkpoint`, ...); those names
are also reachable here, imported on first use, so planning never pays for torch.

Adding a family is adding its module: every module here that defines a `Family` named like the
module is registered (docs/families.md).
"""

from __future__ import annotations

import importlib
import pkgutil

from surgery.errors import SurgeryError
from surgery.families.base import Family, Layout, Template, TokenizerInfo

_NOT_FAMILIES = {"base", "build"}


def _discover() -> dict[str, Family]:
    found: dict[str, Family] = {}
    for info in pkgutil.iter_modules(__path__):  # sorted by file name: a stable order
        if info.name in _NOT_FAMILIES:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, Family) and value.name == info.name:
                found[value.name] = value
    return found


FAMILIES: dict[str, Family] = _discover()

__all__ = ["FAMILIES", "Family", "Layout", "Template", "TokenizerInfo", "family_of", "family_names",
           "families_of_kind", "family_of_class"]

_BUILD = ("build_model", "layout_of_model", "layout_of_checkpoint", "spec_of_model", "untie_t5_head")


def family_of(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise SurgeryError(f"unsupported family {name!r} (supported: {', '.join(FAMILIES)})") from None


def family_names() -> tuple[str, ...]:
    return tuple(FAMILIES)


def families_of_kind(*kinds: str) -> tuple[str, ...]:
    return tuple(n for n, f in FAMILIES.items() if f.kind in kinds)


def family_of_class(cls: str) -> Family | None:
    """The family whose checkpoints `cls` (a transformers class name) writes."""
    return next((f for f in FAMILIES.values() if cls in f.classes), None)


def __getattr__(name: str):
    if name in _BUILD:
        from surgery.families import build

        return getattr(build, name)
    raise AttributeError(f"module 'surgery.families' has no attribute {name!r}")
