"""Qwen2's own quirks: q/k/v biases that grow with the heads, a tied or untied head, GQA."""

from __future__ import annotations

import pytest

from surgery.ops import grow_model
from surgery.spec import ModelSpec
from tests.tiny import batch, logits, model, rel_change, spec


@pytest.mark.parametrize("head", ["tied", "untied"])
@pytest.mark.parametrize("op,k", [("l", 1.5), ("f", 2)])
def test_biased_gqa_heads_grow_exactly(head, op, k):
    src = spec("qwen2", head=head)
    dst = spec("qwen2", head=head, d_model=int(16 * k), heads=int(4 * k), kv_heads=int(2 * k), d_ff=int(32 * k))
    m = model(src)  # tiny.model perturbs every bias, so the q/k/v biases matter
    g = grow_model(m, src, dst, op, seed=2).model.eval()
    attn = g.model.layers[0].self_attn
    assert attn.q_proj.bias.shape == (dst.inner_dim,) and attn.k_proj.bias.shape == (dst.kv_inner_dim,)
    assert rel_change(logits(g, batch()), logits(m, batch())) < 1e-5
    assert (g.lm_head.weight is g.model.embed_tokens.weight) == (head == "tied")


def test_spec_round_trips_through_config_json():
    s = spec("qwen2", head="untied", layers=3)
    cfg = model(s).config.to_dict()
    assert ModelSpec.from_hf_config(cfg) == s
    assert cfg["layer_types"] == ["full_attention"] * 3
