"""Tiny random models and forward passes shared by the growth tests (no network, no hub)."""

from __future__ import annotations

import torch

from surgery.families import build_model
from surgery.spec import ModelSpec

VOCAB = 101
NO_DROPOUT = {
    "t5": {"dropout_rate": 0.0},
    "bert": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
}


def spec(family: str, **dims) -> ModelSpec:
    base = dict(t5=dict(layers=2, decoder_layers=2, d_model=16, heads=4, d_ff=32),
                bert=dict(layers=2, d_model=16, heads=4, d_ff=64))[family]
    return ModelSpec(family=family, vocab=VOCAB, **{**base, **dims})


def model(s: ModelSpec, seed: int = 0):
    """A tiny model whose norms and biases are not at their init values (ones / zeros), so that
    exactness tests see LayerNorm/RMSNorm gains and shifts that matter."""
    m = build_model(s, seed=seed, **NO_DROPOUT[s.family]).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name.lower() or name.endswith("bias"):
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
