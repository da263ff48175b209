"""GPT2LMHeadModel: decoder-only, pre-LayerNorm, learned absolute positions, Conv1D weights, head
tied to the token embedding.

Quirks the view records:
- Conv1D stores weights as [in, out] (transposed against nn.Linear): only the axis order differs;
- q, k and v are fused in one `c_attn` whose output axis is q|k|v side by side (`Kind.INNER3`,
  whose mapping is the head mapping three times, built in surgery/ops/width.py);
- the final LayerNorm `ln_f` feeds the tied head, so it is HEAD_NORM (width growth divides it by
  the copy count; the head reads the embedding's copied columns);
- pre-LN: identity blocks zero the residual writers (`attn.c_proj`, `mlp.c_proj`), and `l` is
  exact at any ratio with mean padding (the residual stream is only ever summed).
"""

from __future__ import annotations

from surgery.families.base import (
    MAX_POSITIONS,
    Family,
    Layout,
    Template,
    TokenizerInfo,
    common_args,
)
from surgery.view import Kind, Role, axes

M, INNER, INNER3, FF, V, POS = Kind.MODEL, Kind.INNER, Kind.INNER3, Kind.FF, Kind.VOCAB, Kind.POS
OUT, IN, KEEP = Role.OUT, Role.IN, Role.KEEP
NORM, NB, HN, HNB = Role.NORM, Role.NORM_BIAS, Role.HEAD_NORM, Role.HEAD_NORM_BIAS


def _conv1d(local: str, hf: str, inp: Kind, out: Kind) -> list[Template]:
    return [Template(f"{local}.w", f"{hf}.weight", axes((inp, IN), (out, OUT))),  # [in, out]
            Template(f"{local}.b", f"{hf}.bias", axes((out, OUT)))]


def _norm(local: str, hf: str, gain=NORM, shift=NB) -> list[Template]:
    return [Template(f"{local}.w", f"{hf}.weight", axes((M, gain))),
            Template(f"{local}.b", f"{hf}.bias", axes((M, shift)))]


def global_templates(spec, layout: Layout) -> list[Template]:
    p = layout.prefix
    return [
        Template("embed.tok", f"{p}wte.weight", axes((V, KEEP), (M, OUT)), aliases=("lm_head.weight",)),
        Template("embed.pos", f"{p}wpe.weight", axes((POS, KEEP), (M, OUT))),
    ]


def stack_templates(spec, layout: Layout, stack: str) -> list[Template]:
    return _norm("final_norm", f"{layout.prefix}ln_f", HN, HNB)


def block_templates(spec, layout: Layout, stack: str) -> list[Template]:
    b = f"{layout.prefix}h.{{i}}"
    return [
        *_norm("attn.norm", f"{b}.ln_1"),
        *_conv1d("attn.qkv", f"{b}.attn.c_attn", M, INNER3),
        *_conv1d("attn.o", f"{b}.attn.c_proj", INNER, M),
        *_norm("ff.norm", f"{b}.ln_2"),
        *_conv1d("ff.wi", f"{b}.mlp.c_fc", M, FF),
        *_conv1d("ff.wo", f"{b}.mlp.c_proj", FF, M),
    ]


def hf_config(spec) -> dict:
    return {
        "vocab_size": spec.vocab,
        "n_embd": spec.d_model,
        "n_layer": spec.layers,
        "n_head": spec.heads,
        "n_inner": spec.d_ff,
        "n_positions": spec.max_positions,
        "tie_word_embeddings": True,
        "bos_token_id": None,
        "eos_token_id": None,
    }


def spec_fields(config: dict) -> dict:
    d = config["n_embd"]
    return dict(layers=config["n_layer"], d_model=d, heads=config["n_head"], d_ff=config.get("n_inner") or 4 * d,
                vocab=config["vocab_size"], max_positions=config.get("n_positions", 1024))


# Decoder-only: documents are joined with the end-of-text token; <pad> exists for batching.
TOKENIZER = TokenizerInfo(
    specials={"pad_token": "<pad>", "eos_token": "<|endoftext|>", "unk_token": "<unk>"},
    single="$A <|endoftext|>",
    pair="$A <|endoftext|> $B <|endoftext|>",
)

GPT2 = Family(
    name="gpt2",
    kind="decoder",
    summary="GPT-2 (GPT2LMHeadModel): pre-LayerNorm decoder, learned positions, Conv1D weights, tied head",
    args=common_args(max_positions=MAX_POSITIONS),
    config_class="GPT2Config",
    model_class="GPT2LMHeadModel",
    classes={"GPT2LMHeadModel": "lm", "GPT2Model": ""},
    hf_config=hf_config,
    spec_fields=spec_fields,
    default_objective="clm",
    tokenizer=TOKENIZER,
    no_dropout={"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
    tiny=dict(layers=2, d_model=16, heads=4, d_ff=32, max_positions=32),
    json_fields=lambda spec: {"max_positions": spec.max_positions},
    growth_keeps=("max_positions",),
    norm="ln",
    norm_position="pre",
    eps_key="layer_norm_epsilon",
    stacks=("dec",),
    dim_keys=("n_embd", "n_head", "n_inner", "n_layer"),
    global_templates=global_templates,
    stack_templates=stack_templates,
    block_templates=block_templates,
    extra_dims=lambda config: {Kind.POS: config.get("n_positions", 1024)},
    layout_of=lambda cls, names: Layout(cls, prefix="" if cls == "GPT2Model" else "transformer."),
    passthrough=(r"^(transformer\.)?h\.\d+\.attn\.(masked_)?bias$",),
)
