"""Ops that are not function-preserving by design (AKI, plain stacking) still give models that
load with from_pretrained and train; and the symmetry question: do copies stay copies?"""

import pytest
import torch
import transformers

from surgery.io import save_checkpoint
from surgery.ops import grow_model
from tests.tiny import batch, logits, loss, model, rel_change, spec

CASES = [
    ("t5", "a", dict(d_model=32, heads=8, d_ff=64)),
    ("t5", "d", dict(layers=3, decoder_layers=4)),
    ("t5", "da", dict(layers=4, decoder_layers=4, d_model=24, heads=6, d_ff=48)),
    ("bert", "a", dict(d_model=32, heads=8, d_ff=128)),
    ("bert", "d", dict(layers=3)),
    ("bert", "df", dict(layers=4, d_model=32, heads=8, d_ff=128)),
]


def train(m, ids, steps=6, lr=3e-3, opt_cls=torch.optim.Adam):
    m.train()
    opt = opt_cls(m.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        out = loss(m, ids)
        out.backward()
        opt.step()
        losses.append(out.item())
    return losses


@pytest.mark.parametrize("fam,op,dims", CASES)
def test_not_function_preserving_but_loads_and_trains(tmp_path, fam, op, dims):
    src = spec(fam)
    m = model(src)
    g = grow_model(m, src, src.model_copy(update=dims), op, seed=1)
    assert rel_change(logits(g.model.eval(), batch()), logits(m, batch())) > 1e-4
    save_checkpoint(tmp_path / "g", g.model)
    loaded = getattr(transformers, type(m).__name__).from_pretrained(str(tmp_path / "g"))
    losses = train(loaded, batch(1, b=4, n=12))
    assert losses[-1] < losses[0], losses


def _copy_gap(w: torch.Tensor, axis: int, old: int) -> float:
    """Relative difference between units 0..old-1 and their first copies old..2*old-1 along axis."""
    a, b = w.narrow(axis, 0, old), w.narrow(axis, old, old)
    return ((a - b).abs().max() / a.abs().max()).item()


@pytest.mark.parametrize("fam", ["t5", "bert"])
def test_lossless_copies_diverge_fpi_copies_do_not(fam):
    """Net2Net FPI gives copies identical incoming weights and identical (divided) outgoing weights,
    so every copy receives exactly the same gradient: under plain SGD (or any elementwise optimizer
    whose state is symmetric too, Adam included) and without dropout they stay exact copies forever.
    `l` splits the outgoing weights randomly per element, so the copies' gradients differ from the
    first step and the copies diverge. Measured on what a unit computes (its pre-activation on a
    batch) and on the residual copies (embedding columns)."""
    src = spec(fam)
    dst = src.model_copy(update=dict(d_model=32, heads=8, d_ff=src.d_ff * 2))
    ids = batch(3, b=4, n=12)
    gaps = {}
    for op in ("f", "l"):
        g = grow_model(model(src), src, dst, op, seed=2).model
        before = (_copy_gap(_ff_units(g, fam, ids), -1, src.d_ff), _copy_gap(_embed(g), 1, src.d_model))
        train(g, ids, steps=5, lr=0.5, opt_cls=torch.optim.SGD)
        gaps[op] = before + (_copy_gap(_ff_units(g, fam, ids), -1, src.d_ff), _copy_gap(_embed(g), 1, src.d_model))
    assert max(gaps["f"][:2] + gaps["l"][:2]) < 1e-5, gaps  # both start as exact copies
    assert max(gaps["f"][2:]) < 1e-5, gaps["f"]
    assert min(gaps["l"][2:]) > 1e-3, gaps["l"]


def _ff_units(m, fam, ids):
    """Pre-activations of the first block's feed-forward units on ids."""
    lin = (m.encoder.block[0].layer[1].DenseReluDense.wi if fam == "t5"
           else m.bert.encoder.layer[0].intermediate.dense)
    seen = []
    hook = lin.register_forward_hook(lambda mod, inp, out: seen.append(out.detach()))
    m.eval()
    logits(m, ids)
    hook.remove()
    return seen[0]


def _embed(m):
    return m.get_input_embeddings().weight.detach()
