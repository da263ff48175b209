"""What a family descriptor is: everything the project knows about one model family, as data.

A descriptor (`Family`) holds, in one place per family:
- the recipe arguments it takes and how they become `ModelSpec` fields and back from a
  `config.json` (`spec_fields`), the `transformers` config it builds (`hf_config`), its classes;
- the name templates of its tensors (`{p}encoder.layer.{i}.attention.self.query.weight`) with
  the axis tags of each tensor, so that the ops work on one neutral view and the plan derives
  tensor groups and parameter counts from the same templates;
- the tokenizer's special tokens and post-processing, the default objective, the model kind that
  objectives and fine-tuning tasks ask for, the growth rules particular to it, and its quirks.

No torch here: planning imports descriptors. Code that builds `transformers` modules is in
`surgery/families/build.py`; a descriptor names its torch-side hooks as "module:function" strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Literal

from surgery.args import ArgInfo
from surgery.view import Axis, Kind, Slot, View

if TYPE_CHECKING:
    from surgery.spec import ModelSpec


@dataclass(frozen=True)
class Template:
    """One tensor: its neutral local name, transformers name template, and axis tags."""

    local: str
    hf: str
    axes: tuple[Axis, ...]
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Layout:
    """How one checkpoint of a family is laid out (which class wrote it)."""

    model_class: str  # transformers class to load it with, e.g. BertForMaskedLM
    prefix: str = ""  # BERT: "bert." under the pretraining heads, "" for a bare BertModel
    has_pooler: bool = False
    has_mlm_head: bool = False
    untied_head: bool = False  # T5, llama: a separate lm_head.weight


@dataclass(frozen=True)
class TokenizerInfo:
    """The special tokens (transformers' keyword -> token, in id order) and how a text is wrapped.

    `single`/`pair` are `tokenizers` TemplateProcessing strings; `sentinels` adds T5's
    `<extra_id_N>`; `token_type_ids` says whether the model reads segment ids.
    """

    specials: dict[str, str]
    single: str
    pair: str
    sentinels: bool = False
    token_type_ids: bool = False

    @property
    def separator(self) -> str:
        """The token that ends a document when documents are packed into one stream."""
        return self.specials.get("eos_token") or self.specials.get("sep_token")


ModelKind = Literal["encoder", "decoder", "encoder-decoder"]


def _no_templates(spec, layout, *rest) -> list[Template]:
    return []


@dataclass(frozen=True)
class Family:
    name: str
    kind: ModelKind
    summary: str  # one line for docs and --help
    # Recipe arguments (beyond the family name), in the order the docs list them.
    args: dict[str, ArgInfo]
    config_class: str  # transformers config class
    model_class: str  # the pretraining class a recipe's model is built as
    # transformers classes whose checkpoints this family reads -> what the class has on top of the
    # bare model ("mlm", "lm", "pretraining", "" for the bare model)
    classes: dict[str, str]
    hf_config: Callable[["ModelSpec"], dict]  # kwargs of config_class that build exactly the spec
    spec_fields: Callable[[dict], dict]  # config.json contents -> ModelSpec fields (not family)
    default_objective: str
    tokenizer: TokenizerInfo
    # Config overrides that turn dropout off (exactness checks, tests).
    no_dropout: dict = field(default_factory=dict)
    # A tiny model of the family (recipe argument values): tests and examples build it.
    tiny: dict = field(default_factory=dict)
    # Recipe argument values -> ModelSpec fields where they differ (llama's tie= is head=).
    recipe_fields: Callable[[dict], dict] = lambda values: values
    validate: Callable[["ModelSpec"], None] = lambda spec: None  # raises ValueError
    describe: Callable[["ModelSpec"], str] = lambda spec: ""  # extra ", k=v" text for describe()
    json_fields: Callable[["ModelSpec"], dict] = lambda spec: {}  # extra fields of plan --json
    # Spec fields a growth op keeps, beyond vocab and the family itself (a recipe that changes
    # them across a growth is refused by the plan and by the ops alike).
    growth_keeps: tuple[str, ...] = ()
    # None, or why growth ops refuse this family (the plan says so at the op).
    no_growth: str | None = None
    # torch-side hook run on a freshly built model ("module:function", called with model, spec).
    after_build: str | None = None
    # torch-side hook that gives a model its own head tensor where transformers would tie it
    # (T5 built from a config always ties): called with (model, weight).
    own_head: str | None = None
    # -- the neutral view (families that grow) --
    norm: Literal["rms", "ln"] = "ln"
    norm_position: Literal["pre", "post"] = "pre"
    eps_key: str = ""  # config key of the norms' epsilon
    stacks: tuple[str, ...] = ("enc",)  # neutral stack names, bottom first
    # Config keys that hf_config() sets and growth changes (copied into the grown config).
    dim_keys: tuple[str, ...] = ()
    # (spec, layout) -> global templates / stack-level templates / block templates per stack.
    global_templates: Callable[["ModelSpec", Layout], list[Template]] = _no_templates
    stack_templates: Callable[["ModelSpec", Layout, str], list[Template]] = _no_templates
    block_templates: Callable[["ModelSpec", Layout, str], list[Template]] = _no_templates
    # Multiplier the model applies to the final hidden state before a tied head (T5: d_model**-0.5),
    # as a function of the spec: width growth rescales the head norm by its ratio.
    head_input_scale: Callable[["ModelSpec"], float] = lambda spec: 1.0
    # Extra axis sizes that a spec does not hold, from the config (positions, token types, buckets).
    extra_dims: Callable[[dict], dict[Kind, int]] = lambda config: {}
    # The layout of a checkpoint of `cls` with these tensor names (prefixes, optional heads).
    layout_of: Callable[[str, set[str]], Layout] = lambda cls, names: Layout(cls)
    # Whether a checkpoint's head is its own tensor (names, get(name) -> tensor); None: always tied.
    untied_head_in: Callable[[set[str], Callable], bool] | None = None
    # The layout of the model a recipe builds (model_class, fresh weights).
    plan_layout: Callable[["ModelSpec"], Layout] | None = None
    # What the plan shows for a head without tensors of its own ("tied", ...).
    head_note: Callable[["ModelSpec"], str] = lambda spec: "tied"
    # Hand-written tensor groups, for a family without a view (ALBERT); else derived from the view.
    tensor_groups: Callable | None = None
    # Parameters one token computes with, where not all of them (a mixture of experts: top_k of
    # its experts); None: every parameter. FLOPs per token count these.
    active_params: Callable[["ModelSpec"], int] | None = None
    # Tensor names carried over untouched (buffers), as regexes.
    passthrough: tuple[str, ...] = ()
    # Activations `act` with act(z) - act(-z) == z; a post-norm identity block relies on it.
    odd_split_acts: frozenset[str] = field(default_factory=frozenset)
    act_key: str = ""

    # -- the view ---------------------------------------------------------------------------
    def class_of(self, names: set[str]) -> str:
        """The class of a checkpoint whose config.json names none: the pretraining class when its
        tensors carry that class's prefix (or the family has no bare class), else the bare model."""
        bare = next((c for c, head in self.classes.items() if head == ""), None)
        prefix = self.layout_of(self.model_class, set()).prefix
        if bare is None or not prefix or any(n.startswith(prefix) for n in names):
            return self.model_class
        return bare

    @property
    def has_view(self) -> bool:
        return self.tensor_groups is None

    def layout_for_plan(self, spec: "ModelSpec") -> Layout:
        if self.plan_layout is not None:
            return self.plan_layout(spec)
        return self.layout_of(self.model_class, set())

    def dims(self, spec: "ModelSpec", config: dict) -> dict[Kind, int]:
        d = {
            Kind.VOCAB: spec.vocab,
            Kind.MODEL: spec.d_model,
            Kind.INNER: spec.inner_dim,
            Kind.HEADS: spec.heads,
            Kind.FF: spec.d_ff,
            Kind.KV_INNER: spec.kv_inner_dim,
            Kind.INNER3: 3 * spec.inner_dim,
        }
        d.update(self.extra_dims(config))
        return d

    def view(self, spec: "ModelSpec", layout: Layout) -> View:
        """Every slot of a model of this spec and layout, with its transformers name."""
        v = View()
        for t in self.global_templates(spec, layout):
            v.add(Slot(t.local, t.hf, t.axes, t.aliases))
        for stack, depth in zip(self.stacks, spec.stacks):
            for t in self.stack_templates(spec, layout, stack):
                v.add(Slot(f"{stack}.{t.local}", t.hf, t.axes, t.aliases, stack=stack))
            for i in range(depth):
                for t in self.block_templates(spec, layout, stack):
                    v.add(Slot(f"{stack}.{i}.{t.local}", t.hf.format(i=i), t.axes,
                               tuple(a.format(i=i) for a in t.aliases), stack=stack, layer=i))
        return v

    def plan_view(self, spec: "ModelSpec") -> tuple[View, dict[Kind, int]]:
        """The view of the model a recipe builds, and its axis sizes."""
        return self.view(spec, self.layout_for_plan(spec)), self.dims(spec, self.hf_config(spec))


# -- helpers descriptors share ----------------------------------------------------------------
def common_args(**extra: ArgInfo) -> dict[str, ArgInfo]:
    """layers, d_model, heads, d_ff, vocab (every family), then the family's own."""
    base = {
        "layers": ArgInfo("layers", None, help="depth"),
        "d_model": ArgInfo("int", None, help="hidden size", low=0, open_low=True),
        "heads": ArgInfo("int", None, help="attention heads", low=0, open_low=True),
        "d_ff": ArgInfo("int", None, help="feed-forward size", low=0, open_low=True),
        "vocab": ArgInfo("int", 32128, help="vocabulary size (a pretrained checkpoint's tokenizer decides it)",
                         low=0, open_low=True),
    }
    return {**base, **extra}


MAX_POSITIONS = ArgInfo("int", 512, help="learned absolute positions (rows of the position embedding)",
                        low=0, open_low=True)
