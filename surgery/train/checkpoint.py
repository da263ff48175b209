"""Resumable training checkpoints, written atomically, safetensors only (no pickle).

A checkpoint is a folder `ckpt-<step>` under the run's `checkpoints/`, made as a temp folder and
renamed, then named in `checkpoints/latest` (replaced atomically). A kill at any moment leaves
either the old or the new checkpoint complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from surgery.ops.optim import load_optimizer_state, optimizer_state_by_name  # noqa: F401 (re-exported)


def _flatten(state: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    # Grown state can share storage between entries (one step tensor for many parameters);
    # safetensors refuses shared storage, so every entry gets its own copy.
    return {f"{name}::{k}": v.detach().cpu().clone() for name, st in state.items() for k, v in st.items()}


def _unflatten(flat: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, v in flat.items():
        name, k = key.rsplit("::", 1)
        out.setdefault(name, {})[k] = v
    return out


def module_tensors(module) -> dict[str, torch.Tensor]:
    """A module's state as safetensors can write it: tied tensors (a generator's decoder and word
    embeddings) become separate copies; load_state_dict ties them again."""
    return {k: v.detach().cpu().clone().contiguous() for k, v in module.state_dict().items()}


def save_checkpoint(root: Path, step: int, model, optimizer, trainer_state: dict, keep: int = 1, aux=None,
                    write=None) -> Path:
    """write(tmp): what fills the new checkpoint's folder (default: the model, its optimizer
    state, aux modules, RNG states and trainer state; a sharded run writes the same files its way)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"ckpt-{step:08d}"
    tmp = root / f".ckpt-{step:08d}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if write is not None:
            write(tmp)
        else:
            _write(tmp, model, optimizer, trainer_state, aux)
    except BaseException:
        # A failed write (disk full, no permission) or a kill mid-write: drop the partial folder,
        # leave `latest` and the checkpoint it names as they were.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():  # the same step written again (a resumed run): swap, never delete first
        old = root / f".old-{final.name}.tmp{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    pointer = root / f".latest.tmp{os.getpid()}"
    pointer.write_text(final.name)
    pointer.replace(root / "latest")
    for old in sorted(root.glob("ckpt-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write(tmp: Path, model, optimizer, trainer_state: dict, aux) -> None:
    tmp.mkdir()
    model.save_pretrained(tmp / "model", safe_serialization=True)
    opt = _flatten(optimizer_state_by_name(optimizer, model))
    if opt:
        save_file(opt, tmp / "optimizer.safetensors")
    if aux is not None:  # an objective's extra modules (heads, generator) and their AdamW state
        save_file(module_tensors(aux), tmp / "aux.safetensors")
        aux_opt = _flatten(optimizer_state_by_name(optimizer, aux))
        if aux_opt:
            save_file(aux_opt, tmp / "aux_optimizer.safetensors")
    write_rng_and_state(tmp, trainer_state)


def write_rng_and_state(tmp: Path, trainer_state: dict) -> None:
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, tmp / "rng.safetensors")
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / "latest"
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / "trainer_state.json").exists() else None


def read_state(path: Path) -> dict:
    return json.loads((path / "trainer_state.json").read_text())


def read_checkpoint(path: Path, optimizer: bool = True) -> tuple[dict, dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """(trainer state, optimizer state by parameter name ({} when not `optimizer`), rng states)."""
    state = json.loads((path / "trainer_state.json").read_text())
    opt_file = path / "optimizer.safetensors"
    opt = _unflatten(load_file(opt_file)) if optimizer and opt_file.exists() else {}
    return state, opt, load_file(path / "rng.safetensors")


def read_aux(path: Path) -> tuple[dict[str, torch.Tensor] | None, dict[str, dict[str, torch.Tensor]]]:
    """(aux module weights, aux AdamW state by name) of a checkpoint; (None, {}) when it has none."""
    w, o = path / "aux.safetensors", path / "aux_optimizer.safetensors"
    return (load_file(w) if w.exists() else None), (_unflatten(load_file(o)) if o.exists() else {})


def restore_rng(rng: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(rng["torch"])
    cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
