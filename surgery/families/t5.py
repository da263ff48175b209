"""T5ForConditionalGeneration: pre-RMSNorm, no biases, relative bias in layer 0 of each stack.

Quirks the view records:
- one embedding (`shared`) for encoder, decoder and, when tied, the output head;
- the tied head multiplies the final decoder state by d_model**-0.5 (`scale_decoder_outputs`), so
  the final decoder norm feeds the head as HEAD_NORM and width growth rescales it;
- the relative-position table is a stack-level tensor stored in block 0 (later blocks reuse the
  bias block 0 computes), so depth ops never move it;
- transformers 5 always ties lm_head to shared when building from a config; an untied head exists
  only as a separate `lm_head.weight` in a checkpoint.
"""

from __future__ import annotations

from surgery.families.base import Family, Layout, Template
from surgery.spec import ModelSpec
from surgery.view import Kind, Role, axes

M, INNER, FF, V, H, B = Kind.MODEL, Kind.INNER, Kind.FF, Kind.VOCAB, Kind.HEADS, Kind.BUCKET
OUT, IN, NORM, HNORM, KEEP = Role.OUT, Role.IN, Role.NORM, Role.HEAD_NORM, Role.KEEP

HF_STACK = {"enc": "encoder", "dec": "decoder"}


def _head_is_tied(layout: Layout) -> bool:
    return not layout.untied_head


def global_templates(spec: ModelSpec, layout: Layout) -> list[Template]:
    ts = [Template("embed.tok", "shared.weight", axes((V, KEEP), (M, OUT)),
                   aliases=("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
                   + (("lm_head.weight",) if _head_is_tied(layout) else ()))]
    if not _head_is_tied(layout):
        ts.append(Template("head.w", "lm_head.weight", axes((V, KEEP), (M, IN))))
    return ts


def stack_templates(spec: ModelSpec, layout: Layout, stack: str) -> list[Template]:
    p = HF_STACK[stack]
    final_role = HNORM if stack == "dec" and _head_is_tied(layout) else NORM
    return [
        Template("relbias", f"{p}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                 axes((B, KEEP), (H, OUT))),
        Template("final_norm.w", f"{p}.final_layer_norm.weight", axes((M, final_role))),
    ]


def _attention(local: str, prefix: str) -> list[Template]:
    return [
        *(Template(f"{local}.{x}.w", f"{prefix}.{x}.weight", axes((INNER, OUT), (M, IN))) for x in "qkv"),
        Template(f"{local}.o.w", f"{prefix}.o.weight", axes((M, OUT), (INNER, IN))),
    ]


def block_templates(spec: ModelSpec, layout: Layout, stack: str) -> list[Template]:
    b = f"{HF_STACK[stack]}.block.{{i}}.layer"
    ts = [Template("attn.norm.w", f"{b}.0.layer_norm.weight", axes((M, NORM)))]
    ts += _attention("attn", f"{b}.0.SelfAttention")
    f = 1
    if stack == "dec":
        ts.append(Template("xattn.norm.w", f"{b}.1.layer_norm.weight", axes((M, NORM))))
        ts += _attention("xattn", f"{b}.1.EncDecAttention")
        f = 2
    ts.append(Template("ff.norm.w", f"{b}.{f}.layer_norm.weight", axes((M, NORM))))
    ff = f"{b}.{f}.DenseReluDense"
    if spec.ff == "gated-gelu":
        ts += [Template("ff.wi_0.w", f"{ff}.wi_0.weight", axes((FF, OUT), (M, IN))),
               Template("ff.wi_1.w", f"{ff}.wi_1.weight", axes((FF, OUT), (M, IN)))]
    else:
        ts.append(Template("ff.wi.w", f"{ff}.wi.weight", axes((FF, OUT), (M, IN))))
    ts.append(Template("ff.wo.w", f"{ff}.wo.weight", axes((M, OUT), (FF, IN))))
    return ts


def head_input_scale(spec: ModelSpec) -> float:
    return spec.d_model ** -0.5 if spec.head == "tied" else 1.0


T5 = Family(
    name="t5",
    norm="rms",
    norm_position="pre",
    eps_key="layer_norm_epsilon",
    stacks=("enc", "dec"),
    dim_keys=("d_model", "d_kv", "d_ff", "num_heads", "num_layers", "num_decoder_layers"),
    global_templates=global_templates,
    stack_templates=stack_templates,
    block_templates=block_templates,
    head_input_scale=head_input_scale,
    extra_dims=lambda config: {Kind.BUCKET: config.get("relative_attention_num_buckets", 32)},
)
