"""Model specifications: a family plus its dimensions, with no torch import.

A `ModelSpec` is what a recipe's `model X = t5(...)` line declares. It knows how to become the
keyword arguments of the `transformers` config class that builds exactly that model, and how many
parameters that model has, so that planning never needs to build a model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from surgery.families import FAMILIES as _DESCRIPTORS

if TYPE_CHECKING:
    from surgery.families.base import Family as Descriptor

# The family names recipes may use: the registry's keys (surgery/families/__init__.py).
Family = Literal[tuple(_DESCRIPTORS)]  # type: ignore[valid-type]
FAMILIES: tuple[str, ...] = tuple(_DESCRIPTORS)


class ModelSpec(BaseModel):
    """A family and its dimensions, under the names recipes use.

    `layers` is the encoder depth (all of BERT's layers); `decoder_layers` is T5's decoder depth.
    `d_kv` is the per-head size; left out it is `d_model // heads`. BERT and GPT-2 have no separate
    head size. `kv_heads` (llama only) is the number of key/value heads under grouped-query
    attention; left out it is `heads` (multi-head attention). GPT-2's head is always tied; llama's
    is `tied` or `untied` (a recipe writes `tie=true|false`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: Family
    layers: int
    decoder_layers: int | None = None
    d_model: int
    heads: int
    d_ff: int
    d_kv: int | None = None
    vocab: int = 32128
    # T5 only: the feed-forward kind and how the LM head relates to the shared embedding.
    ff: Literal["relu", "gated-gelu"] = "relu"
    head: Literal["tied", "tied-unscaled", "untied"] = "tied"
    # BERT and GPT-2: learned absolute positions (llama: the rotary context length, no parameters).
    max_positions: int = 512
    # llama only: key/value heads (grouped-query attention); None = heads.
    kv_heads: int | None = None
    # ALBERT only: factorized embedding size E (V x E embeddings, E -> d_model projection; None:
    # E = d_model) and cross-layer sharing (all: one set of layer weights used by every layer;
    # attention / ffn: only the attention block / only the feed-forward block shared, see
    # surgery/sharing.py for how such a model exists as a transformers model).
    embedding: int | None = None
    share: Literal["none", "all", "attention", "ffn"] = "none"
    # mixture-of-experts families only (mixtral, qwen2_moe): experts per layer, experts each token
    # is routed to; the dense families leave them None.
    experts: int | None = None
    top_k: int | None = None

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        family = self.descriptor
        for name in ("layers", "d_model", "heads", "d_ff", "vocab"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if len(family.stacks) == 2 and family.has_view:
            if self.decoder_layers is None:
                raise ValueError(f"{self.family} needs layers=ENCODER+DECODER, e.g. layers=6+6")
            if self.decoder_layers <= 0:
                raise ValueError("decoder layers must be positive")
        elif self.decoder_layers is not None:
            raise ValueError(f"{self.family} has one stack: write layers=N, not E+D")
        # a field the family does not take must keep its default (a recipe cannot set it)
        for name, arg in (("ff", "ff"), ("head", "head"), ("kv_heads", "kv_heads"), ("embedding", "embedding"),
                          ("share", "share"), ("experts", "experts"), ("top_k", "top_k")):
            if arg not in family.args and getattr(self, name) != ModelSpec.model_fields[name].default:
                if name == "head" and "tie" in family.args:
                    continue
                raise ValueError(f"{arg}= is not a {self.family} option (it takes {', '.join(family.args)})")
        if self.d_kv is not None and "d_kv" not in family.args and self.d_kv * self.heads != self.d_model:
            raise ValueError(f"{self.family} has no separate head size: d_kv must equal d_model / heads")
        if self.kv_heads is not None and (self.kv_heads <= 0 or self.heads % self.kv_heads):
            raise ValueError(f"kv_heads={self.kv_heads} must divide heads={self.heads} (grouped-query attention)")
        if self.d_kv is None and self.d_model % self.heads != 0:
            raise ValueError(
                f"heads={self.heads} does not divide d_model={self.d_model}"
                + (" (give d_kv= to set the head size explicitly)" if "d_kv" in family.args else "")
            )
        family.validate(self)
        return self

    @property
    def descriptor(self) -> "Descriptor":
        """Everything known about this spec's family (surgery/families/<family>.py)."""
        return _DESCRIPTORS[self.family]

    # -- derived -----------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.d_kv if self.d_kv is not None else self.d_model // self.heads

    @property
    def n_kv_heads(self) -> int:
        """Key/value heads (llama's grouped-query attention; every other family: heads)."""
        return self.kv_heads if self.kv_heads is not None else self.heads

    @property
    def group_size(self) -> int:
        """Query heads per key/value head."""
        return self.heads // self.n_kv_heads

    @property
    def kv_inner_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def inner_dim(self) -> int:
        """Width of the attention projections (heads * head size)."""
        return self.heads * self.head_dim

    @property
    def stacks(self) -> tuple[int, ...]:
        """Depth of each stack: (L,) for encoders, (E, D) for encoder-decoders."""
        return (self.layers,) if self.decoder_layers is None else (self.layers, self.decoder_layers)

    @property
    def total_layers(self) -> int:
        return sum(self.stacks)

    @property
    def embedding_size(self) -> int:
        return self.embedding if self.embedding is not None else self.d_model

    def layers_text(self) -> str:
        return "+".join(str(n) for n in self.stacks)

    def hf_config(self) -> dict:
        """Keyword arguments of the `transformers` config class that builds exactly this model."""
        return self.descriptor.hf_config(self)

    @classmethod
    def from_hf_config(cls, config: dict) -> "ModelSpec":
        """The spec of an existing checkpoint, from its `config.json` contents."""
        model_type = config.get("model_type")
        family = _DESCRIPTORS.get(model_type)
        if family is None:
            raise ValueError(f"unsupported architecture {model_type!r} (supported: {', '.join(_DESCRIPTORS)})")
        return cls(family=model_type, **family.spec_fields(config))

    @classmethod
    def of(cls, family: str, **values) -> "ModelSpec":
        """The spec a recipe line `family(**values)` declares (recipe argument names: layers=(E, D)
        for two stacks, llama's tie=)."""
        fields = dict(_DESCRIPTORS[family].recipe_fields(values))
        if isinstance(fields.get("layers"), tuple):
            fields["layers"], fields["decoder_layers"] = fields["layers"]
        return cls(family=family, **fields)

    @property
    def hf_config_class(self) -> str:
        return self.descriptor.config_class

    @property
    def hf_model_class(self) -> str:
        """The pretraining class a recipe's model is built as."""
        return self.descriptor.model_class

    # -- parameter counts (what `model.num_parameters()` reports for hf_model_class) ---------
    def param_groups(self) -> dict[str, int]:
        """Parameter count per tensor group (surgery.shapes.tensor_groups), summed over layers."""
        from surgery.shapes import tensor_groups

        return {g.name: g.params for g in tensor_groups(self)}

    @property
    def params(self) -> int:
        return sum(self.param_groups().values())

    @property
    def active_params(self) -> int:
        """Parameters one token computes with: all of them, but for a mixture of experts only
        its top_k experts per layer (the family's `active_params`)."""
        hook = self.descriptor.active_params
        return hook(self) if hook is not None else self.params

    def describe(self) -> str:
        extra = f", d_kv={self.d_kv}" if self.d_kv is not None else ""
        if self.kv_heads is not None:
            extra = f", kv_heads={self.kv_heads}" + extra
        extra += self.descriptor.describe(self)
        return (
            f"{self.family}(layers={self.layers_text()}, d_model={self.d_model}, "
            f"heads={self.heads}, d_ff={self.d_ff}{extra}, vocab={self.vocab})"
        )
