"""The torch side of the family descriptors: build a model from a spec, tell the family, layout and
spec of a model or a checkpoint. Everything family-specific comes from the descriptor.
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from typing import Callable

import torch

from surgery.errors import SurgeryError
from surgery.families import FAMILIES, Family, Layout, family_of_class
from surgery.spec import ModelSpec


def _hook(path: str) -> Callable:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def untie_t5_head(model, weight: torch.Tensor | None = None) -> None:
    """Give a T5ForConditionalGeneration its own lm_head.weight.

    transformers 5 ties lm_head to shared whenever it builds from a config; dropping the pair from
    `all_tied_weights_keys` is what its loader does when a checkpoint carries a different head, so
    save_pretrained then keeps both tensors and from_pretrained loads them untied.
    """
    getattr(model, "all_tied_weights_keys", {}).pop("lm_head.weight", None)
    if weight is None:
        weight = torch.empty_like(model.shared.weight).normal_(0.0, model.config.initializer_factor)
    model.lm_head.weight = torch.nn.Parameter(weight.detach().clone())


def untie_t5_head_if_asked(model, spec: ModelSpec):
    if spec.head == "untied":
        untie_t5_head(model)
    return model


def build_model(spec: ModelSpec, seed: int = 0, **config_overrides):
    """A freshly initialised pretraining model of `spec` (the family's model_class, its quirks
    applied: an untied T5 head really untied, ALBERT's shared blocks tied)."""
    import transformers

    family = spec.descriptor
    config = getattr(transformers, family.config_class)(**{**spec.hf_config(), **config_overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, family.model_class)(config)
    return apply_quirks(model, spec)


def give_own_head(model, weight: torch.Tensor) -> None:
    """A model transformers built with a tied head, given its own head tensor (the family's hook)."""
    family = family_of_class(type(model).__name__)
    if family is not None and family.own_head:
        _hook(family.own_head)(model, weight)


def apply_quirks(model, spec: ModelSpec):
    """What the family does to a model transformers built or loaded (its `after_build` hook)."""
    hook = spec.descriptor.after_build
    return _hook(hook)(model, spec) if hook else model


def _is_untied(model) -> bool:
    head = getattr(model, "lm_head", None)
    weight = getattr(head, "weight", None)
    return weight is not None and weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()


def _family_of_model(model) -> Family:
    cls = type(model).__name__
    family = family_of_class(cls)
    if family is None or not family.has_view:
        known = [c for f in FAMILIES.values() if f.has_view for c in f.classes]
        raise SurgeryError(f"unsupported model class {cls} (supported: {', '.join(known)})")
    return family


def layout_of_model(model) -> tuple[Family, Layout]:
    family = _family_of_model(model)
    layout = family.layout_of(type(model).__name__, set(model.state_dict()))
    if family.untied_head_in is not None and _is_untied(model):
        layout = replace(layout, untied_head=True)
    return family, layout


def spec_of_model(model) -> ModelSpec:
    spec = ModelSpec.from_hf_config(model.config.to_dict())
    if spec.descriptor.untied_head_in is not None:
        spec = spec.model_copy(update={"head": "untied" if _is_untied(model) else
                                       ("tied" if spec.head == "untied" else spec.head)})
    return spec


def layout_of_checkpoint(config: dict, names: set[str], get: Callable[[str], torch.Tensor]) -> tuple[Family, Layout, ModelSpec]:
    """Family, layout and spec of a checkpoint from its config.json and tensor names."""
    archs = config.get("architectures") or []
    model_type = config.get("model_type")
    growable = {n: f for n, f in FAMILIES.items() if f.has_view}
    if model_type not in growable:
        raise SurgeryError(f"unsupported architecture {model_type!r} (supported: {', '.join(growable)})")
    family = growable[model_type]
    cls = next((a for a in archs if family_of_class(a) is not None), None)
    if cls is None:
        if archs:
            known = [c for f in growable.values() for c in f.classes]
            raise SurgeryError(f"unsupported architecture {archs[0]} (supported: {', '.join(known)})")
        cls = family.class_of(names)
    if family_of_class(cls) is not family:
        raise SurgeryError(f"config.json says model_type {model_type!r} but architectures {cls}")
    try:
        spec = ModelSpec.from_hf_config(config)
    except (ValueError, KeyError) as err:
        raise SurgeryError(f"config.json does not describe a usable {model_type} model: {err}") from None
    layout = family.layout_of(cls, names)
    if family.untied_head_in is not None:
        untied = family.untied_head_in(names, get)
        if spec.head == "untied" and not untied:
            raise SurgeryError("config.json says tie_word_embeddings=false but the checkpoint has no lm_head.weight")
        layout = replace(layout, untied_head=untied)
        if untied:
            spec = spec.model_copy(update={"head": "untied"})
    return family, layout, spec


def with_pretraining_head(model):
    """A bare model (BertModel, RobertaModel, GPT2Model, LlamaModel, ...) as its family's pretraining
    class with the same body and a fresh head: an MLM head's transform newly initialised with its
    decoder tied to the word embeddings, an LM head tied or untied as the config says. Returns
    (model, note); the note is None when the model already had its head."""
    import transformers

    cls = type(model).__name__
    family = family_of_class(cls)
    if family is None or family.classes.get(cls) != "":
        return model, None
    new = getattr(transformers, family.model_class)(model.config)
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("pooler.")}
    missing, unexpected = new.base_model.load_state_dict(body, strict=False)
    missing = [k for k in missing if "pooler" not in k and "position_ids" not in k]
    if missing or unexpected:
        raise SurgeryError(f"cannot put the {cls} body under {family.model_class}: "
                           f"{', '.join((missing or unexpected)[:3])} do not match")
    new.tie_weights()
    tied = new.get_output_embeddings() is not None and (
        new.get_output_embeddings().weight.data_ptr() == new.get_input_embeddings().weight.data_ptr())
    note = (f"a bare {cls} checkpoint: training adds {family.model_class}'s head, freshly initialised"
            + (", its output tied to the embeddings" if tied else ", untied (as the config says)"))
    return new, note
