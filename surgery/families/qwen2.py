"""Qwen2 (Qwen2ForCausalLM): Llama's layout (pre-RMSNorm, SwiGLU, rotary positions, grouped-query
attention) with biases on the q, k and v projections, and a head tied or untied as the config says.

Quirks the view records (beyond Llama's, see llama.py):
- q/k/v biases follow their projection's output axis (heads*d_kv for q, kv_heads*d_kv for k, v),
  so width growth copies them with the head mapping and depth growth copies them with the layer;
  the output projection has no bias, so an identity block still only zeroes o_proj and down_proj;
- `use_sliding_window` stays off (the config's default): every layer attends fully, as the spec
  says nothing of windows; `layer_types` (one entry per layer) is rewritten when depth grows.
"""

from __future__ import annotations

from surgery.families.base import Family, Layout, Template, TokenizerInfo, common_args
from surgery.families.llama import (
    DECODER_ARGS,
    describe,
    global_templates,
    layout_of,
    recipe_fields,
    spec_fields,
    stack_templates,
    validate,
)
from surgery.families.llama import block_templates as llama_blocks
from surgery.families.llama import hf_config as llama_config
from surgery.view import Kind, Role, axes


def block_templates(spec, layout: Layout, stack: str) -> list[Template]:
    b = f"{layout.prefix}layers.{{i}}.self_attn"
    biases = [Template(f"attn.{x}.b", f"{b}.{x}_proj.bias", axes((kind, Role.OUT)))
              for x, kind in (("q", Kind.INNER), ("k", Kind.KV_INNER), ("v", Kind.KV_INNER))]
    return llama_blocks(spec, layout, stack) + biases


def hf_config(spec) -> dict:
    # layer_types has one entry per layer: depth growth must rewrite it (it is a dim key below)
    return {**llama_config(spec), "use_sliding_window": False, "layer_types": ["full_attention"] * spec.layers}


QWEN2 = Family(
    name="qwen2",
    kind="decoder",
    summary="Qwen2 (Qwen2ForCausalLM): Llama's layout with q/k/v biases, tied or untied head, GQA",
    args=common_args(**DECODER_ARGS),
    config_class="Qwen2Config",
    model_class="Qwen2ForCausalLM",
    classes={"Qwen2ForCausalLM": "lm", "Qwen2Model": ""},
    hf_config=hf_config,
    spec_fields=spec_fields,
    recipe_fields=recipe_fields,
    default_objective="clm",
    tokenizer=TokenizerInfo(
        specials={"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>", "unk_token": "<unk>"},
        single="$A <|im_end|>",
        pair="$A <|im_end|> $B <|im_end|>",
    ),
    tiny=dict(layers=2, d_model=16, heads=4, kv_heads=2, d_ff=32, max_positions=64),
    validate=validate,
    describe=describe,
    json_fields=lambda spec: {"kv_heads": spec.n_kv_heads, "head": spec.head, "max_positions": spec.max_positions},
    growth_keeps=("head",),
    norm="rms",
    norm_position="pre",
    eps_key="rms_norm_eps",
    stacks=("dec",),
    dim_keys=("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
              "num_hidden_layers", "layer_types"),
    global_templates=global_templates,
    stack_templates=stack_templates,
    block_templates=block_templates,
    layout_of=layout_of,
    untied_head_in=lambda names, get: "lm_head.weight" in names,
    plan_layout=lambda spec: Layout("Qwen2ForCausalLM", prefix="model.", untied_head=spec.head == "untied"),
)
