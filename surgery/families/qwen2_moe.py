"""Qwen2-MoE (Qwen2MoeForCausalLM): Qwen2's decoder (q/k/v biases) with a sparse mixture of experts
and a shared expert; what a qwen2 becomes under `moe(experts=E, top_k=k)` (surgery/moe.py).

Each layer's feed-forward: a router (`mlp.gate.weight` [E, d_model]), E routed SwiGLU experts as two
fused 3-D tensors (`mlp.experts.gate_up_proj` [E, 2*d_ff, d_model], `mlp.experts.down_proj`
[E, d_model, d_ff]), and a shared expert (`mlp.shared_expert.{gate,up,down}_proj`, of d_ff here)
whose output is scaled by sigmoid(`mlp.shared_expert_gate`). Conventions this family fixes:
- `norm_topk_prob` is true: the top-k routing weights are renormalised to sum to 1 (Qwen2-MoE's
  default is false, under which k identical experts would not give the dense MLP back); a
  checkpoint whose config says false is refused (its function is not one this spec describes);
- every layer is sparse (`decoder_sparse_step` 1, no `mlp_only_layers`);
- `moe_intermediate_size` and `shared_expert_intermediate_size` are both d_ff.
Upcycling makes the shared expert's output exactly zero (its down_proj is zero, as an identity
block's output projections), so the upcycled model computes the dense one; it trains from there.

Limits as mixtral's: no neutral view, so growth ops refuse it; grow the dense qwen2 first.
"""

from __future__ import annotations

from dataclasses import replace

from surgery.families.mixtral import (
    MIXTRAL,
    NO_GROWTH,
    attention_and_norms,
    norms_and_head,
)
from surgery.families.mixtral import spec_fields as mixtral_spec_fields
from surgery.families.qwen2 import QWEN2
from surgery.families.qwen2 import hf_config as qwen2_config


def hf_config(spec) -> dict:
    cfg = {k: v for k, v in qwen2_config(spec).items() if k not in ("use_sliding_window",)}
    return {**cfg, "use_sliding_window": False, "num_experts": spec.experts, "num_experts_per_tok": spec.top_k,
            "moe_intermediate_size": spec.d_ff, "shared_expert_intermediate_size": spec.d_ff,
            "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [], "output_router_logits": False,
            "qkv_bias": True, "rms_norm_eps": 1e-6, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}


def spec_fields(config: dict) -> dict:
    if not config.get("norm_topk_prob", False):
        raise ValueError("qwen2_moe here renormalises the top-k routing weights (norm_topk_prob=true); "
                         "this config does not")
    if config.get("mlp_only_layers") or config.get("decoder_sparse_step", 1) != 1:
        raise ValueError("qwen2_moe here has experts in every layer (no mlp_only_layers, decoder_sparse_step=1)")
    d_ff = config.get("moe_intermediate_size", config["intermediate_size"])
    if config.get("shared_expert_intermediate_size", d_ff) != d_ff:
        raise ValueError("qwen2_moe here has a shared expert of the routed experts' size (moe_intermediate_size)")
    return {**mixtral_spec_fields({**config, "intermediate_size": d_ff, "num_local_experts": config.get("num_experts", 8)})}


def tensor_groups(spec, Tensor, TensorGroup) -> list:
    d, ff, n, e = spec.d_model, spec.d_ff, spec.layers, spec.experts
    m = "model.layers.{i}.mlp"
    return [
        *attention_and_norms(spec, Tensor, TensorGroup, bias=True),
        TensorGroup("router", (Tensor(f"{m}.gate.weight", (e, d), n), Tensor(f"{m}.shared_expert_gate.weight", (1, d), n))),
        TensorGroup("feed-forward in", (Tensor(f"{m}.experts.gate_up_proj", (e, 2 * ff, d), n),
                                        Tensor(f"{m}.shared_expert.{{gate,up}}_proj.weight", (ff, d), 2 * n)),
                    note=f" ({e} experts, {spec.top_k} per token, one shared)"),
        TensorGroup("feed-forward out", (Tensor(f"{m}.experts.down_proj", (e, d, ff), n),
                                         Tensor(f"{m}.shared_expert.down_proj.weight", (d, ff), n))),
        *norms_and_head(spec, Tensor, TensorGroup),
    ]


def active_params(spec) -> int:
    """Every parameter but the routed experts a token does not reach: (E - k) per layer."""
    return spec.params - spec.layers * (spec.experts - spec.top_k) * 3 * spec.d_model * spec.d_ff


# Mixtral's descriptor with Qwen2-MoE's classes, config (shared expert), tokenizer and tables
QWEN2_MOE = replace(
    MIXTRAL,
    name="qwen2_moe",
    summary="Qwen2-MoE (Qwen2MoeForCausalLM): Qwen2's decoder with top-k routed SwiGLU experts and a shared expert",
    config_class="Qwen2MoeConfig",
    model_class="Qwen2MoeForCausalLM",
    classes={"Qwen2MoeForCausalLM": "lm", "Qwen2MoeModel": ""},
    hf_config=hf_config,
    spec_fields=spec_fields,
    tokenizer=QWEN2.tokenizer,
    no_growth=NO_GROWTH.format(family="qwen2_moe", dense="qwen2"),
    tensor_groups=tensor_groups,
    active_params=active_params,
)
