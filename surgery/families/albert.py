"""ALBERT (AlbertForMaskedLM): BERT with factorized embeddings (V x E, then E -> d_model) and
cross-layer sharing.

Quirks:
- the family has no neutral view: growth ops refuse it (grow the bert, then factorize/share);
  its tensor groups are written here, shared blocks counted once;
- `share=all` is transformers' own layout (one layer group); `share=attention|ffn` is the unshared
  layout with the shared modules tied in memory (surgery/sharing.py), recorded in config.json as
  `surgery_share`;
- BERT's activation, dropouts and LayerNorm eps (ALBERT's own defaults are gelu_new and 0), so a
  factorized/shared BERT computes what the BERT did; its tokenizer is BERT's.
"""

from __future__ import annotations

from surgery.args import ArgInfo
from surgery.families.base import MAX_POSITIONS, Family, common_args
from surgery.families.bert import TOKENIZER as BERT_TOKENIZER

SHARE_CHOICES = ("none", "all", "attention", "ffn")


def hf_config(spec) -> dict:
    cfg = {
        "vocab_size": spec.vocab,
        "hidden_size": spec.d_model,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "intermediate_size": spec.d_ff,
        "max_position_embeddings": spec.max_positions,
        "type_vocab_size": 2,
        "embedding_size": spec.embedding_size,
        "num_hidden_groups": 1 if spec.share == "all" else spec.layers,
        "inner_group_num": 1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
    }
    if spec.share in ("attention", "ffn"):  # tied in memory by surgery.sharing.tie_shared
        cfg["surgery_share"] = spec.share
    return cfg


def spec_fields(config: dict) -> dict:
    layers, groups = config["num_hidden_layers"], config.get("num_hidden_groups", 1)
    if config.get("inner_group_num", 1) != 1 or groups not in (1, layers):
        raise ValueError("only ALBERT layouts with one layer per group, all shared or none, are supported")
    e = config.get("embedding_size", 128)
    return dict(
        layers=layers,
        d_model=config["hidden_size"],
        heads=config["num_attention_heads"],
        d_ff=config["intermediate_size"],
        vocab=config["vocab_size"],
        max_positions=config.get("max_position_embeddings", 512),
        embedding=None if e == config["hidden_size"] else e,
        share="all" if groups == 1 and layers > 1
        else config["surgery_share"] if config.get("surgery_share") in ("attention", "ffn") else "none",
    )


def validate(spec) -> None:
    if spec.embedding is not None and not 0 < spec.embedding <= spec.d_model:
        raise ValueError(f"embedding must be between 1 and d_model={spec.d_model}, got {spec.embedding}")


def shared_units(spec) -> tuple[int, int]:
    """(attention blocks, feed-forward blocks) with their own weights: the layer count, or 1 where
    the block is shared by every layer."""
    n = spec.layers
    return (1 if spec.share in ("all", "attention") else n, 1 if spec.share in ("all", "ffn") else n)


def tensor_groups(spec, Tensor, TensorGroup) -> list:
    """Every parameter tensor of AlbertForMaskedLM, grouped; shared blocks once."""
    d, ff, v, n = spec.d_model, spec.d_ff, spec.vocab, spec.layers
    e, (ua, uf) = spec.embedding_size, shared_units(spec)
    g = "albert_layer_groups.{g}.albert_layers.0"
    many = n > 1
    shared = f" (shared by all {n} layers)" if many else ""
    attn_note = shared if ua == 1 else ""
    ffn_note = shared if uf == 1 else ""
    if ua == uf:  # none or all: every LayerNorm alike
        norms = (Tensor("*.LayerNorm.{weight,bias}", (d,), 2 * 2 * ua),)
        norm_note = attn_note
    else:  # one of the two per-layer LayerNorms is shared
        norms = (Tensor(f"{g}.attention.LayerNorm.{{weight,bias}}", (d,), 2 * ua),
                 Tensor(f"{g}.full_layer_layer_norm.{{weight,bias}}", (d,), 2 * uf))
        which = "attention" if ua == 1 else "feed-forward"
        norm_note = f" (shared by all {n} layers: the {which} LayerNorm)" if many else ""
    return [
        TensorGroup("embedding", (Tensor("embeddings.word_embeddings", (v, e), 1),
                                  Tensor("embeddings.position_embeddings", (spec.max_positions, e), 1),
                                  Tensor("embeddings.token_type_embeddings", (2, e), 1),
                                  Tensor("embeddings.LayerNorm.{weight,bias}", (e,), 2))),
        TensorGroup("embedding projection", (Tensor("encoder.embedding_hidden_mapping_in.weight", (d, e), 1),
                                             Tensor("....bias", (d,), 1))),
        TensorGroup("attention q/k/v", (Tensor(f"{g}.attention.{{query,key,value}}.weight", (d, d), 3 * ua),
                                        Tensor("....bias", (d,), 3 * ua)), note=attn_note),
        TensorGroup("attention o", (Tensor(f"{g}.attention.dense.weight", (d, d), ua), Tensor("....bias", (d,), ua)),
                    note=attn_note),
        TensorGroup("feed-forward in", (Tensor(f"{g}.ffn.weight", (ff, d), uf), Tensor("....bias", (ff,), uf)),
                    note=ffn_note),
        TensorGroup("feed-forward out", (Tensor(f"{g}.ffn_output.weight", (d, ff), uf), Tensor("....bias", (d,), uf)),
                    note=ffn_note),
        TensorGroup("norms", norms, note=norm_note),
        TensorGroup("lm head", (Tensor("predictions.dense.weight", (e, d), 1), Tensor("predictions.dense.bias", (e,), 1),
                                Tensor("predictions.LayerNorm.{weight,bias}", (e,), 2), Tensor("predictions.bias", (v,), 1)),
                    note="decoder tied"),
    ]


ALBERT = Family(
    name="albert",
    kind="encoder",
    summary="ALBERT (AlbertForMaskedLM): BERT with factorized embeddings and cross-layer sharing",
    args=common_args(
        max_positions=MAX_POSITIONS,
        embedding=ArgInfo("int", None, help="factorized embedding size E (default d_model: not factorized)",
                          low=0, open_low=True),
        share=ArgInfo("choice", "none", SHARE_CHOICES,
                      "cross-layer sharing: whole layers (all), the attention block or the feed-forward block"),
    ),
    config_class="AlbertConfig",
    model_class="AlbertForMaskedLM",
    classes={"AlbertForMaskedLM": "mlm", "AlbertForPreTraining": "pretraining", "AlbertModel": ""},
    hf_config=hf_config,
    spec_fields=spec_fields,
    default_objective="mlm",
    tokenizer=BERT_TOKENIZER,
    no_dropout={"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    tiny=dict(layers=2, d_model=16, heads=4, d_ff=64, embedding=8),
    validate=validate,
    describe=lambda spec: f", embedding={spec.embedding_size}, share={spec.share}",
    json_fields=lambda spec: {"max_positions": spec.max_positions},
    no_growth="growing albert models is not supported yet (grow the bert, then factorize/share)",
    after_build="surgery.sharing:tie_built",
    tensor_groups=tensor_groups,
)
