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

# Ops the language has room for but the project does not implement yet.
PLANNED_OPS = {
    "factorize": "ALBERT factorized embeddings",
    "share": "ALBERT cross-layer sharing",
    "distil": "distillation into a smaller student",
}


@dataclass(frozen=True)
class ObjectiveInfo:
    families: tuple[str, ...]
    help: str
    params: dict[str, ArgInfo]


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
        ("bert",),
        "masked language modelling with dynamic masking (80/10/10)",
        {"rate": ArgInfo("float", 0.15, help="fraction of tokens masked")},
    ),
}

DEFAULT_OBJECTIVE = {"t5": "span_corruption", "bert": "mlm"}

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
    "klue-nli": TaskInfo(("t5", "bert"), "KLUE natural language inference (accuracy)"),
    "korquad-ext": TaskInfo(("t5", "bert"), "KorQuAD 1.0 extractive QA on the encoder (EM/F1)"),
    "korquad-gen": TaskInfo(("t5",), "KorQuAD 1.0 generative QA, encoder-decoder (EM/F1)"),
    "news-summ": TaskInfo(("t5",), "Korean news summarization, encoder-decoder (ROUGE-L F1)"),
}
TASK_ARGS = _FT_ARGS

FAMILY_ARGS: dict[str, tuple[str, ...]] = {
    "t5": ("layers", "d_model", "heads", "d_ff", "d_kv", "vocab", "ff", "head"),
    "bert": ("layers", "d_model", "heads", "d_ff", "vocab", "max_positions"),
}
REQUIRED_MODEL_ARGS = ("layers", "d_model", "heads", "d_ff")
PLANNED_FAMILIES = ("gpt2", "llama")

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
    "feed_forward_proj": "ff",
    "max_position_embeddings": "max_positions",
}
