"""What a family adapter is: transformers names and quirks as data, mapped onto the neutral view.

An adapter declares name templates (`{p}encoder.layer.{i}.attention.self.query.weight`) with the
axis tags of each tensor, the norm kind and placement, the config keys holding each dimension,
and the few quirks that a width op must know (how a tied head scales its input). Everything else
(width, depth, AKI, lossless growth, optimizer state) is generic code over the view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

from surgery.spec import ModelSpec
from surgery.view import Axis, Kind, Slot, View


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
class Family:
    name: str
    norm: Literal["rms", "ln"]
    norm_position: Literal["pre", "post"]
    eps_key: str  # config key of the norms' epsilon
    stacks: tuple[str, ...]  # neutral stack names, bottom first
    # Config keys that ModelSpec.hf_config() sets and growth changes (copied into the grown config).
    dim_keys: tuple[str, ...]
    # (spec, layout) -> global templates / stack-level templates / block templates per stack.
    global_templates: Callable[[ModelSpec, Layout], list[Template]]
    stack_templates: Callable[[ModelSpec, Layout, str], list[Template]]
    block_templates: Callable[[ModelSpec, Layout, str], list[Template]]
    # Multiplier the model applies to the final hidden state before a tied head (T5: d_model**-0.5),
    # as a function of the spec: width growth rescales the head norm by its ratio.
    head_input_scale: Callable[[ModelSpec], float]
    # Extra axis sizes that a spec does not hold, from the config (positions, token types, buckets).
    extra_dims: Callable[[dict], dict[Kind, int]]
    # Tensor names carried over untouched (buffers), as regexes.
    passthrough: tuple[str, ...] = ()
    # Activations `act` with act(z) - act(-z) == z; a post-norm identity block relies on it.
    odd_split_acts: frozenset[str] = field(default_factory=frozenset)
    act_key: str = ""

    def dims(self, spec: ModelSpec, config: dict) -> dict[Kind, int]:
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

    def view(self, spec: ModelSpec, layout: Layout) -> View:
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
