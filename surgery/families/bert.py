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

from surgery.families.base import Family, Layout, Template
from surgery.spec import ModelSpec
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


def global_templates(spec: ModelSpec, layout: Layout) -> list[Template]:
    p = layout.prefix
    tied = ("cls.predictions.decoder.weight",) if layout.has_mlm_head else ()
    ts = [
        Template("embed.tok", f"{p}embeddings.word_embeddings.weight", axes((V, KEEP), (M, OUT)), tied),
        Template("embed.pos", f"{p}embeddings.position_embeddings.weight", axes((Kind.POS, KEEP), (M, OUT))),
        Template("embed.type", f"{p}embeddings.token_type_embeddings.weight", axes((Kind.TYPE, KEEP), (M, OUT))),
        *_norm("embed.norm", f"{p}embeddings.LayerNorm"),
    ]
    if layout.has_pooler:
        ts += _linear("pooler", f"{p}pooler.dense", M, M)
    if layout.has_mlm_head:
        ts += _linear("head.transform", "cls.predictions.transform.dense", M, M)
        ts += _norm("head.norm", "cls.predictions.transform.LayerNorm", HN, HNB)
        ts.append(Template("head.bias", "cls.predictions.bias", axes((V, KEEP)),
                           ("cls.predictions.decoder.bias",)))
    return ts


def block_templates(spec: ModelSpec, layout: Layout, stack: str) -> list[Template]:
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


BERT = Family(
    name="bert",
    norm="ln",
    norm_position="post",
    eps_key="layer_norm_eps",
    stacks=("enc",),
    dim_keys=("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers"),
    global_templates=global_templates,
    stack_templates=lambda spec, layout, stack: [],
    block_templates=block_templates,
    head_input_scale=lambda spec: 1.0,
    extra_dims=lambda config: {Kind.POS: config.get("max_position_embeddings", 512),
                               Kind.TYPE: config.get("type_vocab_size", 2)},
    passthrough=(r"^(bert\.)?embeddings\.position_ids$",),
    odd_split_acts=frozenset({"gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "swish",
                              "quick_gelu", "gelu_python"}),
    act_key="hidden_act",
)
