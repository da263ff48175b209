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

from surgery.args import ArgInfo
from surgery.families.base import Family, Layout, Template, TokenizerInfo, common_args
from surgery.view import Kind, Role, axes

M, INNER, KV, FF, V = Kind.MODEL, Kind.INNER, Kind.KV_INNER, Kind.FF, Kind.VOCAB
OUT, IN, NORM, HNORM, KEEP = Role.OUT, Role.IN, Role.NORM, Role.HEAD_NORM, Role.KEEP


def global_templates(spec, layout: Layout) -> list[Template]:
    tied = not layout.untied_head
    ts = [Template("embed.tok", f"{layout.prefix}embed_tokens.weight", axes((V, KEEP), (M, OUT)),
                   aliases=("lm_head.weight",) if tied else ())]
    if not tied:
        ts.append(Template("head.w", "lm_head.weight", axes((V, KEEP), (M, IN))))
    return ts


def stack_templates(spec, layout: Layout, stack: str) -> list[Template]:
    role = NORM if layout.untied_head else HNORM
    return [Template("final_norm.w", f"{layout.prefix}norm.weight", axes((M, role)))]


def block_templates(spec, layout: Layout, stack: str) -> list[Template]:
    b = f"{layout.prefix}layers.{{i}}"
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


def hf_config(spec) -> dict:
    return {
        "vocab_size": spec.vocab,
        "hidden_size": spec.d_model,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.n_kv_heads,
        "head_dim": spec.head_dim,
        "intermediate_size": spec.d_ff,
        "max_position_embeddings": spec.max_positions,
        "tie_word_embeddings": spec.head == "tied",
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }


def spec_fields(config: dict) -> dict:
    d, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or d // heads
    kv = config.get("num_key_value_heads") or heads
    return dict(
        layers=config["num_hidden_layers"], d_model=d, heads=heads, kv_heads=None if kv == heads else kv,
        d_ff=config["intermediate_size"], d_kv=None if head_dim * heads == d else head_dim,
        vocab=config["vocab_size"], max_positions=config.get("max_position_embeddings", 2048),
        # Whether the head is untied is also visible in the weights (a separate lm_head.weight).
        head="tied" if config.get("tie_word_embeddings", False) else "untied",
    )


def recipe_fields(values: dict) -> dict:
    """tie=true|false is how a recipe says head=tied|untied."""
    if "tie" in values:
        values = dict(values)
        values["head"] = "tied" if values.pop("tie") else "untied"
    return values


def layout_of(cls: str, names: set[str]) -> Layout:
    return Layout(cls, prefix="" if cls.endswith("Model") else "model.")


def validate(spec) -> None:
    if spec.head not in ("tied", "untied"):
        raise ValueError(f"head= is a t5 option ({spec.family}: tie=true|false)")


# GQA arguments every llama-layout family takes.
DECODER_ARGS = dict(
    kv_heads=ArgInfo("int", None, help="key/value heads (grouped-query attention; default heads)", low=0, open_low=True),
    d_kv=ArgInfo("int", None, help="head size (default d_model/heads)", low=0, open_low=True),
    tie=ArgInfo("bool", True, help="tie the LM head to the token embedding"),
    max_positions=ArgInfo("int", 2048, help="rotary context length (no parameters)", low=0, open_low=True),
)
TOKENIZER = TokenizerInfo(
    specials={"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    single="$A </s>",
    pair="$A </s> $B </s>",
)


def describe(spec) -> str:
    return f", tie={'true' if spec.head == 'tied' else 'false'}"


LLAMA = Family(
    name="llama",
    kind="decoder",
    summary="Llama (LlamaForCausalLM): pre-RMSNorm decoder, SwiGLU, rotary positions, grouped-query attention",
    args=common_args(**DECODER_ARGS),
    config_class="LlamaConfig",
    model_class="LlamaForCausalLM",
    classes={"LlamaForCausalLM": "lm", "LlamaModel": ""},
    hf_config=hf_config,
    spec_fields=spec_fields,
    recipe_fields=recipe_fields,
    default_objective="clm",
    tokenizer=TOKENIZER,
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
              "num_hidden_layers"),
    global_templates=global_templates,
    stack_templates=stack_templates,
    block_templates=block_templates,
    layout_of=layout_of,
    # transformers writes a tied head once (as the embedding); an untied one as lm_head.weight.
    untied_head_in=lambda names, get: "lm_head.weight" in names,
    plan_layout=lambda spec: Layout("LlamaForCausalLM", prefix="model.", untied_head=spec.head == "untied"),
)
