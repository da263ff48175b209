"""Mixtral (MixtralForCausalLM): Llama's decoder with a sparse mixture of experts in place of the
MLP; what a llama becomes under `moe(experts=E, top_k=k)` (sparse upcycling, surgery/moe.py).

Each layer's feed-forward is a router (`mlp.gate.weight`, [E, d_model]) and E SwiGLU experts
stored by transformers 5 as two fused 3-D tensors: `mlp.experts.gate_up_proj` [E, 2*d_ff, d_model]
(gate rows then up rows) and `mlp.experts.down_proj` [E, d_model, d_ff]. A token goes to the k
experts of highest router probability, weighted by those probabilities renormalised to sum to 1
(MixtralTopKRouter always renormalises): k identical experts then give exactly the dense MLP.

Limits (the view cannot express them yet): the family has no neutral view, so growth ops refuse it
(`no_growth`; grow the dense llama first, then `moe`), and its tensor groups are written here. It
is trained, checkpointed, resumed and saved as any transformers model (`surgery.compress.load_model`
reads it with from_pretrained). The router's load-balancing loss is off (`output_router_logits`
false), as transformers' default: the objective is plain next-token prediction.
"""

from __future__ import annotations

from surgery.args import ArgInfo
from surgery.families.base import Family, common_args
from surgery.families.llama import DECODER_ARGS, TOKENIZER
from surgery.families.llama import hf_config as llama_hf_config
from surgery.families.llama import recipe_fields as llama_recipe_fields
from surgery.families.llama import spec_fields as llama_spec_fields

MOE_ARGS = dict(
    experts=ArgInfo("int", 8, help="experts per layer (each a SwiGLU MLP of d_ff)", low=2),
    top_k=ArgInfo("int", 2, help="experts each token is routed to (weights renormalised over them)", low=1),
)


def recipe_fields(values: dict) -> dict:
    values = dict(llama_recipe_fields(values))
    for key, arg in MOE_ARGS.items():
        values.setdefault(key, arg.default)
    return values


def hf_config(spec) -> dict:
    return {
        **llama_hf_config(spec),
        "num_local_experts": spec.experts,
        "num_experts_per_tok": spec.top_k,
        "output_router_logits": False,
        "sliding_window": None,
        # Llama's defaults (a recipe's llama and mixtral of the same dims compute alike);
        # upcycling copies the source's own values.
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    }


def spec_fields(config: dict) -> dict:
    return dict(llama_spec_fields(config), experts=config.get("num_local_experts", 8),
                top_k=config.get("num_experts_per_tok", 2))


def validate(spec) -> None:
    if spec.head not in ("tied", "untied"):
        raise ValueError(f"head= is a t5 option ({spec.family}: tie=true|false)")
    if spec.experts is None or spec.top_k is None:
        raise ValueError(f"{spec.family} needs experts= and top_k=")
    if spec.experts < 2:
        raise ValueError(f"experts must be at least 2, got {spec.experts}")
    if not 1 <= spec.top_k <= spec.experts:
        raise ValueError(f"top_k must be between 1 and experts={spec.experts}, got {spec.top_k}")


def attention_and_norms(spec, Tensor, TensorGroup, bias: bool = False) -> list:
    """Llama's attention, norms and embedding groups (every mixture-of-experts decoder here)."""
    d, v, n, inner, kv = spec.d_model, spec.vocab, spec.layers, spec.inner_dim, spec.kv_inner_dim
    a = "model.layers.{i}.self_attn"
    qkv = [Tensor(f"{a}.q_proj.weight", (inner, d), n), Tensor(f"{a}.{{k,v}}_proj.weight", (kv, d), 2 * n)]
    if bias:
        qkv += [Tensor(f"{a}.q_proj.bias", (inner,), n), Tensor(f"{a}.{{k,v}}_proj.bias", (kv,), 2 * n)]
    return [
        TensorGroup("embedding", (Tensor("model.embed_tokens.weight", (v, d), 1),)),
        TensorGroup("attention q/k/v", tuple(qkv)),
        TensorGroup("attention o", (Tensor(f"{a}.o_proj.weight", (d, inner), n),)),
    ]


def norms_and_head(spec, Tensor, TensorGroup) -> list:
    d, v, n = spec.d_model, spec.vocab, spec.layers
    head = (TensorGroup("lm head", (Tensor("lm_head.weight", (v, d), 1),)) if spec.head == "untied"
            else TensorGroup("lm head", (), note="tied"))
    return [TensorGroup("norms", (Tensor("model.layers.{i}.{input,post_attention}_layernorm.weight", (d,), 2 * n),
                                  Tensor("model.norm.weight", (d,), 1))), head]


def tensor_groups(spec, Tensor, TensorGroup) -> list:
    d, ff, n, e = spec.d_model, spec.d_ff, spec.layers, spec.experts
    m = "model.layers.{i}.mlp"
    return [
        *attention_and_norms(spec, Tensor, TensorGroup),
        TensorGroup("router", (Tensor(f"{m}.gate.weight", (e, d), n),)),
        TensorGroup("feed-forward in", (Tensor(f"{m}.experts.gate_up_proj", (e, 2 * ff, d), n),),
                    note=f" ({e} experts, {spec.top_k} per token)"),
        TensorGroup("feed-forward out", (Tensor(f"{m}.experts.down_proj", (e, d, ff), n),)),
        *norms_and_head(spec, Tensor, TensorGroup),
    ]


def active_params(spec) -> int:
    """Every parameter but the experts a token is not routed to: (E - k) of them per layer."""
    return spec.params - spec.layers * (spec.experts - spec.top_k) * 3 * spec.d_model * spec.d_ff


def describe(spec) -> str:
    return f", tie={'true' if spec.head == 'tied' else 'false'}, experts={spec.experts}, top_k={spec.top_k}"


def json_fields(spec) -> dict:
    return {"kv_heads": spec.n_kv_heads, "head": spec.head, "max_positions": spec.max_positions,
            "experts": spec.experts, "top_k": spec.top_k, "active_params": spec.active_params}


NO_GROWTH = ("growing {family} models is not supported yet: the neutral view has no expert axis "
             "(grow the dense {dense} model first, then upcycle it with moe)")

MIXTRAL = Family(
    name="mixtral",
    kind="decoder",
    summary="Mixtral (MixtralForCausalLM): Llama's decoder with a sparse mixture of SwiGLU experts (top-k routing)",
    args=common_args(**DECODER_ARGS, **MOE_ARGS),
    config_class="MixtralConfig",
    model_class="MixtralForCausalLM",
    classes={"MixtralForCausalLM": "lm", "MixtralModel": ""},
    hf_config=hf_config,
    spec_fields=spec_fields,
    recipe_fields=recipe_fields,
    default_objective="clm",
    tokenizer=TOKENIZER,
    tiny=dict(layers=2, d_model=16, heads=4, kv_heads=2, d_ff=32, max_positions=64, experts=4, top_k=2),
    validate=validate,
    describe=describe,
    json_fields=json_fields,
    growth_keeps=("head",),
    no_growth=NO_GROWTH.format(family="mixtral", dense="llama"),
    norm="rms",
    tensor_groups=tensor_groups,
    active_params=active_params,
)
