"""A compact fine-tuning loop: AdamW, linear warmup and decay, bf16 autocast on GPUs that have it.

Plain torch rather than Trainer: one device, a handful of lines, and nothing hidden between the
seed and the numbers. Determinism comes from `transformers.set_seed` and a seeded data order.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch.utils.data import DataLoader


def pick_device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device, bf16: bool | None):
    """bf16 autocast where the device supports it (and unless switched off); fp32 otherwise."""
    use = device.type == "cuda" and torch.cuda.is_bf16_supported() if bf16 is None else bf16
    if not use:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


@dataclass
class TrainReport:
    examples: int
    steps: int
    final_loss: float
    seconds: float


def _no_decay(name: str) -> bool:
    lowered = name.lower()
    return lowered.endswith("bias") or "norm" in lowered


def train(
    model: torch.nn.Module,
    features: Sequence[dict],
    collate: Callable,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    warmup_ratio: float,
    seed: int,
    device: torch.device,
    bf16: bool | None,
    max_grad_norm: float = 1.0,
    progress: bool = True,
    description: str = "fine-tune",
    loss_fn: Callable | None = None,
) -> TrainReport:
    """`loss_fn(model, batch) -> (loss, count)` replaces the model's own loss (distillation); its
    `trainable` module, if any, trains beside the model."""
    from transformers import get_scheduler

    start = time.perf_counter()
    model.to(device).train()
    loader = DataLoader(
        list(features),
        batch_size=batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(seed),
    )
    total = max(1, epochs * len(loader))
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    extra = getattr(loss_fn, "trainable", None)
    if extra is not None:
        params += [(f"distil.{n}", p) for n, p in extra.to(device).named_parameters()]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for n, p in params if not _no_decay(n)], "weight_decay": weight_decay},
            {"params": [p for n, p in params if _no_decay(n)], "weight_decay": 0.0},
        ],
        lr=lr,
    )
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=int(warmup_ratio * total), num_training_steps=total)
    steps, loss_value = 0, float("nan")
    with progress_bar(progress) as bar:
        job = bar.add_task(description, total=total, status="")
        for _ in range(epochs):
            for batch in loader:
                batch = {k: v.to(device) for k, v in batch.items()}
                with autocast(device, bf16):
                    loss = loss_fn(model, batch)[0] if loss_fn is not None else model(**batch).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for _, p in params], max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                steps += 1
                loss_value = loss.item()
                bar.update(job, advance=1, status=f"loss {loss_value:.4f}")
    model.eval()
    return TrainReport(examples=len(features), steps=steps, final_loss=loss_value, seconds=time.perf_counter() - start)


def batches(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]
