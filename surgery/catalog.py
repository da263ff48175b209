"""The names a recipe may use: growth ops, objectives, fine-tuning tasks and their arguments.

These tables are data so that a later op, objective or task is one entry here (plus its
implementation elsewhere); the planner validates recipes against them and `surgery plan --help`
and docs/recipes.md describe them. No torch here: the plan path imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from surgery.args import FRACTION, ArgInfo
from surgery.families import FAMILIES


@dataclass(frozen=True)
class OpInfo:
    depth: bool  # changes the number of layers
    width: str | None  # None, or how new width units are initialized: fpi | aki | lossless
    help: str
    args: dict[str, ArgInfo] = field(default_factory=dict)
    impl: str = "surgery.ops.growth:plan_growth"  # where it is implemented ("module:name")
    # compression ops: the families the model before and after the op may be (None: any)
    sources: tuple[str, ...] | None = None
    targets: tuple[str, ...] | None = None
    # True: the op grows whatever the two models differ in (depth, width or both): ligo, msg
    flexible: bool = False
    # (args, grows width, grows depth) -> what the op costs beyond its growth step, for `surgery
    # plan`, and the steps after the growth it needs inside the next stage (a ramp); None: nothing
    cost: Callable[[dict, bool, bool], str] | None = None
    ramp_steps: Callable[[dict, bool, bool], int] | None = None
    # "module:function" growing the model inside a run where the op needs more than the model
    # (ligo: the run's batches and loss; moe: expert-wise optimizer state):
    # f(trainer, model, src_spec, dst_spec, growth, seed, opt_state) -> (model, opt_state or None)
    in_run: str | None = None


# The planner of the ops that copy units (d, f, a, l and their combinations): its entries say which
# units of a grown tensor are copies (freeze=old reads them).
PLAIN_GROWTH = OpInfo.__dataclass_fields__["impl"].default


def resolve(impl: str):
    """The object a registry entry names as "module:attribute" (imported when first needed)."""
    import importlib

    module, _, attr = impl.partition(":")
    return getattr(importlib.import_module(module), attr)


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
    "ligo": OpInfo(
        True,
        "ligo",
        "LiGO, learned linear growth of depth and/or width: starts as stacking + FPI, fitted for steps= steps on the run's own batches and loss (docs/surgery.md)",
        {
            "steps": ArgInfo("int", 100, help="steps fitting the growth operator (taken from the budget at the growth: the grown model trains that many steps fewer)", low=1),
            "lr": ArgInfo("float", 1e-3, help="Adam learning rate of the growth operator's parameters", low=0, open_low=True),
            "select": ArgInfo("choice", "stack", ("stack", "top", "interleave"),
                              "the layer choice the depth coefficients start from (as d's select=)"),
            "seed": _SEED,
        },
        impl="surgery.ops.ligo:grow_ligo",
        in_run="surgery.train.ligo_fit:grow_in_run",
        flexible=True,
    ),
}

# Ops that fit parameters on the run's batches at the growth: name -> the argument giving its steps.
FITTED_OPS = {"ligo": "steps"}


def msg_ramp_steps(args: dict, width: bool, depth: bool) -> int:
    """Steps after an msg growth until every mask is 1 (surgery/ops/msg.py's Ramp; torch-free)."""
    ramp = int(args.get("ramp") or 100)
    depth_ramp = int(args.get("depth_ramp") or ramp)
    ends = [0] + ([int(args.get("width_start") or 0) + ramp] if width else []) \
        + ([int(args.get("depth_start") or 0) + depth_ramp] if depth else [])
    return max(ends)


def _msg_cost(args: dict, width: bool, depth: bool) -> str:
    ramp = int(args.get("ramp") or 100)
    depth_ramp = int(args.get("depth_ramp") or ramp)
    parts = []
    if width:
        parts.append(f"new units/heads over {ramp} steps" + (f" from +{args['width_start']}" if args.get("width_start") else ""))
    if depth:
        parts.append(f"new layers over {depth_ramp} steps" + (f" from +{args['depth_start']}" if args.get("depth_start") else ""))
    return (f"masks ramp 0 -> 1: {'; '.join(parts)}; plain model {msg_ramp_steps(args, width, depth)} steps "
            "after the growth. Exact at the growth step (masks 0) at any ratio, pre- and post-norm; "
            "until then every layer pays a few elementwise products")


OPS["msg"] = OpInfo(
    True,
    "masked",
    "MSG masked structural growth: depth, width or both; new units, heads and layers are multiplied by "
    "masks that ramp from 0 to 1 (norms computed under the mask), so the growth is exact at any ratio",
    {
        "ramp": ArgInfo("int", 100, help="steps over which the width masks (new d_model units, heads, d_ff units) go from 0 to 1", low=1),
        "depth_ramp": ArgInfo("int", None, help="steps over which new layers' masks go from 0 to 1 (default: ramp)", low=1),
        "width_start": ArgInfo("int", None, help="steps after the growth before the width ramp starts (default 0)", low=0),
        "depth_start": ArgInfo("int", None, help="steps after the growth before the depth ramp starts (default 0)", low=0),
        "select": _DEPTH_ARGS["select"],
        "seed": _SEED,
    },
    impl="surgery.ops.msg:plan_msg",
    flexible=True,
    cost=_msg_cost,
    ramp_steps=msg_ramp_steps,
)

# Compression ops: the chain's right model is smaller (or the same size, differently built).
COMPRESS_OPS: dict[str, OpInfo] = {
    "factorize": OpInfo(False, None, "ALBERT factorized embeddings: bert -> albert(embedding=E), best rank-E approximation of the trained embedding (SVD)",
                        {"rank": ArgInfo("int", None, help="E; must match the target's embedding= (optional)", low=0, open_low=True)},
                        impl="surgery.compress:factorize", sources=("bert", "albert"), targets=("albert",)),
    "share": OpInfo(False, None, "ALBERT cross-layer sharing: every layer uses one set of weights (all), one attention block (attention) or one feed-forward block (ffn)",
                    {"what": ArgInfo("choice", "all", ("all", "attention", "ffn"),
                                     "what is shared: whole layers, the attention block (q/k/v/o + its LayerNorm) or the feed-forward block (ffn, ffn_output + its LayerNorm); left out: the target's share="),
                     "init": ArgInfo("choice", "mean", ("mean", "first", "middle"),
                                     "the shared weights start as the mean of the trained layers, layer 0, or the middle layer")},
                    impl="surgery.compress:share", sources=("bert", "albert"), targets=("albert",)),
    "distil": OpInfo(False, None, "distillation into a smaller student (DistilBERT, TinyBERT or Tutor-KD); the model before the op is the frozen teacher",
                     {"style": ArgInfo("choice", "distilbert", ("distilbert", "tinybert", "tutor"),
                                       "distilbert: soft CE at T + hard MLM + hidden cosine; tinybert: embedding/attention/hidden (+prediction) losses; tutor: Tutor-KD"),
                      "T": ArgInfo("float", None, help="softmax temperature of the soft targets (2 for distilbert, 1 for tinybert's prediction loss)", low=0, open_low=True),
                      "soft": ArgInfo("float", 5.0, help="distilbert: weight of the soft-target loss (multiplied by T^2)"),
                      "hard": ArgInfo("float", 2.0, help="distilbert: weight of the student's own MLM loss"),
                      "cos": ArgInfo("float", 1.0, help="distilbert: weight of the hidden-state cosine loss"),
                      "emb": ArgInfo("float", None, help="tinybert/tutor: weight of the embedding-output MSE (1 tinybert, 0 tutor)"),
                      "att": ArgInfo("float", 1.0, help="tinybert/tutor: weight of the attention-score MSE"),
                      "hid": ArgInfo("float", 1.0, help="tinybert/tutor: weight of the hidden-state MSE (through a learned projection)"),
                      "pred": ArgInfo("float", 0.0, help="tinybert: weight of the soft CE of the MLM logits (0 = general distillation)"),
                      "logit": ArgInfo("float", 1.0, help="tutor: weight of the modified-logit loss"),
                      "tutor": ArgInfo("float", 0.25, help="tutor: the tutor generator's width as a fraction of the teacher's", low=0, high=1, open_low=True),
                      "select": ArgInfo("choice", "every-other", ("every-other", "first", "last"),
                                        "a student of the teacher's width starts from these teacher layers: every other (DistilBERT), the first or the last L")},
                     impl="surgery.compress:distil_student", sources=("bert",), targets=("bert",)),
    "moe": OpInfo(False, None, "sparse upcycling: a dense llama/qwen2 decoder becomes a mixtral/qwen2_moe mixture of experts, every expert a copy of the dense MLP, a fresh router; exactly the dense function (top-k weights renormalised over identical experts)",
                  {"experts": ArgInfo("int", None, help="experts per layer; must match the target's experts= (optional)", low=2),
                   "top_k": ArgInfo("int", None, help="experts per token; must match the target's top_k= (optional)", low=1),
                   "seed": _SEED},
                  impl="surgery.moe:upcycle", in_run="surgery.moe:grow_in_run", sources=("llama", "qwen2"), targets=("mixtral", "qwen2_moe")),
}


@dataclass(frozen=True)
class ObjectiveInfo:
    kinds: tuple[str, ...]  # the model kinds it trains (a family descriptor's `kind`)
    help: str
    params: dict[str, ArgInfo]
    impl: str = ""  # "module:name" of the implementation
    head: str | None = None  # a head class the family must have ("mlm", "pretraining")
    only: tuple[str, ...] | None = None  # implemented for these families only

    @property
    def families(self) -> tuple[str, ...]:
        """The families this objective can train."""
        return tuple(n for n, f in FAMILIES.items() if f.kind in self.kinds
                     and (self.head is None or self.head in f.classes.values())
                     and (self.only is None or n in self.only))


_MASK_ARGS = {
    "rate": ArgInfo("float", 0.15, help="fraction of tokens masked", **FRACTION),
    "masking": ArgInfo("choice", "dynamic", ("dynamic", "static"),
                       "dynamic: new masks each time a block is seen (RoBERTa); static: fixed per block"),
    "masks": ArgInfo("int", 1, help="static masking: distinct mask copies per block, used in turn by epoch (RoBERTa: 10)", low=1),
}

OBJECTIVES: dict[str, ObjectiveInfo] = {
    "span_corruption": ObjectiveInfo(
        ("encoder-decoder",),
        "T5 span corruption: mask spans, the decoder writes them out",
        {
            "rate": ArgInfo("float", 0.15, help="fraction of tokens masked", **FRACTION),
            "mean_span": ArgInfo("float", 3.0, help="mean span length in tokens", low=1),
        },
        impl="surgery.train.objectives:SpanCorruption",
    ),
    "mlm": ObjectiveInfo(
        ("encoder",),
        "BERT/RoBERTa masked language modelling (80/10/10), dynamic or static masks",
        {**_MASK_ARGS},
        impl="surgery.train.bert_objectives:MaskedLMPlus", head="mlm",
    ),
    "span": ObjectiveInfo(
        ("encoder",),
        "SpanBERT span masking: whole-word spans, geometric lengths, 80/10/10 per span; sbo=true adds the span-boundary objective",
        {
            **_MASK_ARGS,
            "p": ArgInfo("float", 0.2, help="geometric parameter of span lengths (mean 3.8 words at p=0.2, max 10)", **FRACTION),
            "max_span": ArgInfo("int", 10, help="longest span (words; tokens with whole_words=false)", low=1),
            "whole_words": ArgInfo("bool", True, help="spans of whole SentencePiece words (pieces starting with ▁)"),
            "sbo": ArgInfo("bool", False, help="add the span-boundary objective (bert only)"),
        },
        impl="surgery.train.bert_objectives:SpanMasking", head="mlm",
    ),
    "electra": ObjectiveInfo(
        ("encoder",),
        "ELECTRA replaced-token detection: loss = generator MLM + lambda * RTD; the discriminator is kept",
        {
            **_MASK_ARGS,
            "generator": ArgInfo("float", 0.25, help="generator width as a fraction of the discriminator's (d_model, d_ff, heads)",
                                 low=0, high=1, open_low=True),
            "generator_d_model": ArgInfo("int", 0, help="generator d_model (overrides generator=)", low=0),
            "lambda": ArgInfo("float", 50.0, help="weight of the RTD loss", low=0),
        },
        impl="surgery.train.bert_objectives:ReplacedTokenDetection", head="mlm", only=("bert",),
    ),
    "sop": ObjectiveInfo(
        ("encoder",),
        "ALBERT sentence-order prediction alongside MLM (needs packing=doc-sentences, the default for sop)",
        {**_MASK_ARGS},
        impl="surgery.train.bert_objectives:SentenceOrder", head="pretraining",
    ),
    "clm": ObjectiveInfo(
        ("decoder",),
        "causal language modelling: predict every next token (labels = input ids, padding ignored)",
        {},
        impl="surgery.train.objectives:CausalLM",
    ),
}

# Objective arguments implemented for some families only: objective -> {argument: families}.
OBJECTIVE_ARG_FAMILIES = {"span": {"sbo": ("bert",)}}

# Objectives that train modules besides the kept model (heads, a generator) or a different
# model class. Growth mid-run keeps those modules as they are, so it must keep d_model (depth
# growth); sop's pretraining class is not grown at all.
OBJECTIVES_WITHOUT_GROWTH = {"electra": "the ELECTRA generator and RTD head", "sop": "the sentence-order head",
                            "span(sbo=true)": "the span-boundary head"}
# Objectives that train modules beside the model (reading its embeddings between its forwards):
# parallel=fsdp shards the model only, so they are refused there.
OBJECTIVES_WITH_AUX = {"electra": "the ELECTRA generator and RTD head", "span(sbo=true)": "the span-boundary head"}

# A recipe's `finetune task(...)` arguments: name -> (FinetuneParams field, help). Types and bounds
# come from that field (surgery/finetune/params.py), so plan and fine-tuning accept the same values.
_FT_ARGS = {
    "epochs": ("epochs", "fine-tuning epochs"),
    "lr": ("lr", "peak learning rate"),
    "batch_size": ("batch_size", "examples per step"),
    "seq_len": ("max_length", "input length in tokens"),
    "target_len": ("max_target_length", "output length in tokens (generative tasks)"),
    "warmup": ("warmup_ratio", "warmup as a fraction of the steps"),
    "weight_decay": ("weight_decay", "AdamW weight decay"),
    "seed": ("seed", "seed"),
    "max_examples": ("limit", "use at most this many training examples"),
    "eval_examples": ("eval_limit", "evaluate on at most this many examples"),
}


def _task_args() -> dict[str, ArgInfo]:
    from surgery.args import field_arg
    from surgery.finetune.params import FinetuneParams

    return {name: field_arg(FinetuneParams.model_fields[f], help) for name, (f, help) in _FT_ARGS.items()}


@dataclass(frozen=True)
class TaskInfo:
    kinds: tuple[str, ...]  # model kinds that can do the task
    help: str
    impl: str  # "module:class" of its surgery.finetune.base.Task
    data: tuple[str, ...] = ()  # the shared data files it reads by default (surgery.finetune.data.SHARED_FILES)

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(n for n, f in FAMILIES.items() if f.kind in self.kinds)


TASKS: dict[str, TaskInfo] = {
    "klue-nli": TaskInfo(("encoder", "encoder-decoder"), "KLUE natural language inference (accuracy)",
                         "surgery.finetune.nli:KlueNli", ("klue-nli/train", "klue-nli/dev")),
    "korquad-ext": TaskInfo(("encoder", "encoder-decoder"), "KorQuAD 1.0 extractive QA on the encoder (EM/F1)",
                            "surgery.finetune.qa_extractive:KorquadExtractive", ("korquad/dev",)),
    "korquad-gen": TaskInfo(("encoder-decoder",), "KorQuAD 1.0 generative QA, encoder-decoder (EM/F1)",
                            "surgery.finetune.qa_generative:KorquadGenerative", ("korquad/dev",)),
    "news-summ": TaskInfo(("encoder-decoder",), "Korean news summarization, encoder-decoder (ROUGE-L F1)",
                          "surgery.finetune.summarization:NewsSummarization", ("kowiki/train", "kowiki/valid", "sci-news")),
}
TASK_ARGS = _task_args()

REQUIRED_MODEL_ARGS = ("layers", "d_model", "heads", "d_ff")

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
