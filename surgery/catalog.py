"""The names a recipe may use: growth ops, objectives, fine-tuning tasks and their arguments.

These tables are data so that a later op, objective or task is one entry here (plus its
implementation elsewhere); the planner validates recipes against them and `surgery plan --help`
and docs/recipes.md describe them. No torch here: the plan path imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ArgInfo:
    """An op/objective/task argument: its type ("choice", "int", "float") and default."""

    kind: str
    default: object = None
    choices: tuple[str, ...] = ()
    help: str = ""


@dataclass(frozen=True)
class OpInfo:
    depth: bool  # changes the number of layers
    width: str | None  # None, or how new width units are initialized: fpi | aki | lossless
    help: str
    args: dict[str, ArgInfo] = field(default_factory=dict)


_SEED = ArgInfo("int", None, help="seed of random choices (default: the training seed)")
_DEPTH_ARGS = {
    "select": ArgInfo(
        "choice",
        "stack",
        ("stack", "top", "interleave"),
        "which trained layers the new ones copy: stack = the whole stack again on top, cycling "
        "(progressive stacking), top = the top layers once more, interleave = each layer repeated "
        "in place",
    ),
    "init": ArgInfo(
        "choice",
        "copy",
        ("copy", "identity"),
        "copy = new layers copy trained ones; identity = new layers are copies whose output "
        "projections are zero, so the grown model computes exactly the same function",
    ),
}
OPS: dict[str, OpInfo] = {
    "d": OpInfo(True, None, "depth: stack copies of trained layers (d(identity): exactly function-preserving)", dict(_DEPTH_ARGS, seed=_SEED)),
    "f": OpInfo(False, "fpi", "width by Net2Net function-preserving initialization (FPI)", {"seed": _SEED}),
    "a": OpInfo(False, "aki", "width by bert2BERT advanced knowledge initialization (AKI)", {"seed": _SEED}),
    "l": OpInfo(False, "lossless", "width, exactly lossless at any ratio (LEMON-style)", {"seed": _SEED}),
    "df": OpInfo(True, "fpi", "depth then width by FPI", {**_DEPTH_ARGS, "seed": _SEED}),
    "da": OpInfo(True, "aki", "depth then width by AKI", {**_DEPTH_ARGS, "seed": _SEED}),
    "dl": OpInfo(
        True,
        "lossless",
        "depth and width, both exactly lossless (depth defaults to init=identity)",
        {**_DEPTH_ARGS, "init": ArgInfo("choice", "identity", ("copy", "identity"), _DEPTH_ARGS["init"].help), "seed": _SEED},
    ),
}

# Compression ops: the chain's right model is smaller (or the same size, differently built).
COMPRESS_OPS: dict[str, OpInfo] = {
    "factorize": OpInfo(False, None, "ALBERT factorized embeddings: bert -> albert(embedding=E), best rank-E approximation of the trained embedding (SVD)",
                        {"rank": ArgInfo("int", None, help="E; must match the target's embedding= (optional)")}),
    "share": OpInfo(False, None, "ALBERT cross-layer sharing: every layer uses one set of weights (all), one attention block (attention) or one feed-forward block (ffn)",
                    {"what": ArgInfo("choice", "all", ("all", "attention", "ffn"),
                                     "what is shared: whole layers, the attention block (q/k/v/o + its LayerNorm) or the feed-forward block (ffn, ffn_output + its LayerNorm); left out: the target's share="),
                     "init": ArgInfo("choice", "mean", ("mean", "first", "middle"),
                                     "the shared weights start as the mean of the trained layers, layer 0, or the middle layer")}),
    "distil": OpInfo(False, None, "distillation into a smaller student (DistilBERT, TinyBERT or Tutor-KD); the model before the op is the frozen teacher",
                     {"style": ArgInfo("choice", "distilbert", ("distilbert", "tinybert", "tutor"),
                                       "distilbert: soft CE at T + hard MLM + hidden cosine; tinybert: embedding/attention/hidden (+prediction) losses; tutor: Tutor-KD"),
                      "T": ArgInfo("float", None, help="softmax temperature of the soft targets (2 for distilbert, 1 for tinybert's prediction loss)"),
                      "soft": ArgInfo("float", 5.0, help="distilbert: weight of the soft-target loss (multiplied by T^2)"),
                      "hard": ArgInfo("float", 2.0, help="distilbert: weight of the student's own MLM loss"),
                      "cos": ArgInfo("float", 1.0, help="distilbert: weight of the hidden-state cosine loss"),
                      "emb": ArgInfo("float", None, help="tinybert/tutor: weight of the embedding-output MSE (1 tinybert, 0 tutor)"),
                      "att": ArgInfo("float", 1.0, help="tinybert/tutor: weight of the attention-score MSE"),
                      "hid": ArgInfo("float", 1.0, help="tinybert/tutor: weight of the hidden-state MSE (through a learned projection)"),
                      "pred": ArgInfo("float", 0.0, help="tinybert: weight of the soft CE of the MLM logits (0 = general distillation)"),
                      "logit": ArgInfo("float", 1.0, help="tutor: weight of the modified-logit loss"),
                      "tutor": ArgInfo("float", 0.25, help="tutor: the tutor generator's width as a fraction of the teacher's"),
                      "select": ArgInfo("choice", "every-other", ("every-other", "first", "last"),
                                        "a student of the teacher's width starts from these teacher layers: every other (DistilBERT), the first or the last L")}),
}

# Ops the language has room for but the project does not implement yet.
PLANNED_OPS: dict[str, str] = {}

@dataclass(frozen=True)
class ObjectiveInfo:
    families: tuple[str, ...]
    help: str
    params: dict[str, ArgInfo]


_MASK_ARGS = {
    "rate": ArgInfo("float", 0.15, help="fraction of tokens masked"),
    "masking": ArgInfo("choice", "dynamic", ("dynamic", "static"),
                       "dynamic: new masks each time a block is seen (RoBERTa); static: fixed per block"),
    "masks": ArgInfo("int", 1, help="static masking: distinct mask copies per block, used in turn by epoch (RoBERTa: 10)"),
}

OBJECTIVES: dict[str, ObjectiveInfo] = {
    "span_corruption": ObjectiveInfo(
        ("t5",),
        "T5 span corruption: mask spans, the decoder writes them out",
        {
            "rate": ArgInfo("float", 0.15, help="fraction of tokens masked"),
            "mean_span": ArgInfo("float", 3.0, help="mean span length in tokens"),
        },
    ),
    "mlm": ObjectiveInfo(
        ("bert", "albert"),
        "BERT/RoBERTa masked language modelling (80/10/10), dynamic or static masks",
        {**_MASK_ARGS},
    ),
    "span": ObjectiveInfo(
        ("bert", "albert"),
        "SpanBERT span masking: whole-word spans, geometric lengths, 80/10/10 per span; sbo=true adds the span-boundary objective",
        {
            **_MASK_ARGS,
            "p": ArgInfo("float", 0.2, help="geometric parameter of span lengths (mean 3.8 words at p=0.2, max 10)"),
            "max_span": ArgInfo("int", 10, help="longest span (words; tokens with whole_words=false)"),
            "whole_words": ArgInfo("bool", True, help="spans of whole SentencePiece words (pieces starting with ▁)"),
            "sbo": ArgInfo("bool", False, help="add the span-boundary objective (bert only)"),
        },
    ),
    "electra": ObjectiveInfo(
        ("bert",),
        "ELECTRA replaced-token detection: loss = generator MLM + lambda * RTD; the discriminator is kept",
        {
            **_MASK_ARGS,
            "generator": ArgInfo("float", 0.25, help="generator width as a fraction of the discriminator's (d_model, d_ff, heads)"),
            "generator_d_model": ArgInfo("int", 0, help="generator d_model (overrides generator=)"),
            "lambda": ArgInfo("float", 50.0, help="weight of the RTD loss"),
        },
    ),
    "sop": ObjectiveInfo(
        ("bert", "albert"),
        "ALBERT sentence-order prediction alongside MLM (needs packing=doc-sentences, the default for sop)",
        {**_MASK_ARGS},
    ),
}

OBJECTIVES["clm"] = ObjectiveInfo(
    ("gpt2", "llama"),
    "causal language modelling: predict every next token (labels = input ids, padding ignored)",
    {},
)

# Objectives that train modules besides the kept model (heads, a generator) or a different
# model class. Growth mid-run keeps those modules as they are, so it must keep d_model (depth
# growth); sop's pretraining class is not grown at all.
OBJECTIVES_WITHOUT_GROWTH = {"electra": "the ELECTRA generator and RTD head", "sop": "the sentence-order head",
                            "span(sbo=true)": "the span-boundary head"}

DEFAULT_OBJECTIVE = {"t5": "span_corruption", "bert": "mlm", "albert": "mlm", "gpt2": "clm", "llama": "clm"}

_FT_ARGS = {
    "epochs": ArgInfo("float", None, help="fine-tuning epochs"),
    "lr": ArgInfo("float", None, help="peak learning rate"),
    "batch_size": ArgInfo("int", None, help="examples per step"),
    "seq_len": ArgInfo("int", None, help="input length in tokens"),
    "target_len": ArgInfo("int", None, help="output length in tokens (generative tasks)"),
    "warmup": ArgInfo("float", None, help="warmup as a fraction of the steps"),
    "weight_decay": ArgInfo("float", None, help="AdamW weight decay"),
    "seed": ArgInfo("int", None, help="seed"),
    "max_examples": ArgInfo("int", None, help="use at most this many training examples"),
    "eval_examples": ArgInfo("int", None, help="evaluate on at most this many examples"),
}


@dataclass(frozen=True)
class TaskInfo:
    families: tuple[str, ...]  # model families that can do the task
    help: str


TASKS: dict[str, TaskInfo] = {
    "klue-nli": TaskInfo(("t5", "bert", "albert"), "KLUE natural language inference (accuracy)"),
    "korquad-ext": TaskInfo(("t5", "bert", "albert"), "KorQuAD 1.0 extractive QA on the encoder (EM/F1)"),
    "korquad-gen": TaskInfo(("t5",), "KorQuAD 1.0 generative QA, encoder-decoder (EM/F1)"),
    "news-summ": TaskInfo(("t5",), "Korean news summarization, encoder-decoder (ROUGE-L F1)"),
}
TASK_ARGS = _FT_ARGS

FAMILY_ARGS: dict[str, tuple[str, ...]] = {
    "t5": ("layers", "d_model", "heads", "d_ff", "d_kv", "vocab", "ff", "head"),
    "bert": ("layers", "d_model", "heads", "d_ff", "vocab", "max_positions"),
    "gpt2": ("layers", "d_model", "heads", "d_ff", "vocab", "max_positions"),
    "llama": ("layers", "d_model", "heads", "kv_heads", "d_ff", "d_kv", "vocab", "tie", "max_positions"),
    "albert": ("layers", "d_model", "heads", "d_ff", "vocab", "max_positions", "embedding", "share"),
}
REQUIRED_MODEL_ARGS = ("layers", "d_model", "heads", "d_ff")
PLANNED_FAMILIES: tuple[str, ...] = ()

# Names from transformers configs that people type out of habit.
MODEL_ARG_ALIASES = {
    "num_layers": "layers",
    "num_hidden_layers": "layers",
    "hidden_size": "d_model",
    "hidden": "d_model",
    "num_heads": "heads",
    "num_attention_heads": "heads",
    "intermediate_size": "d_ff",
    "ffn": "d_ff",
    "vocab_size": "vocab",
    "head_dim": "d_kv",
    "num_key_value_heads": "kv_heads",
    "n_kv_heads": "kv_heads",
    "tie_word_embeddings": "tie",
    "n_embd": "d_model",
    "n_layer": "layers",
    "n_head": "heads",
    "n_inner": "d_ff",
    "n_positions": "max_positions",
    "feed_forward_proj": "ff",
    "max_position_embeddings": "max_positions",
}


# Which distil arguments each style reads (the plan rejects the others).
DISTIL_STYLE_ARGS: dict[str, tuple[str, ...]] = {
    "distilbert": ("style", "T", "soft", "hard", "cos", "select"),
    "tinybert": ("style", "T", "emb", "att", "hid", "pred", "select"),
    "tutor": ("style", "emb", "att", "hid", "logit", "tutor", "select"),
}
DISTIL_STYLE_DEFAULTS: dict[str, dict[str, float]] = {"distilbert": {"T": 2.0}, "tinybert": {"T": 1.0, "emb": 1.0}, "tutor": {"emb": 0.0}}
