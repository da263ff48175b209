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

from dataclasses import replace

from surgery.families.base import Layout, Template, TokenizerInfo
from surgery.families.llama import LLAMA
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


# Llama's descriptor with Qwen2's classes, biases, config and tokenizer
QWEN2 = replace(
    LLAMA,
    name="qwen2",
    summary="Qwen2 (Qwen2ForCausalLM): Llama's layout with q/k/v biases, tied or untied head, GQA",
    config_class="Qwen2Config",
    model_class="Qwen2ForCausalLM",
    classes={"Qwen2ForCausalLM": "lm", "Qwen2Model": ""},
    hf_config=hf_config,
    tokenizer=TokenizerInfo(
        specials={"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>", "unk_token": "<unk>"},
        single="$A <|im_end|>",
        pair="$A <|im_end|> $B <|im_end|>",
    ),
    dim_keys=LLAMA.dim_keys + ("layer_types",),
    block_templates=block_templates,
    plan_layout=lambda spec: Layout("Qwen2ForCausalLM", prefix="model.", untied_head=spec.head == "untied"),
)
