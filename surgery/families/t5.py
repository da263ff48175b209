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

from surgery.args import ArgInfo
from surgery.families.base import Family, Layout, Template, TokenizerInfo, common_args
from surgery.view import Kind, Role, axes

M, INNER, FF, V, H, B = Kind.MODEL, Kind.INNER, Kind.FF, Kind.VOCAB, Kind.HEADS, Kind.BUCKET
OUT, IN, NORM, HNORM, KEEP = Role.OUT, Role.IN, Role.NORM, Role.HEAD_NORM, Role.KEEP

HF_STACK = {"enc": "encoder", "dec": "decoder"}


def _head_is_tied(layout: Layout) -> bool:
    return not layout.untied_head


def global_templates(spec, layout: Layout) -> list[Template]:
    ts = [Template("embed.tok", "shared.weight", axes((V, KEEP), (M, OUT)),
                   aliases=("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
                   + (("lm_head.weight",) if _head_is_tied(layout) else ()))]
    if not _head_is_tied(layout):
        ts.append(Template("head.w", "lm_head.weight", axes((V, KEEP), (M, IN))))
    return ts


def stack_templates(spec, layout: Layout, stack: str) -> list[Template]:
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


def block_templates(spec, layout: Layout, stack: str) -> list[Template]:
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


def head_input_scale(spec) -> float:
    return spec.d_model ** -0.5 if spec.head == "tied" else 1.0


# T5's relative-position table size, as in every released T5 checkpoint.
BUCKETS = 32


def hf_config(spec) -> dict:
    return {
        "vocab_size": spec.vocab,
        "d_model": spec.d_model,
        "d_kv": spec.head_dim,
        "d_ff": spec.d_ff,
        "num_layers": spec.layers,
        "num_decoder_layers": spec.decoder_layers,
        "num_heads": spec.heads,
        "relative_attention_num_buckets": BUCKETS,
        "feed_forward_proj": spec.ff,
        "tie_word_embeddings": spec.head != "tied-unscaled" and spec.head != "untied",
        "decoder_start_token_id": 0,
        "pad_token_id": 0,
        "eos_token_id": 1,
    }


def spec_fields(config: dict) -> dict:
    # transformers 5 always ties T5's head and records the d_model**-0.5 output scaling as
    # `scale_decoder_outputs`; older configs say the same with `tie_word_embeddings`.
    # Whether a head is untied shows only in the weights (a separate lm_head.weight).
    scaled = config.get("scale_decoder_outputs", config.get("tie_word_embeddings", True) is not False)
    return dict(
        layers=config["num_layers"],
        decoder_layers=config.get("num_decoder_layers") or config["num_layers"],
        d_model=config["d_model"],
        heads=config["num_heads"],
        d_ff=config["d_ff"],
        d_kv=None if config["d_kv"] * config["num_heads"] == config["d_model"] else config["d_kv"],
        vocab=config["vocab_size"],
        ff="gated-gelu" if config.get("feed_forward_proj") == "gated-gelu" else "relu",
        head="tied" if scaled else "tied-unscaled",
    )


def untied_head_in(names: set[str], get) -> bool:
    """Old checkpoints store the tied head too; only a different tensor is an untied head."""
    if "lm_head.weight" not in names:
        return False
    import torch  # only reached when reading a checkpoint's tensors

    return not torch.equal(get("lm_head.weight"), get("shared.weight"))


def head_note(spec) -> str:
    return "tied" + (" (x d_model^-0.5)" if spec.head == "tied" else ", unscaled")


T5 = Family(
    name="t5",
    kind="encoder-decoder",
    summary="T5 (T5ForConditionalGeneration): pre-RMSNorm encoder-decoder, relative position bias, no biases",
    args=common_args(
        d_kv=ArgInfo("int", None, help="head size (default d_model/heads)", low=0, open_low=True),
        ff=ArgInfo("choice", "relu", ("relu", "gated-gelu"), "feed-forward kind (gated-gelu: T5 v1.1)"),
        head=ArgInfo("choice", "tied", ("tied", "tied-unscaled", "untied"),
                     "LM head: tied to the embedding with d_model^-0.5 scaling, tied unscaled, or its own"),
    ),
    config_class="T5Config",
    model_class="T5ForConditionalGeneration",
    classes={"T5ForConditionalGeneration": "lm"},
    hf_config=hf_config,
    spec_fields=spec_fields,
    default_objective="span_corruption",
    tokenizer=TokenizerInfo(
        specials={"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"},
        single="$A </s>",
        pair="$A </s> $B </s>",
        sentinels=True,
    ),
    no_dropout={"dropout_rate": 0.0},
    tiny=dict(layers=(2, 2), d_model=16, heads=4, d_ff=32),
    describe=lambda spec: "",
    json_fields=lambda spec: {"ff": spec.ff, "head": spec.head},
    growth_keeps=("ff", "head"),
    after_build="surgery.families.build:untie_t5_head_if_asked",
    own_head="surgery.families.build:untie_t5_head",
    norm="rms",
    norm_position="pre",
    eps_key="layer_norm_epsilon",
    stacks=("enc", "dec"),
    dim_keys=("d_model", "d_kv", "d_ff", "num_heads", "num_layers", "num_decoder_layers"),
    global_templates=global_templates,
    stack_templates=stack_templates,
    block_templates=block_templates,
    head_input_scale=head_input_scale,
    extra_dims=lambda config: {Kind.BUCKET: config.get("relative_attention_num_buckets", BUCKETS)},
    layout_of=lambda cls, names: Layout(cls),
    untied_head_in=untied_head_in,
    plan_layout=lambda spec: Layout("T5ForConditionalGeneration", untied_head=spec.head == "untied"),
    head_note=head_note,
)
