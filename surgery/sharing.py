"""ALBERT's partial cross-layer sharing (shared attention, shared FFN) on transformers' ALBERT.

transformers' `AlbertForMaskedLM` shares whole layers only (`num_hidden_groups`). A model with
`share=attention` or `share=ffn` is the unshared layout (one layer group per layer) whose layers
hold the *same module objects* for the shared part, layer 0's:

- attention: `attention` (query, key, value, dense and the attention LayerNorm);
- ffn: `ffn`, `ffn_output` and `full_layer_layer_norm`.

`model.parameters()` then yields each shared tensor once (AdamW trains one copy, the parameter count
is the planned one), and every layer computes with it. The config records what is shared
(`surgery_share`, an extra config.json key transformers keeps and ignores).

Saving: safetensors cannot hold one tensor under several names and transformers refuses undeclared
shared tensors, so each tied layer gets a `state_dict` post-hook that gives the state dict its own
copies of the shared tensors. A checkpoint therefore holds every layer's tensors (equal values):
a plain `AlbertForMaskedLM.from_pretrained` loads it as an unshared model computing the same
function, and `tie_shared` (called by `surgery.compress.load_model`, the fine-tuning loader and
every builder) ties it again.
"""

from __future__ import annotations

import torch

CONFIG_KEY = "surgery_share"
# The AlbertLayer submodules each partial sharing kind ties across layers.
SHARED_MODULES: dict[str, tuple[str, ...]] = {
    "attention": ("attention",),
    "ffn": ("ffn", "ffn_output", "full_layer_layer_norm"),
}
PARTIAL = tuple(SHARED_MODULES)


def albert_layers(model) -> list:
    """The AlbertLayer of every layer of an unshared-layout ALBERT (any Albert* class)."""
    base = getattr(model, "base_model", model)
    encoder = getattr(base, "encoder", None)
    groups = getattr(encoder, "albert_layer_groups", None)
    cfg = model.config
    if groups is None or cfg.inner_group_num != 1 or cfg.num_hidden_groups != cfg.num_hidden_layers:
        raise ValueError("partial sharing needs an ALBERT with one layer group per layer (num_hidden_groups = "
                         "num_hidden_layers, inner_group_num = 1)")
    return [group.albert_layers[0] for group in groups]


def shared_kind(config) -> str | None:
    """"attention" or "ffn" when the config records partial sharing, else None."""
    what = getattr(config, CONFIG_KEY, None)
    return what if what in PARTIAL else None


def _copy_shared(module, state_dict, prefix, local_metadata) -> None:
    """state_dict post-hook of a tied layer: its own copies of the tensors it shares with layer 0
    (kept as they are for keep_vars=True, where the caller asked for the parameters themselves)."""
    for name in SHARED_MODULES[module._surgery_shared]:
        start = f"{prefix}{name}."
        for key, value in list(state_dict.items()):
            if key.startswith(start) and not isinstance(value, torch.nn.Parameter):
                state_dict[key] = value.clone()


def tie_shared(model, what: str | None = None):
    """Make every layer's `what` modules ("attention" or "ffn") layer 0's, in place; `what` left out:
    the config's `surgery_share` (nothing to do when it records none). Layer 0's values are kept.
    Records `what` in the config. Returns the model."""
    what = what if what is not None else shared_kind(model.config)
    if what is None:
        return model
    if what not in SHARED_MODULES:
        raise ValueError(f"partial sharing is one of {', '.join(PARTIAL)}, got {what!r}")
    current = shared_kind(model.config)
    if current is not None and current != what:
        raise ValueError(f"the model already shares {current}; cannot also tie {what}")
    layers = albert_layers(model)
    first = layers[0]
    for layer in layers[1:]:
        for name in SHARED_MODULES[what]:
            setattr(layer, name, getattr(first, name))
        if getattr(layer, "_surgery_shared", None) is None:
            layer._surgery_shared = what
            layer.register_state_dict_post_hook(_copy_shared)
    setattr(model.config, CONFIG_KEY, what)
    return model


def is_tied(model, what: str) -> bool:
    """Whether every layer holds layer 0's `what` modules (the same objects)."""
    layers = albert_layers(model)
    return all(getattr(layer, name) is getattr(layers[0], name) for layer in layers[1:] for name in SHARED_MODULES[what])


def tie_built(model, spec):
    """The family hook of a freshly built ALBERT: share=attention|ffn tied (see tie_shared)."""
    return tie_shared(model)
