"""Depth growth of each stack: which source layer each new position starts from, and blocks that
start as the exact identity.

Layer selection (`select`), for a stack of L source layers grown to N:
  stack (default)  position p copies layer p mod L: L -> 2L is progressive stacking (the L trained
                   layers copied on top); 8 -> 12 is [0..7, 0, 1, 2, 3] - the bottom layers, whose
                   attention patterns progressive stacking found closest to the top's, repeat.
  top              the original layers, then copies of the top N - L layers (cycling if N > 2L):
                   8 -> 12 is [0..7, 4, 5, 6, 7] - the most trained-to-output layers repeat.
  interleave       position p copies layer floor(p * L / N): each layer followed by its copies,
                   8 -> 12 is [0, 0, 1, 2, 2, 3, 4, 4, 5, 6, 6, 7].
or an explicit list per stack (options={"layers": [[...], [...]]}).

Identity mode (`d(identity)`): the first occurrence of each layer is the original block; every
later occurrence is a new block that computes the identity, with its other weights copied from
that layer so it trains like one. Pre-norm (T5): zero every tensor that writes into the residual
stream (attention and cross-attention output projections, FFN output) - exact. Post-norm (BERT):
see `post_norm_identity` - exact up to LayerNorm epsilon (~1e-12) when d_ff >= 2 * d_model.
"""

from __future__ import annotations

import torch

from surgery.errors import SurgeryError
from surgery.families.base import Family
from surgery.ops.entries import Built, Entry, Zero
from surgery.view import Kind, View

SELECTIONS = ("stack", "top", "interleave")


def select_layers(old: int, new: int, how: str = "stack") -> list[int]:
    if new < old:
        raise SurgeryError(f"depth cannot shrink ({old} -> {new} layers)")
    if how == "stack":
        return [p % old for p in range(new)]
    if how == "top":
        extra = new - old
        tops = [old - 1 - ((extra - 1 - j) % old) for j in range(extra)]
        return list(range(old)) + tops
    if how == "interleave":
        return [p * old // new for p in range(new)]
    raise SurgeryError(f"unknown layer selection {how!r} (choose one of {', '.join(SELECTIONS)})")


def check_layers(layers: list[int], old: int, new: int, stack: str, identity: bool) -> None:
    if len(layers) != new:
        raise SurgeryError(f"layer list for {stack} has {len(layers)} entries, the target has {new} layers")
    bad = [x for x in layers if not isinstance(x, int) or not 0 <= x < old]
    if bad:
        raise SurgeryError(f"layer list for {stack} names layer {bad[0]!r}; the source has layers 0..{old - 1}")
    if identity:
        firsts = [x for i, x in enumerate(layers) if x not in layers[:i]]
        if firsts != list(range(old)):
            raise SurgeryError(
                f"identity depth keeps the source layers in order: the first occurrences in the {stack} "
                f"layer list must be 0..{old - 1} in order, got {firsts}")


def recovery_matrix(g: torch.Tensor, notes: list[str] | None = None) -> torch.Tensor:
    """B with B @ P(g * xhat) = xhat for every mean-zero xhat (P: subtract the mean).

    With all gains non-zero: B = diag(1/g) (I - 1 w^T), w = (1/g) / sum(1/g). Units whose gain is
    zero (trained LayerNorms have some: MiniLM-L6's last one has three at ~1e-33) carry no xhat
    but reveal the lost mean directly (their centred value is -mean(g * xhat)); their own xhat is
    then known only as a group sum, spread evenly. Exact with at most one zero gain; with more, the
    next LayerNorm's variance misses the spread of xhat inside that group (measured by the probe).
    """
    d = g.numel()
    dead = g.abs() <= 1e-6 * g.abs().max()
    live = ~dead
    if not bool(dead.any()):
        inv = 1.0 / g
        return torch.diag(inv) @ (torch.eye(d, dtype=g.dtype) - torch.outer(torch.ones(d, dtype=g.dtype), inv / inv.sum()))
    n_dead = int(dead.sum())
    if n_dead > 1 and notes is not None:
        msg = (f"identity block after a LayerNorm with {n_dead} zero gains: not exact (the zero-gain units' "
               "normalised values cannot be recovered one by one)")
        if msg not in notes:
            notes.append(msg)
    b = torch.zeros(d, d, dtype=g.dtype)
    live_idx = live.nonzero().flatten()
    b[live_idx, live_idx] = 1.0 / g[live]
    b[live_idx[:, None], dead.nonzero().flatten()[None, :]] = -1.0 / (g[live][:, None] * n_dead)
    b[dead] = -b[live].sum(dim=0) / n_dead
    return b


def post_norm_identity(dst: dict[str, Entry], view: View, stack: str, p: int, copy: dict[str, Entry],
                       dims: dict[Kind, int], notes: list[str] | None = None) -> dict[str, Entry]:
    """A post-LayerNorm BERT block that is the identity on its input x = g*xhat + b, where (g, b)
    is the LayerNorm that produced x (previous block's output norm or the embedding norm).

    Zeroed output projections are not enough: the block would return LN(x) != x. Instead:
      attention: output weight 0, output bias -b          -> LN1 sees g*xhat (the shift removed)
      LN1: gain 1, shift 0                                  -> h = P(g*xhat)/s, P the centering
      FFN: W1 = [I; -I], W2 = [(B - I), -(B - I)]           -> act(h) - act(-h) = h for gelu/relu,
           so h + FFN(h) = B h, and B inverts P*diag(g) on mean-zero vectors, so B h = xhat / s
      LN2: gain g, shift b                                  -> g*xhat + b = x (LayerNorm is scale-
                                                              invariant; error ~ eps, 1e-12)
    B: see `recovery_matrix`. Needs d_ff >= 2*d_model.
    Attention q/k/v keep the copied layer's weights (they matter once the output projection learns).
    """
    d, f = dims[Kind.MODEL], dims[Kind.FF]
    prev = "embed.norm" if p == 0 else f"{stack}.{p - 1}.ff.norm"
    g_prev, b_prev = dst[f"{prev}.w"], dst[f"{prev}.b"]
    name = lambda local: f"{stack}.{p}.{local}"  # noqa: E731

    def w1():
        eye = torch.eye(d, dtype=torch.float64)
        return torch.cat([eye, -eye, torch.zeros(f - 2 * d, d, dtype=torch.float64)])

    def w2(g):
        m = recovery_matrix(g.to(torch.float64), notes) - torch.eye(d, dtype=torch.float64)
        return torch.cat([m, -m, torch.zeros(d, f - 2 * d, dtype=torch.float64)], dim=1)

    out = {s.name: copy[s.local] for s in view.block(stack, p) if s.local.startswith("attn.") and s.local[5] in "qkv"}
    out.update({
        name("attn.o.w"): Zero((d, dims[Kind.INNER])),
        name("attn.o.b"): Built((d,), lambda b: -b, (b_prev,)),
        name("attn.norm.w"): Built((d,), lambda: torch.ones(d)),
        name("attn.norm.b"): Zero((d,)),
        name("ff.wi.w"): Built((f, d), w1),
        name("ff.wi.b"): Zero((f,)),
        name("ff.wo.w"): Built((d, f), w2, (g_prev,)),
        name("ff.wo.b"): Zero((d,)),
        name("ff.norm.w"): Built((d,), lambda g: g.clone(), (g_prev,)),
        name("ff.norm.b"): Built((d,), lambda b: b.clone(), (b_prev,)),
    })
    missing = {s.name for s in view.block(stack, p)} - set(out)
    if missing:
        raise SurgeryError(f"identity block construction does not cover {sorted(missing)}")
    return out


def deepen(family: Family, widened: dict[str, Entry], src_view: View, dst_view: View, layers: dict[str, list[int]],
           identity: bool, dst_dims: dict[Kind, int], config: dict, notes: list[str] | None = None) -> dict[str, Entry]:
    """Entries of every slot of the target view: globals and stack-level tensors as widened,
    block p of each stack from block layers[stack][p] of the (widened) source."""
    out: dict[str, Entry] = {s.name: widened[s.name] for s in dst_view if s.layer is None}
    if identity and family.norm_position == "post":
        _check_post_norm_identity(family, dst_dims, config)
    for stack in family.stacks:
        seen: set[int] = set()
        for p, l in enumerate(layers[stack]):
            copy = {s.local: widened[s.name] for s in src_view.block(stack, l)}
            is_new = identity and l in seen
            seen.add(l)
            if not is_new:
                out.update({s.name: copy[s.local] for s in dst_view.block(stack, p)})
            elif family.norm_position == "pre":
                out.update({s.name: Zero(s.shape(dst_dims)) if s.writes_residual() else copy[s.local]
                            for s in dst_view.block(stack, p)})
            else:
                out.update(post_norm_identity(out, dst_view, stack, p, copy, dst_dims, notes))
    return out


def _check_post_norm_identity(family: Family, dims: dict[Kind, int], config: dict) -> None:
    if dims[Kind.FF] < 2 * dims[Kind.MODEL]:
        raise SurgeryError(
            f"identity depth on a post-LayerNorm model needs d_ff >= 2*d_model "
            f"(got d_ff={dims[Kind.FF]}, d_model={dims[Kind.MODEL]})")
    act = config.get(family.act_key, "gelu")
    if act not in family.odd_split_acts:
        raise SurgeryError(f"identity depth on a post-LayerNorm model needs an activation with "
                           f"act(z) - act(-z) = z (gelu, relu, silu); this model uses {act!r}")
