"""BERT (BertModel with pooler, BertForMaskedLM): post-LayerNorm, biases everywhere, absolute
position and token-type embeddings, an MLM head whose decoder is tied to the word embeddings.

Quirks the view records:
- the MLM head transform (dense -> act -> LayerNorm) writes a d_model-wide state that the tied
  decoder reads with the *embedding's* column layout, so its LayerNorm is HEAD_NORM: width growth
  divides its gain and shift by the copy count (else logits come out k times too large);
- the decoder bias is tied to `cls.predictions.bias`;
- post-LN: the LayerNorm after each residual sum means zeroed output projections are not an
  identity block (see surgery/ops/depth.py for the exact construction).
"""

from __future__ import annotations

from dataclasses import dataclass

from surgery.families.base import (
    MAX_POSITIONS,
    Family,
    Layout,
    Template,
    TokenizerInfo,
    common_args,
)
from surgery.view import Kind, Role, axes

M, INNER, FF, V = Kind.MODEL, Kind.INNER, Kind.FF, Kind.VOCAB
OUT, IN, KEEP = Role.OUT, Role.IN, Role.KEEP
NORM, NB, HN, HNB = Role.NORM, Role.NORM_BIAS, Role.HEAD_NORM, Role.HEAD_NORM_BIAS


def _norm(local: str, hf: str, gain=NORM, shift=NB) -> list[Template]:
    return [Template(f"{local}.w", f"{hf}.weight", axes((M, gain))),
            Template(f"{local}.b", f"{hf}.bias", axes((M, shift)))]


def _linear(local: str, hf: str, out: Kind, inp: Kind) -> list[Template]:
    return [Template(f"{local}.w", f"{hf}.weight", axes((out, OUT), (inp, IN))),
            Template(f"{local}.b", f"{hf}.bias", axes((out, OUT)))]


@dataclass(frozen=True)
class EncoderNames:
    """Where a BERT-layout encoder keeps what differs between its families: the body's prefix
    under the pretraining head, the bare class, and the MLM head's tensor names."""

    prefix: str  # "bert."
    bare_class: str  # "BertModel"
    head_transform: str  # dense of the head transform
    head_norm: str  # its LayerNorm
    head_bias: str  # the output bias
    decoder: str  # the tied decoder (weight and bias aliases)

    def global_templates(self, spec, layout: Layout) -> list[Template]:
        p = layout.prefix
        tied = (f"{self.decoder}.weight",) if layout.has_mlm_head else ()
        ts = [
            Template("embed.tok", f"{p}embeddings.word_embeddings.weight", axes((V, KEEP), (M, OUT)), tied),
            Template("embed.pos", f"{p}embeddings.position_embeddings.weight", axes((Kind.POS, KEEP), (M, OUT))),
            Template("embed.type", f"{p}embeddings.token_type_embeddings.weight", axes((Kind.TYPE, KEEP), (M, OUT))),
            *_norm("embed.norm", f"{p}embeddings.LayerNorm"),
        ]
        if layout.has_pooler:
            ts += _linear("pooler", f"{p}pooler.dense", M, M)
        if layout.has_mlm_head:
            ts += _linear("head.transform", self.head_transform, M, M)
            ts += _norm("head.norm", self.head_norm, HN, HNB)
            ts.append(Template("head.bias", self.head_bias, axes((V, KEEP)), (f"{self.decoder}.bias",)))
        return ts

    def layout_of(self, cls: str, names: set[str]) -> Layout:
        """A real checkpoint's tensors decide; without them (a class to build) the class does."""
        if names:
            prefix = self.prefix if any(n.startswith(self.prefix) for n in names) else ""
            return Layout(cls, prefix=prefix, has_pooler=f"{prefix}pooler.dense.weight" in names,
                          has_mlm_head=f"{self.head_transform}.weight" in names)
        bare = cls == self.bare_class
        return Layout(cls, prefix="" if bare else self.prefix, has_pooler=bare or cls.endswith("ForPreTraining"),
                      has_mlm_head=not bare)


NAMES = EncoderNames("bert.", "BertModel", "cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
                     "cls.predictions.bias", "cls.predictions.decoder")


def block_templates(spec, layout: Layout, stack: str) -> list[Template]:
    b = f"{layout.prefix}encoder.layer.{{i}}"
    return [
        *_linear("attn.q", f"{b}.attention.self.query", INNER, M),
        *_linear("attn.k", f"{b}.attention.self.key", INNER, M),
        *_linear("attn.v", f"{b}.attention.self.value", INNER, M),
        *_linear("attn.o", f"{b}.attention.output.dense", M, INNER),
        *_norm("attn.norm", f"{b}.attention.output.LayerNorm"),
        *_linear("ff.wi", f"{b}.intermediate.dense", FF, M),
        *_linear("ff.wo", f"{b}.output.dense", M, FF),
        *_norm("ff.norm", f"{b}.output.LayerNorm"),
    ]


def hf_config(spec) -> dict:
    return {
        "vocab_size": spec.vocab,
        "hidden_size": spec.d_model,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "intermediate_size": spec.d_ff,
        "max_position_embeddings": spec.max_positions,
        "type_vocab_size": 2,
    }


def spec_fields(config: dict) -> dict:
    return dict(
        layers=config["num_hidden_layers"],
        d_model=config["hidden_size"],
        heads=config["num_attention_heads"],
        d_ff=config["intermediate_size"],
        vocab=config["vocab_size"],
        max_positions=config.get("max_position_embeddings", 512),
    )


# Sequence-pair wrapping and the specials every BERT tokenizer has.
TOKENIZER = TokenizerInfo(
    specials={"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
              "mask_token": "[MASK]"},
    single="[CLS] $A [SEP]",
    pair="[CLS] $A [SEP] $B:1 [SEP]:1",
    token_type_ids=True,
)
ODD_SPLIT_ACTS = frozenset({"gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "swish",
                            "quick_gelu", "gelu_python"})

BERT = Family(
    name="bert",
    kind="encoder",
    summary="BERT (BertForMaskedLM): post-LayerNorm encoder, absolute positions, MLM head tied to the embedding",
    args=common_args(max_positions=MAX_POSITIONS),
    config_class="BertConfig",
    model_class="BertForMaskedLM",
    classes={"BertForMaskedLM": "mlm", "BertForPreTraining": "pretraining", "BertModel": ""},
    hf_config=hf_config,
    spec_fields=spec_fields,
    default_objective="mlm",
    tokenizer=TOKENIZER,
    no_dropout={"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    tiny=dict(layers=2, d_model=16, heads=4, d_ff=64),
    json_fields=lambda spec: {"max_positions": spec.max_positions},
    growth_keeps=("max_positions",),
    norm="ln",
    norm_position="post",
    eps_key="layer_norm_eps",
    stacks=("enc",),
    dim_keys=("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers"),
    global_templates=NAMES.global_templates,
    block_templates=block_templates,
    extra_dims=lambda config: {Kind.POS: config.get("max_position_embeddings", 512),
                               Kind.TYPE: config.get("type_vocab_size", 2)},
    layout_of=NAMES.layout_of,
    head_note=lambda spec: "decoder tied",
    passthrough=(r"^(bert\.)?embeddings\.position_ids$",),
    odd_split_acts=ODD_SPLIT_ACTS,
    act_key="hidden_act",
)
