"""Family adapters and building models from specs.

`build_model(spec, seed)` builds the pretraining class of a spec with random weights (an untied T5
head really untied); `family_of`, `layout_of_model`, `layout_of_checkpoint` tell which adapter and
which layout a model or checkpoint has.
"""

from __future__ import annotations

from typing import Callable

import torch

from surgery.errors import SurgeryError
from surgery.families.base import Family, Layout, Template
from surgery.families.bert import BERT
from surgery.families.gpt2 import GPT2
from surgery.families.llama import LLAMA
from surgery.families.t5 import T5
from surgery.spec import ModelSpec

FAMILIES: dict[str, Family] = {"t5": T5, "bert": BERT, "gpt2": GPT2, "llama": LLAMA}

# Classes whose checkpoints we read; value: (family, layout without the per-checkpoint details).
SUPPORTED_CLASSES = {
    "T5ForConditionalGeneration": "t5",
    "BertForMaskedLM": "bert",
    "BertForPreTraining": "bert",
    "BertModel": "bert",
    "GPT2LMHeadModel": "gpt2",
    "LlamaForCausalLM": "llama",
}
DEFAULT_CLASS = {"t5": "T5ForConditionalGeneration", "gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}

__all__ = ["FAMILIES", "Family", "Layout", "Template", "build_model", "family_of", "layout_of_model",
           "layout_of_checkpoint", "untie_t5_head"]


def family_of(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise SurgeryError(f"unsupported family {name!r} (supported: {', '.join(FAMILIES)})") from None


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


def build_model(spec: ModelSpec, seed: int = 0, **config_overrides):
    """A freshly initialised pretraining model of `spec` (T5ForConditionalGeneration / BertForMaskedLM /
    AlbertForMaskedLM, its shared blocks tied)."""
    import transformers

    config_cls = getattr(transformers, spec.hf_config_class)
    model_cls = getattr(transformers, spec.hf_model_class)
    config = config_cls(**{**spec.hf_config(), **config_overrides})
    torch.manual_seed(seed)
    model = model_cls(config)
    if spec.family == "t5" and spec.head == "untied":
        untie_t5_head(model)
    if spec.family == "albert":  # share=attention|ffn: tie those modules across the layers
        from surgery.sharing import tie_shared

        tie_shared(model)
    return model


def _is_untied(model) -> bool:
    head = getattr(model, "lm_head", None)
    return head is not None and head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()


def layout_of_model(model) -> tuple[Family, Layout]:
    cls = type(model).__name__
    fam = SUPPORTED_CLASSES.get(cls)
    if fam is None:
        raise SurgeryError(f"unsupported model class {cls} (supported: {', '.join(SUPPORTED_CLASSES)})")
    if fam == "t5":
        return T5, Layout(cls, untied_head=_is_untied(model))
    if fam == "gpt2":
        return GPT2, Layout(cls, prefix="transformer.")
    if fam == "llama":
        return LLAMA, Layout(cls, untied_head=_is_untied(model))
    names = set(model.state_dict())
    return BERT, _bert_layout(cls, names)


def _bert_layout(cls: str, names: set[str]) -> Layout:
    prefix = "bert." if any(n.startswith("bert.") for n in names) else ""
    return Layout(
        cls,
        prefix=prefix,
        has_pooler=f"{prefix}pooler.dense.weight" in names,
        has_mlm_head="cls.predictions.transform.dense.weight" in names,
    )


def spec_of_model(model) -> ModelSpec:
    spec = ModelSpec.from_hf_config(model.config.to_dict())
    if spec.family in ("t5", "llama") and _is_untied(model):
        spec = spec.model_copy(update={"head": "untied"})
    if spec.family == "llama" and not _is_untied(model):
        spec = spec.model_copy(update={"head": "tied"})
    return spec


def layout_of_checkpoint(config: dict, names: set[str], get: Callable[[str], torch.Tensor]) -> tuple[Family, Layout, ModelSpec]:
    """Family, layout and spec of a checkpoint from its config.json and tensor names."""
    archs = config.get("architectures") or []
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise SurgeryError(f"unsupported architecture {model_type!r} (supported: {', '.join(FAMILIES)})")
    cls = next((a for a in archs if a in SUPPORTED_CLASSES), None)
    if cls is None:
        mlm = "cls.predictions.transform.dense.weight" in names
        cls = DEFAULT_CLASS.get(model_type) or ("BertForMaskedLM" if mlm else "BertModel")
        if archs:
            raise SurgeryError(f"unsupported architecture {archs[0]} (supported: {', '.join(SUPPORTED_CLASSES)})")
    try:
        spec = ModelSpec.from_hf_config(config)
    except (ValueError, KeyError) as err:
        raise SurgeryError(f"config.json does not describe a usable {model_type} model: {err}") from None
    if model_type == "t5":
        untied = False
        if "lm_head.weight" in names:
            # Old checkpoints store the tied head too; only a different tensor is an untied head.
            untied = not torch.equal(get("lm_head.weight"), get("shared.weight"))
        if untied:
            spec = spec.model_copy(update={"head": "untied"})
        return T5, Layout(cls, untied_head=untied), spec
    if SUPPORTED_CLASSES[cls] != model_type:
        raise SurgeryError(f"config.json says model_type {model_type!r} but architectures {cls}")
    if model_type == "gpt2":
        return GPT2, Layout(cls, prefix="transformer."), spec
    if model_type == "llama":
        # transformers writes a tied head once (as the embedding); an untied one as lm_head.weight.
        untied = spec.head == "untied"
        if untied and "lm_head.weight" not in names:
            raise SurgeryError("config.json says tie_word_embeddings=false but the checkpoint has no lm_head.weight")
        return LLAMA, Layout(cls, untied_head=untied), spec
    return BERT, _bert_layout(cls, names), spec
