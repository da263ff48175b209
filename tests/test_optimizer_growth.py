"""Adam state grows with the weights: grow-then-step equals step-then-grow under FPI."""

import pytest
import torch

from surgery.ops import grow_model, load_optimizer_state, optimizer_state_by_name
from tests.tiny import batch, loss, model, spec


def adam_steps(m, opt, batches):
    m.train()
    for ids in batches:
        opt.zero_grad()
        loss(m, ids).backward()
        opt.step()


@pytest.mark.parametrize("fam,head", [("t5", "tied"), ("t5", "untied"), ("bert", "tied")])
def test_grown_state_commutes_with_an_adam_step(fam, head):
    """After FPI at 2x, the grown model's gradient on every copy is the mapped small gradient
    (G / s), so the moments of one more Adam step taken on the grown model from the grown state
    equal the grown moments of the small model's next step."""
    src = spec(fam, head=head) if fam == "t5" else spec(fam)
    dst = src.model_copy(update=dict(d_model=32, heads=8, d_ff=src.d_ff * 2))
    small = model(src)
    opt = torch.optim.Adam(small.parameters(), lr=1e-3)
    adam_steps(small, opt, [batch(i, b=4, n=12) for i in range(3)])

    g = grow_model(small, src, dst, "f", seed=4)
    grown_state = g.grow_optimizer_state(optimizer_state_by_name(opt, small))
    names = {n for n, _ in g.model.named_parameters()}
    assert set(grown_state) == names
    for n, p in g.model.named_parameters():
        assert grown_state[n]["exp_avg"].shape == p.shape
        assert float(grown_state[n]["step"]) == 3.0

    nxt = batch(10, b=4, n=12)
    big_opt = torch.optim.Adam(g.model.parameters(), lr=1e-3)
    load_optimizer_state(big_opt, g.model, grown_state)
    adam_steps(g.model, big_opt, [nxt])
    stepped_then_grown = g.grow_optimizer_state(_step(small, opt, nxt))
    got = optimizer_state_by_name(big_opt, g.model)
    for key in ("exp_avg", "exp_avg_sq"):
        # Tensors whose true gradient is zero (BERT's key bias: softmax ignores it) hold only
        # rounding noise, so each tensor is compared at no finer than 1e-6 of the largest moment.
        floor = 1e-6 * max(s[key].abs().max().item() for s in stepped_then_grown.values())
        for n in names:
            want, have = stepped_then_grown[n][key], got[n][key]
            scale = max(want.abs().max().item(), floor)
            assert (have - want).abs().max().item() / scale < 1e-4, (n, key)
    assert all(float(got[n]["step"]) == 4.0 for n in names)


def _step(small, opt, ids):
    adam_steps(small, opt, [ids])
    return optimizer_state_by_name(opt, small)


def test_new_tensors_start_with_zero_moments_and_step():
    src = spec("t5")
    dst = src.model_copy(update=dict(layers=3))
    small = model(src)
    opt = torch.optim.Adam(small.parameters(), lr=1e-3)
    adam_steps(small, opt, [batch(0)])
    g = grow_model(small, src, dst, "d", options={"depth": "identity"})
    state = g.grow_optimizer_state(optimizer_state_by_name(opt, small))
    new_out = "encoder.block.2.layer.1.DenseReluDense.wo.weight"
    copied_in = "encoder.block.2.layer.1.DenseReluDense.wi.weight"
    assert float(state[new_out]["step"]) == 0.0 and not state[new_out]["exp_avg"].any()
    assert float(state[copied_in]["step"]) == 1.0
    assert torch.equal(state[copied_in]["exp_avg"], state["encoder.block.0.layer.1.DenseReluDense.wi.weight"]["exp_avg"])


@pytest.mark.parametrize("op", ["a", "l", "dl", "da"])
def test_state_shapes_for_every_op(op):
    src = spec("bert")
    dst = src.model_copy(update=dict(d_model=24, heads=6, d_ff=96, layers=3 if op.startswith("d") else 2))
    small = model(src)
    opt = torch.optim.Adam(small.parameters())
    adam_steps(small, opt, [batch(0)])
    g = grow_model(small, src, dst, op)
    state = g.grow_optimizer_state(optimizer_state_by_name(opt, small))
    for n, p in g.model.named_parameters():
        assert state[n]["exp_avg"].shape == p.shape and state[n]["exp_avg_sq"].shape == p.shape
        assert (state[n]["exp_avg_sq"] >= 0).all()
