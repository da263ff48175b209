"""Every growth op on every family that has a view, through transformers' own forward pass.

The exactness asserted is the one docs/surgery.md states, read off the descriptor: pre-norm
families keep the logits at any width ratio under `l` and at integer ratios under `f`; post-norm
families (BERT, RoBERTa) at integer ratios under both; identity depth is exact everywhere.
Ops that are not function-preserving by design (d, a, da, df) must still give a loadable model of
the target's shape whose logits are finite. A family added as one descriptor file is covered here
without a line of test code.
"""

from __future__ import annotations

import pytest
import torch

from surgery.families import FAMILIES
from surgery.ops import grow_model
from tests.tiny import batch, deeper, logits, model, rel_change, spec, wider

TOL = 1e-5
GROWABLE = [n for n, f in FAMILIES.items() if f.has_view]


def _grow(family: str, op: str, dims: dict, options=None):
    src = spec(family)
    dst = spec(family, **dims)
    m = model(src)
    g = grow_model(m, src, dst, op, seed=5, options=options)
    ids = batch()
    return m, g.model.eval(), rel_change(logits(g.model.eval(), ids), logits(m, ids)), dst


def _exact_ops(family: str) -> list[tuple[str, dict]]:
    pre = FAMILIES[family].norm_position == "pre"
    cases = [("f", wider(family)), ("l", wider(family)), ("d(identity)", deeper(family)),
             ("dl", {**wider(family), **deeper(family)})]
    if pre:
        cases.append(("l", wider(family, 1.5)))
    return cases


@pytest.mark.parametrize("family,op,dims", [(f, op, d) for f in GROWABLE for op, d in _exact_ops(f)],
                         ids=lambda x: x if isinstance(x, str) else "x".join(str(v) for v in x.values()))
def test_exact_ops_keep_the_logits(family, op, dims):
    _, grown, err, dst = _grow(family, op, dims)
    assert err < TOL, (family, op, err)
    assert grown.num_parameters() == dst.params


@pytest.mark.parametrize("family", GROWABLE)
@pytest.mark.parametrize("op", ["d", "a", "da", "df"])
def test_every_other_op_gives_the_target_model(family, op, tmp_path):
    dims = {"d": deeper(family), "a": wider(family), "da": {**wider(family), **deeper(family)},
            "df": {**wider(family), **deeper(family)}}[op]
    _, grown, err, dst = _grow(family, op, dims)
    assert grown.num_parameters() == dst.params
    assert grown.config.to_dict()[next(k for k in FAMILIES[family].dim_keys if "layer" in k)] == dst.layers
    # it saves and loads as a plain transformers model computing the same function
    grown.save_pretrained(tmp_path)
    again = type(grown).from_pretrained(tmp_path).eval()
    ids = batch()
    a, b = logits(grown, ids), logits(again, ids)
    assert torch.isfinite(a).all() and torch.equal(a, b)
