"""LlamaForCausalLM: decoder-only, pre-RMSNorm, SwiGLU feed-forward, rotary positions, no biases,
grouped-query attention, head tied to the token embedding or not.

Quirks the view records:
- k and v have `kv_heads * head_dim` rows (`Kind.KV_INNER`); query head h reads kv head
  h // (heads / kv_heads). Width growth builds the kv-head mapping first and then maps every new
  query head to a query head of the group its kv head copies (surgery/ops/width.py), so q and k/v
  stay consistent and heads grow exactly at any ratio;
- rotary positions act within a head and heads are copied whole: nothing to do (no parameters);
- the final RMSNorm feeds the head: HEAD_NORM when the head is tied (it reads the embedding's
  copied columns), NORM when it is untied (`lm_head.weight` reads the units: IN);
- pre-norm: identity blocks zero `o_proj` and `down_proj`; `l` is exact at any ratio (zero padding).
"""

from __future__ import annotations

from surgery.families.base import Family, Layout, Template
from surgery.spec import ModelSpec
from surgery.view import Kind, Role, axes

M, INNER, KV, FF, V = Kind.MODEL, Kind.INNER, Kind.KV_INNER, Kind.FF, Kind.VOCAB
OUT, IN, NORM, HNORM, KEEP = Role.OUT, Role.IN, Role.NORM, Role.HEAD_NORM, Role.KEEP


def global_templates(spec: ModelSpec, layout: Layout) -> list[Template]:
    tied = not layout.untied_head
    ts = [Template("embed.tok", "model.embed_tokens.weight", axes((V, KEEP), (M, OUT)),
                   aliases=("lm_head.weight",) if tied else ())]
    if not tied:
        ts.append(Template("head.w", "lm_head.weight", axes((V, KEEP), (M, IN))))
    return ts


def stack_templates(spec: ModelSpec, layout: Layout, stack: str) -> list[Template]:
    role = NORM if layout.untied_head else HNORM
    return [Template("final_norm.w", "model.norm.weight", axes((M, role)))]


def block_templates(spec: ModelSpec, layout: Layout, stack: str) -> list[Template]:
    b = "model.layers.{i}"
    return [
        Template("attn.norm.w", f"{b}.input_layernorm.weight", axes((M, NORM))),
        Template("attn.q.w", f"{b}.self_attn.q_proj.weight", axes((INNER, OUT), (M, IN))),
        Template("attn.k.w", f"{b}.self_attn.k_proj.weight", axes((KV, OUT), (M, IN))),
        Template("attn.v.w", f"{b}.self_attn.v_proj.weight", axes((KV, OUT), (M, IN))),
        Template("attn.o.w", f"{b}.self_attn.o_proj.weight", axes((M, OUT), (INNER, IN))),
        Template("ff.norm.w", f"{b}.post_attention_layernorm.weight", axes((M, NORM))),
        Template("ff.wi_0.w", f"{b}.mlp.gate_proj.weight", axes((FF, OUT), (M, IN))),
        Template("ff.wi_1.w", f"{b}.mlp.up_proj.weight", axes((FF, OUT), (M, IN))),
        Template("ff.wo.w", f"{b}.mlp.down_proj.weight", axes((M, OUT), (FF, IN))),
    ]


LLAMA = Family(
    name="llama",
    norm="rms",
    norm_position="pre",
    eps_key="rms_norm_eps",
    stacks=("dec",),
    dim_keys=("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
              "num_hidden_layers"),
    global_templates=global_templates,
    stack_templates=stack_templates,
    block_templates=block_templates,
    head_input_scale=lambda spec: 1.0,
    extra_dims=lambda config: {},
)
