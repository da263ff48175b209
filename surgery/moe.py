"""Sparse upcycling: `moe(experts=E, top_k=k)` turns a dense decoder into a mixture of experts
(Komatsuzaki et al., 2023), llama -> mixtral and qwen2 -> qwen2_moe.

Every expert of a layer is a copy of that layer's dense SwiGLU MLP (gate and up rows fused into
`experts.gate_up_proj[e]`, down into `experts.down_proj[e]`); everything else (embeddings,
attention, norms, head) is copied as it is. The router is freshly initialised, normal with the
config's initializer_range (0.02), from the op's seed: whatever it routes to, the k experts a token
reaches are identical and their weights are renormalised to sum to 1 (Mixtral always; Qwen2-MoE
with norm_topk_prob=true, which its family fixes), so the layer's output is the dense MLP's up to
float rounding of the weights' sum (measured: docs/surgery.md). A random router (not zero) is what
lets the experts diverge: with a zero router every token would pick the same k experts, which
would get the same gradients and stay copies. Qwen2-MoE's shared expert starts as a copy of the
dense MLP with its down_proj zero, so it adds exactly 0 (as an identity block's output
projection); its gate (sigmoid(shared_expert_gate x), zero weight: 1/2) is fresh.

Optimizer state (`optimizer_on_grow=grow`): each expert's AdamW moments and step are the dense
MLP's, copied into every expert; the router, the shared expert and its gate start without state
(AdamW's first step). With `optimizer_on_grow=reset` (the default) every moment starts fresh.

No torch at import: the plan reads `moe_problem`.
"""

from __future__ import annotations

from surgery.errors import SurgeryError

# dense family -> its mixture-of-experts family (transformers' class for the same architecture)
MOE_OF = {"llama": "mixtral", "qwen2": "qwen2_moe"}

# why the other families cannot be upcycled
NO_MOE = {
    "bert": "transformers has no mixture-of-experts BERT class",
    "roberta": "transformers has no mixture-of-experts RoBERTa class",
    "albert": "transformers has no mixture-of-experts ALBERT class",
    "gpt2": "transformers has no mixture-of-experts GPT-2 class",
    "t5": "transformers' T5 mixture of experts (SwitchTransformers) has no surgery family yet",
    "mixtral": "it is a mixture of experts already",
    "qwen2_moe": "it is a mixture of experts already",
}

# dims the op keeps: the experts are the dense MLP, the rest is copied
KEEPS = ("layers", "d_model", "heads", "n_kv_heads", "head_dim", "d_ff", "vocab", "max_positions", "head")
_SHOWN = {"n_kv_heads": "kv_heads", "head_dim": "d_kv", "head": "tie"}


def moe_problem(src, dst, args: dict) -> tuple[str, str] | None:
    """The first reason moe cannot turn spec src into spec dst: (message, "op" | "dst"), or None."""
    if src.family not in MOE_OF:
        why = NO_MOE.get(src.family, f"transformers has no mixture-of-experts class for {src.family}")
        return (f"moe upcycles a dense llama or qwen2 decoder; {src.family} cannot be upcycled: {why}", "op")
    want = MOE_OF[src.family]
    if dst.family != want:
        return f"moe turns a {src.family} model into a {want} model; the target is {dst.family}", "dst"
    for key in KEEPS:
        a, b = getattr(src, key), getattr(dst, key)
        if a != b:
            return (f"moe keeps {_SHOWN.get(key, key)} ({a} -> {b}): every expert is a copy of the dense MLP; "
                    "change it with a separate op", "dst")
    for key in ("experts", "top_k"):
        if args.get(key) is not None and args[key] != getattr(dst, key):
            return f"moe({key}={args[key]}) but the target has {key}={getattr(dst, key)}", "op"
    return None


def _copied_config(model, dst):
    """The target's config, with what the source's config says beyond the spec (eps, rope, act)."""
    import transformers

    cfg = dst.hf_config()
    for key in ("rms_norm_eps", "rope_parameters", "hidden_act", "attention_dropout", "initializer_range",
                "bos_token_id", "eos_token_id", "pad_token_id"):
        if hasattr(model.config, key):
            cfg[key] = getattr(model.config, key)
    return getattr(transformers, dst.descriptor.config_class)(**cfg)


def upcycle(model, dst, seed: int = 0):
    """A LlamaForCausalLM / Qwen2ForCausalLM as dst's MixtralForCausalLM / Qwen2MoeForCausalLM
    computing the same function; the router drawn from `seed`."""
    import torch
    import transformers

    from surgery.families.build import spec_of_model

    src = spec_of_model(model)
    problem = moe_problem(src, dst, {})
    if problem is not None:
        raise SurgeryError(problem[0])
    config = _copied_config(model, dst)
    dtype = next(model.parameters()).dtype
    new = getattr(transformers, dst.descriptor.model_class)(config).to(dtype)
    sd = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    g = torch.Generator().manual_seed(seed)
    std = getattr(config, "initializer_range", 0.02)
    e, d = dst.experts, dst.d_model
    with torch.no_grad():
        for name, value in sd.items():
            if ".mlp." not in name:
                out[name] = value.clone()
        for i in range(dst.layers):
            m = f"model.layers.{i}.mlp"
            gate, up, down = (sd[f"{m}.{p}_proj.weight"] for p in ("gate", "up", "down"))
            out[f"{m}.experts.gate_up_proj"] = torch.cat([gate, up], 0).unsqueeze(0).repeat(e, 1, 1)
            out[f"{m}.experts.down_proj"] = down.unsqueeze(0).repeat(e, 1, 1)
            out[f"{m}.gate.weight"] = (torch.randn(e, d, generator=g, dtype=torch.float32) * std).to(dtype)
            if dst.family == "qwen2_moe":
                out[f"{m}.shared_expert.gate_proj.weight"] = gate.clone()
                out[f"{m}.shared_expert.up_proj.weight"] = up.clone()
                out[f"{m}.shared_expert.down_proj.weight"] = torch.zeros_like(down)
                out[f"{m}.shared_expert_gate.weight"] = torch.zeros(1, d, dtype=dtype)
        own = new.state_dict()
        if dst.head == "tied":
            out.pop("lm_head.weight", None)
        missing = [k for k in own if k not in out and not (k == "lm_head.weight" and dst.head == "tied")]
        unexpected = [k for k in out if k not in own]
        if missing or unexpected:
            raise SurgeryError(f"internal: upcycling {type(model).__name__}: missing {missing[:3]}, unexpected {unexpected[:3]}")
        new.load_state_dict(out, strict=False)
        new.tie_weights()
    return new.train(model.training)


def grow_in_run(trainer, model, src_spec, dst_spec, growth, seed: int, opt_state=None):
    """The moe op inside a run (catalog.COMPRESS_OPS["moe"].in_run): upcycled model, and with
    optimizer_on_grow=grow every expert takes its dense MLP's moments."""
    new = trainer.transform(model, src_spec, dst_spec, growth, seed)
    return new, (upcycle_optimizer_state(opt_state, dst_spec) if opt_state else None)


def upcycle_optimizer_state(state: dict[str, dict], dst) -> dict[str, dict]:
    """The dense model's AdamW state (by parameter name) for the upcycled model: every expert's
    moments and step are its dense MLP's; router, shared expert and its gate have none (fresh)."""
    import torch

    out = {name: dict(s) for name, s in state.items() if ".mlp." not in name}
    for i in range(dst.layers):
        m = f"model.layers.{i}.mlp"
        dense = [state.get(f"{m}.{p}_proj.weight") for p in ("gate", "up", "down")]
        if any(s is None or "exp_avg" not in s for s in dense):
            continue  # never stepped: the experts start fresh too
        gate, up, down = dense
        both = {}
        for key in ("exp_avg", "exp_avg_sq"):
            both[key] = torch.cat([gate[key], up[key]], 0).unsqueeze(0).repeat(dst.experts, 1, 1)
        out[f"{m}.experts.gate_up_proj"] = {**both, "step": torch.as_tensor(gate["step"]).clone()}
        out[f"{m}.experts.down_proj"] = {key: down[key].unsqueeze(0).repeat(dst.experts, 1, 1) for key in ("exp_avg", "exp_avg_sq")}
        out[f"{m}.experts.down_proj"]["step"] = torch.as_tensor(down["step"]).clone()
    return out

