"""Tiny random models and forward passes shared by the growth tests (no network, no hub)."""

from __future__ import annotations

import torch

from surgery.families import FAMILIES
from surgery.families.build import build_model
from surgery.spec import ModelSpec

VOCAB = 101


def spec(family: str, **dims) -> ModelSpec:
    """The family's tiny model (its descriptor's `tiny`), with `dims` (ModelSpec fields) changed."""
    base = ModelSpec.of(family, vocab=VOCAB, **FAMILIES[family].tiny)
    return ModelSpec(**{**base.model_dump(), **dims})


def wider(family: str, k: float = 2.0) -> dict:
    """Target dims k times the tiny model's width (d_model, heads or d_kv's heads, kv heads, d_ff)."""
    s = spec(family)
    dims = dict(d_model=int(s.d_model * k), heads=int(s.heads * k), d_ff=int(s.d_ff * k))
    if s.kv_heads is not None:
        dims["kv_heads"] = int(s.kv_heads * k)
    if s.d_kv is not None:
        dims.pop("heads")
    return dims


def deeper(family: str) -> dict:
    """Target dims with 2 more (encoder) layers and 1 more decoder layer where there is a decoder."""
    s = spec(family)
    out = {"layers": s.layers + 2}
    if s.decoder_layers is not None:
        out["decoder_layers"] = s.decoder_layers + 1
    return out


def model(s: ModelSpec, seed: int = 0):
    """A tiny model whose norms and biases are not at their init values (ones / zeros), so that
    exactness tests see LayerNorm/RMSNorm gains and shifts that matter."""
    m = build_model(s, seed=seed, **s.descriptor.no_dropout).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name.lower() or ".ln_" in name or name.endswith("bias"):
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return m


def batch(seed: int = 0, b: int = 2, n: int = 9):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, VOCAB, (b, n), generator=g)


def logits(m, ids: torch.Tensor) -> torch.Tensor:
    """MLM logits (BERT) or decoder logits with decoder_input_ids (T5)."""
    with torch.no_grad():
        if m.config.model_type == "t5":
            return m(input_ids=ids, decoder_input_ids=ids[:, :5]).logits
        return m(input_ids=ids).logits


def rel_change(new: torch.Tensor, old: torch.Tensor) -> float:
    return ((new - old).abs().max() / old.abs().max()).item()


def loss(m, ids: torch.Tensor) -> torch.Tensor:
    if m.config.model_type == "t5":
        return m(input_ids=ids, labels=ids[:, :5].contiguous()).loss
    return m(input_ids=ids, labels=ids).loss
