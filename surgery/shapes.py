"""Tensor shapes per group, parameter counts and training cost, computed from specs alone.

Groups follow the architecture-neutral view the ops work on (embedding, attention, feed-forward,
norms, relative bias, head), with shapes as `transformers` stores them ([out, in] for linear
weights), so a plan shows exactly which tensors a growth op resizes. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass

from surgery.spec import ModelSpec
from surgery.view import Role

# AdamW training state per parameter: fp32 weight, gradient and two moments.
TRAIN_BYTES_PER_PARAM = 16


@dataclass(frozen=True)
class Tensor:
    name: str  # a representative name, with {i} for the layer index
    shape: tuple[int, ...]
    count: int  # how many tensors of this shape the group holds

    @property
    def params(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * self.count


@dataclass(frozen=True)
class TensorGroup:
    name: str
    tensors: tuple[Tensor, ...]
    note: str = ""

    @property
    def params(self) -> int:
        return sum(t.params for t in self.tensors)

    def shape_text(self) -> str:
        if not self.tensors:
            return self.note or "-"
        parts = []
        for t in self.tensors:
            shape = "[" + ", ".join(str(s) for s in t.shape) + "]"
            parts.append(f"{shape} x{t.count}" if t.count != 1 else shape)
        # identical shapes read better once: "[512, 512] x72"
        return ", ".join(dict.fromkeys(parts)) + self.note if self.note.startswith(" (shared") else ", ".join(dict.fromkeys(parts))


# The plan's tensor groups, in display order, and which neutral slots each holds (first match).
GROUPS = ("embedding", "attention q/k/v", "attention o", "feed-forward in", "feed-forward out", "norms",
          "relative bias", "pooler", "lm head")


_NORM_ROLES = (Role.NORM, Role.NORM_BIAS, Role.HEAD_NORM, Role.HEAD_NORM_BIAS)


def group_of(local: str) -> str:
    """The tensor group of a neutral slot name (`embed.tok`, `attn.q.w`, `dec.final_norm.w`, ...)."""
    parts = local.split(".")
    if parts[0] == "head":
        return "lm head"
    if "norm" in parts or "final_norm" in parts:
        return "norms"
    if parts[0] == "embed":
        return "embedding"
    if parts[0] == "pooler":
        return "pooler"
    if parts[0] == "relbias":
        return "relative bias"
    if parts[0] in ("attn", "xattn"):
        return "attention o" if parts[1] == "o" else "attention q/k/v"
    if parts[0] == "ff":
        return "feed-forward out" if parts[1] == "wo" else "feed-forward in"
    raise ValueError(f"no tensor group for slot {local!r}")


def tensor_groups(spec: ModelSpec) -> list[TensorGroup]:
    """Every parameter tensor of spec's pretraining model, grouped; derived from the family's view
    (the same templates the ops grow), or the family's own table where it has no view."""
    family = spec.descriptor
    if not family.has_view:
        return family.tensor_groups(spec, Tensor, TensorGroup)
    view, dims = family.plan_view(spec)
    # tensors of one shape count together, a norm's apart from a linear bias of the same size
    found: dict[str, dict[tuple, list]] = {g: {} for g in GROUPS}
    for slot in view:
        local = slot.local if slot.layer is not None else slot.name.split(".", 1)[1] if slot.stack else slot.name
        is_norm = any(a.role in _NORM_ROLES for a in slot.axes)
        entry = found[group_of(local)].setdefault((slot.shape(dims), is_norm), [slot.hf, 0])
        entry[1] += 1
    groups = []
    for name, shapes in found.items():
        if not shapes and name in ("pooler", "relative bias"):
            continue  # a part the family does not have
        tensors = tuple(Tensor(_pattern(hf), shape, n) for (shape, _), (hf, n) in shapes.items())
        note = family.head_note(spec) if name == "lm head" else ""
        groups.append(TensorGroup(name, tensors, note=note))
    return groups


def _pattern(hf: str) -> str:
    """A representative name: the layer index as {i}."""
    import re

    return re.sub(r"\.\d+\.", ".{i}.", hf, count=1)


@dataclass(frozen=True)
class GroupChange:
    name: str
    before: str
    after: str
    params_before: int
    params_after: int

    @property
    def changed(self) -> bool:
        return self.before != self.after


def shape_changes(src: ModelSpec, dst: ModelSpec) -> list[GroupChange]:
    """Per tensor group: shapes and parameter counts before and after a growth."""
    before = {g.name: g for g in tensor_groups(src)}
    after = {g.name: g for g in tensor_groups(dst)}
    names = list(dict.fromkeys([*before, *after]))  # a group one side lacks shows as "-" with 0
    empty = TensorGroup("", (), note="-")
    return [
        GroupChange(name, before.get(name, empty).shape_text(), after.get(name, empty).shape_text(),
                    before.get(name, empty).params, after.get(name, empty).params)
        for name in names
    ]


def flops_per_token(spec: ModelSpec) -> int:
    """Training FLOPs per token, the usual 6 * N estimate (forward 2N + backward 4N).

    For t5 this counts every parameter against every token of the sequence, an upper estimate:
    encoder and decoder actually see the corrupted input and the shorter target respectively.
    ALBERT's shared weights count once per layer that uses them: sharing saves parameters, not
    compute, so a shared ALBERT costs what the unshared one does. A mixture of experts counts
    the parameters a token is routed through (top_k experts per layer, the router, the rest).
    """
    if spec.share != "none":
        return 6 * spec.model_copy(update={"share": "none"}).params
    return 6 * spec.active_params  # a mixture of experts: its top_k experts per token


def train_memory_bytes(spec: ModelSpec) -> int:
    """Weights, gradients and AdamW moments in fp32; activations not included."""
    return TRAIN_BYTES_PER_PARAM * spec.params


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M'."""
    for size, suffix in ((1e21, "Z"), (1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        # rounded to 3 digits first, so 999.6G reads 1T, never 1e+03G
        if abs(float(f"{n:.3g}")) >= size:
            return f"{float(f'{n:.3g}') / size:.3g}{suffix}{unit}"
    return f"{n:.3g}{unit}" if isinstance(n, float) else f"{n}{unit}"


def human_bytes(n: float) -> str:
    for size, suffix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= size:
            return f"{n / size:.3g} {suffix}"
    return f"{int(n)} B"
