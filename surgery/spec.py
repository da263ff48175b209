"""Model specifications: a family plus its dimensions, with no torch import.

A `ModelSpec` is what a recipe's `model X = t5(...)` line declares. It knows how to become the
keyword arguments of the `transformers` config class that builds exactly that model, and how many
parameters that model has, so that planning never needs to build a model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

Family = Literal["t5", "bert", "albert", "gpt2", "llama"]
FAMILIES: tuple[str, ...] = ("t5", "bert", "albert", "gpt2", "llama")
DECODER_ONLY: tuple[str, ...] = ("gpt2", "llama")

# T5's relative-position table size, as in every released T5 checkpoint.
T5_BUCKETS = 32


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

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        for name in ("layers", "d_model", "heads", "d_ff", "vocab"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.family == "t5":
            if self.decoder_layers is None:
                raise ValueError("t5 needs layers=ENCODER+DECODER, e.g. layers=6+6")
            if self.decoder_layers <= 0:
                raise ValueError("decoder layers must be positive")
        else:
            if self.decoder_layers is not None:
                raise ValueError(f"{self.family} has one stack: write layers=N, not E+D")
            if self.family != "llama" and self.d_kv is not None and self.d_kv * self.heads != self.d_model:
                raise ValueError(f"{self.family} has no separate head size: d_kv must equal d_model / heads")
            if self.ff != "relu":
                raise ValueError("ff= is a t5 option")
            if self.head != "tied" and not (self.family == "llama" and self.head == "untied"):
                raise ValueError("head= is a t5 option (llama: tie=true|false)")
        if self.kv_heads is not None:
            if self.family != "llama":
                raise ValueError("kv_heads= is a llama option")
            if self.kv_heads <= 0 or self.heads % self.kv_heads:
                raise ValueError(f"kv_heads={self.kv_heads} must divide heads={self.heads} (grouped-query attention)")
        if self.family != "albert" and (self.embedding is not None or self.share != "none"):
            raise ValueError("embedding= and share= are albert options")
        if self.embedding is not None and not 0 < self.embedding <= self.d_model:
            raise ValueError(f"embedding must be between 1 and d_model={self.d_model}, got {self.embedding}")
        if self.d_kv is None and self.d_model % self.heads != 0:
            raise ValueError(
                f"heads={self.heads} does not divide d_model={self.d_model}"
                + (" (give d_kv= to set the head size explicitly)" if self.family == "t5" else "")
            )
        return self

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
    def shared_units(self) -> tuple[int, int]:
        """(attention blocks, feed-forward blocks) with their own weights: the layer count, or 1
        where the block is shared by every layer (albert's share=)."""
        n = self.layers
        return (1 if self.share in ("all", "attention") else n, 1 if self.share in ("all", "ffn") else n)

    @property
    def embedding_size(self) -> int:
        return self.embedding if self.embedding is not None else self.d_model

    def layers_text(self) -> str:
        return "+".join(str(n) for n in self.stacks)

    def hf_config(self) -> dict:
        """Keyword arguments of the `transformers` config class that builds exactly this model."""
        if self.family == "t5":
            return {
                "vocab_size": self.vocab,
                "d_model": self.d_model,
                "d_kv": self.head_dim,
                "d_ff": self.d_ff,
                "num_layers": self.layers,
                "num_decoder_layers": self.decoder_layers,
                "num_heads": self.heads,
                "relative_attention_num_buckets": T5_BUCKETS,
                "feed_forward_proj": self.ff,
                "tie_word_embeddings": self.head != "tied-unscaled" and self.head != "untied",
                "decoder_start_token_id": 0,
                "pad_token_id": 0,
                "eos_token_id": 1,
            }
        if self.family == "gpt2":
            return {
                "vocab_size": self.vocab,
                "n_embd": self.d_model,
                "n_layer": self.layers,
                "n_head": self.heads,
                "n_inner": self.d_ff,
                "n_positions": self.max_positions,
                "tie_word_embeddings": True,
                "bos_token_id": None,
                "eos_token_id": None,
            }
        if self.family == "llama":
            return {
                "vocab_size": self.vocab,
                "hidden_size": self.d_model,
                "num_hidden_layers": self.layers,
                "num_attention_heads": self.heads,
                "num_key_value_heads": self.n_kv_heads,
                "head_dim": self.head_dim,
                "intermediate_size": self.d_ff,
                "max_position_embeddings": self.max_positions,
                "tie_word_embeddings": self.head == "tied",
                "bos_token_id": None,
                "eos_token_id": None,
                "pad_token_id": None,
            }
        cfg = {
            "vocab_size": self.vocab,
            "hidden_size": self.d_model,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "intermediate_size": self.d_ff,
            "max_position_embeddings": self.max_positions,
            "type_vocab_size": 2,
        }
        if self.family == "albert":
            # BERT's activation and dropouts (ALBERT's own defaults are gelu_new and 0), so that a
            # factorized/shared BERT computes what the BERT did.
            cfg.update(embedding_size=self.embedding_size, num_hidden_groups=1 if self.share == "all" else self.layers,
                       inner_group_num=1, hidden_act="gelu", hidden_dropout_prob=0.1,
                       attention_probs_dropout_prob=0.1, layer_norm_eps=1e-12, pad_token_id=0)
            if self.share in ("attention", "ffn"):  # tied in memory by surgery.sharing.tie_shared
                cfg["surgery_share"] = self.share
        return cfg

    @classmethod
    def from_hf_config(cls, config: dict) -> "ModelSpec":
        """The spec of an existing checkpoint, from its `config.json` contents."""
        model_type = config.get("model_type")
        if model_type == "t5":
            # transformers 5 always ties T5's head and records the d_model**-0.5 output scaling as
            # `scale_decoder_outputs`; older configs say the same with `tie_word_embeddings`.
            # Whether a head is untied shows only in the weights (a separate lm_head.weight).
            scaled = config.get("scale_decoder_outputs", config.get("tie_word_embeddings", True) is not False)
            return cls(
                family="t5",
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
        if model_type == "bert":
            return cls(
                family="bert",
                layers=config["num_hidden_layers"],
                d_model=config["hidden_size"],
                heads=config["num_attention_heads"],
                d_ff=config["intermediate_size"],
                vocab=config["vocab_size"],
                max_positions=config.get("max_position_embeddings", 512),
            )
        if model_type == "gpt2":
            d = config["n_embd"]
            return cls(
                family="gpt2",
                layers=config["n_layer"],
                d_model=d,
                heads=config["n_head"],
                d_ff=config.get("n_inner") or 4 * d,
                vocab=config["vocab_size"],
                max_positions=config.get("n_positions", 1024),
            )
        if model_type == "llama":
            d, heads = config["hidden_size"], config["num_attention_heads"]
            head_dim = config.get("head_dim") or d // heads
            kv = config.get("num_key_value_heads") or heads
            return cls(
                family="llama",
                layers=config["num_hidden_layers"],
                d_model=d,
                heads=heads,
                kv_heads=None if kv == heads else kv,
                d_ff=config["intermediate_size"],
                d_kv=None if head_dim * heads == d else head_dim,
                vocab=config["vocab_size"],
                max_positions=config.get("max_position_embeddings", 2048),
                # Whether the head is untied is also visible in the weights (a separate lm_head.weight).
                head="tied" if config.get("tie_word_embeddings", False) else "untied",
            )
        if model_type == "albert":
            layers, groups = config["num_hidden_layers"], config.get("num_hidden_groups", 1)
            if config.get("inner_group_num", 1) != 1 or groups not in (1, layers):
                raise ValueError("only ALBERT layouts with one layer per group, all shared or none, are supported")
            return cls(
                family="albert",
                layers=layers,
                d_model=config["hidden_size"],
                heads=config["num_attention_heads"],
                d_ff=config["intermediate_size"],
                vocab=config["vocab_size"],
                max_positions=config.get("max_position_embeddings", 512),
                embedding=None if config.get("embedding_size", 128) == config["hidden_size"] else config.get("embedding_size", 128),
                share="all" if groups == 1 and layers > 1
                else config["surgery_share"] if config.get("surgery_share") in ("attention", "ffn") else "none",
            )
        raise ValueError(f"unsupported architecture {model_type!r} (supported: {', '.join(FAMILIES)})")

    @property
    def hf_config_class(self) -> str:
        return {"t5": "T5Config", "bert": "BertConfig", "albert": "AlbertConfig", "gpt2": "GPT2Config",
                "llama": "LlamaConfig"}[self.family]

    @property
    def hf_model_class(self) -> str:
        """The pretraining class a recipe's model is built as."""
        return {"t5": "T5ForConditionalGeneration", "bert": "BertForMaskedLM", "albert": "AlbertForMaskedLM",
                "gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}[self.family]

    # -- parameter counts (what `model.num_parameters()` reports for hf_model_class) ---------
    def param_groups(self) -> dict[str, int]:
        """Parameter count per tensor group, summed over layers."""
        d, inner, ff, v = self.d_model, self.inner_dim, self.d_ff, self.vocab
        if self.family == "t5":
            n_ff = 3 if self.ff == "gated-gelu" else 2
            e, dl = self.stacks
            groups = {
                "embedding": v * d,
                "self_attention": (e + dl) * 4 * d * inner,
                "cross_attention": dl * 4 * d * inner,
                "feed_forward": (e + dl) * n_ff * d * ff,
                "norms": (2 * e + 3 * dl + 2) * d,
                "relative_bias": 2 * T5_BUCKETS * self.heads,
                "lm_head": v * d if self.head == "untied" else 0,
            }
            return groups
        n = self.layers
        if self.family == "gpt2":
            return {
                "embedding": (v + self.max_positions) * d,
                "self_attention": n * (d * 3 * inner + 3 * inner + inner * d + d),
                "feed_forward": n * (2 * d * ff + ff + d),
                "norms": (2 * n + 1) * 2 * d,
                "lm_head": 0,  # tied to the token embedding
            }
        if self.family == "llama":
            kv = self.kv_inner_dim
            return {
                "embedding": v * d,
                "self_attention": n * (2 * d * inner + 2 * d * kv),
                "feed_forward": n * 3 * d * ff,
                "norms": (2 * n + 1) * d,
                "lm_head": v * d if self.head == "untied" else 0,
            }
        if self.family == "albert":
            # shared blocks count once (share=attention: q/k/v/o and the attention LayerNorm;
            # share=ffn: ffn, ffn_output and full_layer_layer_norm)
            e, (ua, uf) = self.embedding_size, self.shared_units
            return {
                "embedding": (v + self.max_positions + 2) * e + 2 * e,
                "embedding_projection": e * d + d,
                "self_attention": ua * 4 * (d * d + d),
                "feed_forward": uf * (2 * d * ff + ff + d),
                "norms": (ua + uf) * 2 * d,
                "lm_head": d * e + e + 2 * e + v,
            }
        return {
            "embedding": (v + self.max_positions + 2) * d + 2 * d,
            "self_attention": n * 4 * (d * d + d),
            "feed_forward": n * (2 * d * ff + ff + d),
            "norms": n * 2 * 2 * d,
            # MLM head: transform dense + its LayerNorm + output bias (decoder weight is tied)
            "lm_head": d * d + d + 2 * d + v,
        }

    @property
    def params(self) -> int:
        return sum(self.param_groups().values())

    def describe(self) -> str:
        extra = f", d_kv={self.d_kv}" if self.d_kv is not None else ""
        if self.kv_heads is not None:
            extra = f", kv_heads={self.kv_heads}" + extra
        if self.family == "llama":
            extra += f", tie={'true' if self.head == 'tied' else 'false'}"
        if self.family == "albert":
            extra += f", embedding={self.embedding_size}, share={self.share}"
        return (
            f"{self.family}(layers={self.layers_text()}, d_model={self.d_model}, "
            f"heads={self.heads}, d_ff={self.d_ff}{extra}, vocab={self.vocab})"
        )
