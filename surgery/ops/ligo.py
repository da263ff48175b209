"""LiGO: learned linear growth (Wang et al., ICLR 2023), on the neutral view, for every family.

The grown model's weights are a linear function of the small model's, W_big = M(W_small), with M
learned for a few steps on the run's own loss and then materialised into a plain model:

- width: per grown *base* width - d_model, the (query) heads, the kv heads under grouped-query
  attention, d_ff - two learned matrices, `out` [new, old] and `in` [new, old]. Every tensor axis
  of that kind is multiplied by one of them according to its role in the view (surgery/view.py):
  OUT (the tensor writes the units), a norm's gain or shift over them -> `out`; IN (the tensor
  reads the units), the shift of the norm feeding a tied head -> `in`; that norm's gain -> `in`
  times the head's input-scale ratio (T5 tied). The matrices are tied across every tensor and
  every layer that shares the kind, as the residual stream forces. Heads grow as whole heads: the
  heads*d_kv axis uses kron(B_heads, I_dkv) (GPT-2's fused q|k|v: three such blocks), T5's
  relative-bias columns use B_heads itself.
- depth: per stack that gets deeper, one learned coefficient per (new layer, old layer, block
  tensor): new layer p's tensor = sum_l c[p, l, tensor] * (width-grown) old layer l's same tensor.
  Stack-level and global tensors are only widened.

Initialisation: `out` = Net2Net's copy matrix S (S[j, src[j]] = 1), `in` = S diag(1/copies) (FPI's
reader split), depth coefficients one-hot on the `select` layer choice (progressive stacking).
At that point the materialised model *is* `f`'s / `d`'s / `df`'s output (same seed: the same
mappings), so LiGO starts from FPI + stacking and learns away from it. Width and depth are both
linear and the width matrices are the same for every layer, so they commute: each source layer
is widened once, then the layers are mixed.

Fitting (`fit`): the small weights are frozen; the operator's parameters are trained with Adam
for `steps` steps on a loss through the big model class of `transformers` itself, called with
`torch.func.functional_call` and the operator's output as its parameters (nothing forked).
Materialising (`LigoOperator.materialise`) loads M(W_small) into a plain model of that class.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from surgery.errors import SurgeryError
from surgery.families.build import layout_of_model, spec_of_model
from surgery.ops.growth import GrowthPlan, plan_growth
from surgery.ops.mapping import Mapping
from surgery.ops.width import same_width
from surgery.spec import ModelSpec
from surgery.view import Kind, Role

_OUT_SIDE = (Role.OUT, Role.NORM, Role.NORM_BIAS)
_IN_SIDE = (Role.IN, Role.HEAD_NORM, Role.HEAD_NORM_BIAS)


def init_op(src: ModelSpec, dst: ModelSpec) -> str:
    """The plain op whose output LiGO starts from: stacking for depth, FPI for width."""
    deeper = src.stacks != dst.stacks
    wider = not same_width(src, dst)
    if not deeper and not wider:
        raise SurgeryError(f"ligo: the source and the target have the same size ({src.describe()})")
    return ("d" if deeper else "") + ("f" if wider else "")


def _copy_matrix(m: Mapping, divide: bool) -> torch.Tensor:
    """[new, old]: 1 (or 1 / copies) at (j, src[j])."""
    out = torch.zeros(m.new, m.old)
    idx = m.src.clamp(min=0)
    value = 1.0 / m.count[idx] if divide else torch.ones(m.new)
    out[torch.arange(m.new), idx] = value * (m.src >= 0)
    return out


def _head_level(m: Mapping, head_dim: int) -> Mapping:
    """The head mapping behind a per-head expanded (heads*d_kv) mapping."""
    src = m.src[::head_dim]
    return Mapping(m.old // head_dim, torch.where(src >= 0, src // head_dim, -1))


class LigoOperator(torch.nn.Module):
    """The learned growth operator of one growth (src spec -> dst spec of one family and layout)."""

    def __init__(self, plan: GrowthPlan):
        super().__init__()
        self.plan = plan
        src, dst = plan.src_spec, plan.dst_spec
        self.head_dim = src.head_dim
        rule = plan.rule
        # Base widths that grow -> their copy mapping (FPI's, from the plan's rule).
        bases: dict[str, Mapping] = {}
        if rule is not None:
            maps = rule.maps
            if src.d_model != dst.d_model:
                bases["d_model"] = maps[Kind.MODEL]
            if src.d_ff != dst.d_ff:
                bases["d_ff"] = maps[Kind.FF]
            if src.heads != dst.heads:
                bases["heads"] = maps[Kind.HEADS]
            self.gqa = src.kv_heads is not None or dst.kv_heads is not None
            if self.gqa and src.n_kv_heads != dst.n_kv_heads:
                bases["kv_heads"] = _head_level(maps[Kind.KV_INNER], self.head_dim)
        else:
            self.gqa = False
        self.head_scale = rule.head_scale if rule is not None else 1.0
        self.width_out = torch.nn.ParameterDict({k: torch.nn.Parameter(_copy_matrix(m, False)) for k, m in bases.items()})
        self.width_in = torch.nn.ParameterDict({k: torch.nn.Parameter(_copy_matrix(m, True)) for k, m in bases.items()})
        # Depth: per stack that deepens, coefficients [new layers, old layers, block tensors].
        self.locals: dict[str, list[str]] = {}
        depth = {}
        for stack, old, new in zip(plan.family.stacks, src.stacks, dst.stacks):
            if old == new:
                continue
            names = [s.local for s in plan.src_view.block(stack, 0)]
            self.locals[stack] = names
            c = torch.zeros(new, old, len(names))
            for p, l in enumerate(plan.layers[stack]):
                c[p, l, :] = 1.0
            depth[stack] = torch.nn.Parameter(c)
        self.depth = torch.nn.ParameterDict(depth)

    # -- the operator -------------------------------------------------------------------------
    def _base(self, side: str, name: str) -> torch.Tensor | None:
        d = self.width_out if side == "out" else self.width_in
        return d[name] if name in d else None  # noqa: SIM401 (a ParameterDict has no .get)

    def matrix(self, kind: Kind, role: Role) -> torch.Tensor | None:
        """The [new, old] matrix an axis of `kind` and `role` is multiplied by (None: unchanged)."""
        if role is Role.KEEP:
            return None
        side = "out" if role in _OUT_SIDE else "in"
        if kind is Kind.MODEL:
            m = self._base(side, "d_model")
        elif kind is Kind.FF:
            m = self._base(side, "d_ff")
        elif kind is Kind.HEADS:
            m = self._base(side, "heads")
        elif kind in (Kind.INNER, Kind.INNER3, Kind.KV_INNER):
            base = "kv_heads" if kind is Kind.KV_INNER and self.gqa else "heads"
            h = self._base(side, base)
            if h is None:
                return None
            m = torch.kron(h, torch.eye(self.head_dim, dtype=h.dtype, device=h.device))
            if kind is Kind.INNER3:
                m = torch.block_diag(m, m, m)
        else:
            return None
        if m is not None and role is Role.HEAD_NORM and self.head_scale != 1.0:
            m = m * self.head_scale
        return m

    def widen(self, t: torch.Tensor, axes) -> torch.Tensor:
        for a, ax in enumerate(axes):
            m = self.matrix(ax.kind, ax.role)
            if m is not None:
                t = torch.movedim(torch.tensordot(m, t, dims=([1], [a])), 0, a)
        return t

    def forward(self, small: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The big model's tensors (by canonical transformers name) from the small model's (by
        neutral slot name): differentiable in the operator's parameters."""
        plan = self.plan
        out: dict[str, torch.Tensor] = {}
        widened_blocks: dict[tuple[str, str], torch.Tensor] = {}  # (stack, local) -> [old layers, ...]
        for s in plan.dst_view:
            if s.layer is None:
                out[s.hf] = self.widen(small[s.name], s.axes)
                continue
            if s.stack not in self.depth:
                out[s.hf] = self.widen(small[s.name], s.axes)
                continue
            key = (s.stack, s.local)
            if key not in widened_blocks:
                old = plan.src_spec.stacks[plan.family.stacks.index(s.stack)]
                widened_blocks[key] = torch.stack(
                    [self.widen(small[f"{s.stack}.{l}.{s.local}"], s.axes) for l in range(old)])
            j = self.locals[s.stack].index(s.local)
            c = self.depth[s.stack][s.layer, :, j]
            out[s.hf] = torch.tensordot(c, widened_blocks[key], dims=([0], [0]))
        return out

    @property
    def aliases(self) -> dict[str, str]:
        """Tied names of the big model -> the canonical name the operator writes."""
        return {a: s.hf for s in self.plan.dst_view for a in s.aliases}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def materialise(self, big, small: dict[str, torch.Tensor]):
        """Load M(small) into `big` (a model of the target's class and config); returns it."""
        with torch.no_grad():
            values = {k: v.detach() for k, v in self(small).items()}
        missing, unexpected = big.load_state_dict(values, strict=False)
        aliases = {a for s in self.plan.dst_view for a in s.aliases}
        missing = [m for m in missing if m not in aliases]
        if missing or unexpected:
            raise SurgeryError(f"ligo: grown state does not fit {type(big).__name__}: missing {missing}, unexpected {unexpected}")
        big.tie_weights(recompute_mapping=False)
        return big


class Functional:
    """The big model as a loss function sees it: calls run transformers' own forward pass with the
    operator's output as parameters (torch.func.functional_call); attributes come from the model."""

    def __init__(self, model, params: dict[str, torch.Tensor], aliases: dict[str, str] | None = None):
        # A tied alias (lm_head.weight of a tied head) gets its canonical tensor as well, so the
        # call does not depend on how the module ties it.
        params = dict(params)
        have = dict(model.named_parameters(remove_duplicate=False))
        for alias, canonical in (aliases or {}).items():
            if alias in have and canonical in params:
                params[alias] = params[canonical]
        self._model, self._params = model, params

    def __call__(self, *args, **kwargs):
        return torch.func.functional_call(self._model, self._params, args, kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


@dataclass
class LigoResult:
    model: object  # the materialised grown model (plain transformers model, target dims)
    operator: LigoOperator
    losses: list[float] = field(default_factory=list)  # the fit's loss at each step
    fit_s: float = 0.0


def small_tensors(model, plan: GrowthPlan, device=None) -> dict[str, torch.Tensor]:
    """The small model's tensors by neutral slot name, detached (frozen), fp32."""
    state = model.state_dict()
    out = {}
    for s in plan.src_view:
        name = next((n for n in (s.hf, *s.aliases) if n in state), None)
        if name is None:
            raise SurgeryError(f"ligo: the source has no tensor for {s.name} ({s.hf})")
        out[s.name] = state[name].detach().to(device=device, dtype=torch.float32)
    return out


def plan_ligo(model, src: ModelSpec, dst: ModelSpec, *, seed: int = 0, select: str = "stack",
              layers=None) -> GrowthPlan:
    """The plain growth plan LiGO starts from (its views, FPI mappings and layer choice)."""
    family, layout = layout_of_model(model)
    actual = spec_of_model(model)
    if (actual.family, actual.stacks, actual.d_model, actual.heads, actual.d_ff, actual.n_kv_heads) != \
            (src.family, src.stacks, src.d_model, src.heads, src.d_ff, src.n_kv_heads):
        raise SurgeryError(f"the model is {actual.describe()}, not {src.describe()}")
    options = {"select": select}
    if layers is not None:
        options["layers"] = layers
    return plan_growth(family, src, dst, init_op(src, dst), layout, model.config.to_dict(), seed=seed, options=options)


def new_model(model, plan: GrowthPlan, device=None):
    """An empty model of the source's class with the target's config."""
    from surgery.ops import _new_model

    big = _new_model(model, plan.config, plan.src_layout.untied_head)
    big.tie_weights(recompute_mapping=False)  # tied aliases are the same Parameter again
    return big.to(device) if device is not None else big


def fit(op: LigoOperator, big, small: dict[str, torch.Tensor], loss_fn: Callable, batches: Iterable, *,
        lr: float = 1e-3, on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Train the operator's parameters: one Adam step per item of `batches` (an item is a list of
    micro-batches whose gradients add up, each weighted 1/len), loss_fn(model, batch) -> loss
    through `Functional(big, op(small))`. Returns the loss of every step (before its update)."""
    opt = torch.optim.Adam(op.parameters(), lr=lr)
    losses = []
    for i, micro in enumerate(batches):
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for b in micro:
            loss = loss_fn(Functional(big, op(small), op.aliases), b) / len(micro)
            loss.backward()
            total += float(loss.detach())
        opt.step()
        losses.append(total)
        if on_step is not None:
            on_step(i, total)
    return losses


def grow_ligo(model, src: ModelSpec, dst: ModelSpec, *, loss_fn: Callable, batches: Iterable, steps: int = 100,
              lr: float = 1e-3, seed: int = 0, select: str = "stack", layers=None, device=None) -> LigoResult:
    """Grow `model` (spec src) into dst by LiGO: build the operator (initialised as stacking +
    FPI), fit it for `steps` steps (the first `steps` items of `batches`), materialise it."""
    device = device if device is not None else next(model.parameters()).device
    plan = plan_ligo(model, src, dst, seed=seed, select=select, layers=layers)
    op = LigoOperator(plan).to(device)
    small = small_tensors(model, plan, device)
    # The module's own parameters start as the operator's initial output (stacking + FPI): the fit
    # replaces them in every forward call, but nothing ever reads uninitialised memory.
    big = op.materialise(new_model(model, plan, device), small)
    big.train(model.training)
    t0 = time.perf_counter()
    it = iter(batches)
    losses = fit(op, big, small, loss_fn, (next(it) for _ in range(steps)), lr=lr)
    grown = op.materialise(big, small)
    for p in grown.parameters():
        p.requires_grad_(True)
    return LigoResult(grown, op, losses, time.perf_counter() - t0)
