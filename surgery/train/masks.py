"""MSG's masks inside a transformers model while they ramp (the weights: surgery/ops/msg.py).

Nothing is forked from transformers: the masks are forward hooks on the model's own modules,
placed by the neutral view's axis roles, so one implementation serves every family:

  writer of d_model units (an axis MODEL/OUT: embeddings, attention and FFN output projections,
  BERT's head transform and pooler)          output *= m_model
  reader of heads (INNER/IN: o projections)   input  *= m_inner    (a new head adds nothing)
  reader of d_ff units (FF/IN: FFN output)    input  *= m_ff       (a new FF unit adds nothing)
  norm over d_model (NORM / HEAD_NORM)        output  = m_model * norm_m(x): mean / variance
                                              (LayerNorm) or mean square (RMSNorm) weighted by
                                              m_model, i.e. over the active units only at mask 0
  new layer (a later copy of a source layer)  output  = x + c * (layer(x) - x)

m_* is 1 on old units and the ramp value c on new ones. At c = 0 the new units of the residual
stream are 0 and every norm sees exactly the small model's statistics, so the grown model
computes the small model's function at any ratio, pre- or post-norm; at c = 1 the hooks compute
the plain model (up to rounding) and are removed (`fold`): the model is then a plain
transformers model, which is all that checkpoints and stage folders ever hold. The mask value is
a pure function of the step (Ramp), so a resumed run puts the same hooks back.
"""

from __future__ import annotations

import torch

from surgery.errors import SurgeryError
from surgery.families.build import layout_of_model
from surgery.growth_rules import same_width
from surgery.ops.msg import MsgLayout, Ramp, msg_layout
from surgery.spec import ModelSpec
from surgery.train.schedule import grown_from, growth_seed
from surgery.view import Kind, Role, View


def block_module(view: View, stack: str, layer: int) -> str:
    """The module path of block `layer` of `stack`: the longest common prefix of its tensors'
    names, cut after the component that is the layer's index."""
    parts = [s.hf.split(".") for s in view.block(stack, layer)]
    common = []
    for comps in zip(*parts):
        if len(set(comps)) != 1:
            break
        common.append(comps[0])
    cuts = [i for i, c in enumerate(common) if c == str(layer)]
    if not cuts:
        raise SurgeryError(f"cannot find the module of {stack} layer {layer} from its tensor names")
    return ".".join(common[: cuts[-1] + 1])


def masked_norm(x: torch.Tensor, weight, bias, m: torch.Tensor, eps: float, kind: str) -> torch.Tensor:
    """gain * normalize(x) + shift with the statistics weighted by m (1 old, c new), times m."""
    xf, mf = x.float(), m.float()
    total = mf.sum()
    if kind == "ln":
        mu = (xf * mf).sum(-1, keepdim=True) / total
        xc = xf - mu
        y = xc * torch.rsqrt((xc * xc * mf).sum(-1, keepdim=True) / total + eps)
    else:
        y = xf * torch.rsqrt((xf * xf * mf).sum(-1, keepdim=True) / total + eps)
    if weight is not None:
        y = y * weight.float()
    if bias is not None:
        y = y + bias.float()
    return y * mf


class MaskedGrowth:
    """The hooks of one msg growth on `model`, at the ramp's value for a step (set_step)."""

    def __init__(self, model, src: ModelSpec, dst: ModelSpec, ramp: Ramp, *, seed: int = 0,
                 options: dict | None = None, layout: MsgLayout | None = None):
        family, hf_layout = layout_of_model(model)
        self.family, self.ramp = family, ramp
        self.layout = layout or msg_layout(family, src, dst, seed, options)
        view = family.view(dst, hf_layout)
        config = model.config.to_dict()
        self.eps = float(config.get(family.eps_key) or (1e-6 if family.norm == "rms" else 1e-12))
        self.width_c = self.depth_c = 0.0
        self.masks: dict[Kind, torch.Tensor] = {}
        self.on_device: dict[tuple, torch.Tensor] = {}
        self.handles = []
        new = self.layout.new_units
        seen: set[tuple[int, str]] = set()

        def once(module, what: str) -> bool:
            key = (id(module), what)
            if key in seen:
                return False
            seen.add(key)
            return True

        for s in view:
            module = model.get_submodule(s.hf.rpartition(".")[0])
            for ax in s.axes:
                if ax.kind is Kind.MODEL and Kind.MODEL in new:
                    if ax.role is Role.OUT and once(module, "out"):
                        self.handles.append(module.register_forward_hook(self._out_hook(Kind.MODEL)))
                    elif ax.role in (Role.NORM, Role.HEAD_NORM) and once(module, "norm"):
                        self.handles.append(module.register_forward_hook(self._norm_hook(), with_kwargs=True))
                if ax.role is Role.IN and ax.kind in (Kind.INNER, Kind.FF) and ax.kind in new and once(module, ax.kind.value):
                    self.handles.append(module.register_forward_pre_hook(self._in_hook(ax.kind)))
        for stack, positions in self.layout.new_layers.items():
            for p in positions:
                module = model.get_submodule(block_module(view, stack, p))
                self.handles.append(module.register_forward_hook(self._layer_hook(), with_kwargs=True))

    # -- values ---------------------------------------------------------------------------------
    def set_step(self, n: int) -> None:
        """The masks of the forward passes that complete step n (or of a validation after n steps)."""
        self.width_c, self.depth_c = self.ramp.width_value(n), self.ramp.depth_value(n)
        self.masks = {}

    def done(self, n: int) -> bool:
        return self.ramp.done(n)

    def mask(self, kind: Kind, device) -> torch.Tensor:
        m = self.masks.get(kind)
        if m is None or m.device != device:
            new = self.on_device.get((kind, device))
            if new is None:  # the unit layout moves to the device once, the value is set per step
                new = self.on_device[(kind, device)] = self.layout.new_units[kind].to(device)
            m = self.masks[kind] = torch.where(new, self.width_c, 1.0).float()
        return m

    def fold(self) -> None:
        """Remove the hooks: the model is the plain transformers model (masks at 1)."""
        for h in self.handles:
            h.remove()
        self.handles = []

    # -- hooks ----------------------------------------------------------------------------------
    def _out_hook(self, kind: Kind):
        def hook(module, args, output):
            return (output * self.mask(kind, output.device)).to(output.dtype)
        return hook

    def _in_hook(self, kind: Kind):
        def hook(module, args):
            x = args[0]
            return ((x * self.mask(kind, x.device)).to(x.dtype),) + tuple(args[1:])
        return hook

    def _norm_hook(self):
        kind = self.family.norm

        def hook(module, args, kwargs, output):
            x = args[0] if args else next(iter(kwargs.values()))
            y = masked_norm(x, getattr(module, "weight", None), getattr(module, "bias", None),
                            self.mask(Kind.MODEL, x.device), self.eps, kind)
            return y.to(output.dtype)
        return hook

    def _layer_hook(self):
        def hook(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            h = output[0] if isinstance(output, tuple) else output
            mixed = x + self.depth_c * (h - x)
            return (mixed,) + tuple(output[1:]) if isinstance(output, tuple) else mixed
        return hook


# -- the trainer's calls ----------------------------------------------------------------------------
def check_ramps(segments, bounds) -> None:
    """Every msg ramp ends inside the stage it starts (the plan checks it when it can count steps)."""
    for i, ((start, end), seg) in enumerate(zip(bounds, segments)):
        if seg.grow is None or seg.grow.op != "msg":
            continue
        src = grown_from(segments, i)
        steps = Ramp.of(seg.grow.options, start, src is None or not same_width(src, seg.spec),
                        src is None or src.stacks != seg.spec.stacks).steps
        if start + steps > end:
            raise SurgeryError(f"msg into {seg.name}: the masks ramp over {steps} steps but {seg.name} trains "
                               f"{end - start} steps before the next growth or the end; shorten ramp=")


def attach(trainer, index: int, model, step: int) -> MaskedGrowth | None:
    """The masks of segment `index`'s msg growth on `model` at `step`, or None when the segment
    was not grown by msg or its ramp is over."""
    seg = trainer.segments[index]
    if seg.grow is None or seg.grow.op != "msg":
        return None
    src, seed = grown_from(trainer.segments, index), growth_seed(seg.grow, trainer.s.seed, index)
    ramp = Ramp.of(seg.grow.options, trainer.bounds[index][0], not same_width(src, seg.spec), src.stacks != seg.spec.stacks)
    if ramp.done(step):
        return None
    masks = MaskedGrowth(model, src, seg.spec, ramp, seed=seed, options=seg.grow.options)
    masks.set_step(step)
    return masks


def before_save(masks: MaskedGrowth | None, ui=None) -> None:
    """Fold masks still ramping when a stage is saved (a stop rule ended the stage inside the ramp):
    the folder holds the plain model, which is the masked one only at mask 1, so the run says so.
    Returns None: what the trainer holds afterwards."""
    if masks is not None and ui is not None:
        ui.warn(f"the stage ended inside an msg ramp (width mask {masks.width_c:g}, new layers {masks.depth_c:g}); "
                "the saved model is the plain grown model (masks at 1)")
    if masks is not None:
        masks.fold()
