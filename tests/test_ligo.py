"""ligo: learned linear growth, through transformers' own forward pass on tiny models.

- the operator, at its initialisation, *is* the plain ops: stacking (`d`), Net2Net FPI (`f`), both
  (`df`), on every family that has a view;
- the materialised model equals the (trained, perturbed) operator applied to the source, recomputed
  here independently from the operator's matrices, and computes what the operator computes;
- a few fit steps lower the loss on a fixed batch;
- `surgery run` with ligo(steps=3): the fit's steps are the run's steps, logged, and a run resumed
  at the growth point ends with the uninterrupted run's weights;
- the plan counts the fit's steps and the operator's FLOPs, and refuses a fit longer than its stage.
"""

from __future__ import annotations

import json

import pytest
import torch

from surgery.families import FAMILIES
from surgery.ops import grow_model
from surgery.ops.ligo import (
    Functional,
    LigoOperator,
    grow_ligo,
    new_model,
    plan_ligo,
    small_tensors,
)
from tests import resume
from tests.fixtures_text import documents
from tests.tiny import batch, deeper, logits, loss, model, rel_change, spec, wider

GROWABLE = [n for n, f in FAMILIES.items() if f.has_view]


def _no_fit(m, src, dst, **kw):
    return grow_ligo(m, src, dst, loss_fn=None, batches=[], steps=0, seed=5, **kw)


@pytest.mark.parametrize("family,op", [(f, op) for f in GROWABLE for op in ("d", "f", "df")])
def test_initialised_operator_is_the_plain_op(family, op):
    """Unfitted, ligo is stacking for depth and FPI for width: the same tensors as `d`/`f`/`df`
    (same seed: same mappings) within 1e-6, and the same logits."""
    dims = {"d": deeper(family), "f": wider(family), "df": {**wider(family), **deeper(family)}}[op]
    src, dst = spec(family), spec(family, **dims)
    m = model(src)
    plain = grow_model(m, src, dst, op, seed=5).model.eval()
    grown = _no_fit(m, src, dst).model.eval()
    a, b = plain.state_dict(), grown.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, k
        assert (a[k].float() - b[k].float()).abs().max().item() <= 1e-6, k
    ids = batch()
    assert rel_change(logits(grown, ids), logits(plain, ids)) <= 1e-6


@pytest.mark.parametrize("family,extra,dims", [
    ("t5", {"head": "untied"}, {"d_model": 24, "heads": 6, "d_ff": 48, "layers": 3, "decoder_layers": 3}),
    ("llama", {"head": "untied"}, {"d_model": 24, "heads": 6, "kv_heads": 3, "d_ff": 48, "layers": 3}),
    ("llama", {}, {"d_model": 32, "heads": 8, "d_ff": 64}),  # kv heads kept, the group size doubles
])
def test_initialised_operator_is_df_for_untied_heads_odd_ratios_and_groups(family, extra, dims):
    src, dst = spec(family, **extra), spec(family, **extra, **dims)
    m = model(src)
    op = "df" if src.stacks != dst.stacks else "f"
    plain = grow_model(m, src, dst, op, seed=5).model.state_dict()
    grown = _no_fit(m, src, dst).model.state_dict()
    assert plain.keys() == grown.keys()
    assert all((plain[k] - grown[k]).abs().max().item() <= 1e-6 for k in plain)


def test_layer_selection_is_the_starting_point():
    src, dst = spec("llama"), spec("llama", layers=5)
    m = model(src)
    for select in ("top", "interleave"):
        plain = grow_model(m, src, dst, "d", seed=5, options={"select": select}).model.state_dict()
        grown = _no_fit(m, src, dst, select=select).model.state_dict()
        assert all(torch.equal(plain[k], grown[k]) for k in plain)


def _perturbed(family: str):
    src = spec(family)
    dst = spec(family, **wider(family), **deeper(family))
    m = model(src)
    plan = plan_ligo(m, src, dst, seed=3)
    op = LigoOperator(plan)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in op.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return m, src, dst, plan, op


def test_materialised_model_is_the_operator_applied_recomputed_independently():
    """Llama with grouped-query attention, depth and every width grown, operator parameters moved
    away from their init: each grown tensor recomputed here from the operator's matrices by its
    formula (B_out W B_in^T per axis, heads as kron(B_heads, I), depth a sum over old layers)."""
    m, src, _dst, plan, op = _perturbed("llama")
    small = small_tensors(m, plan)
    big = op.materialise(new_model(m, plan), small)
    state = big.state_dict()
    hd = src.head_dim
    M_out, M_in = op.width_out["d_model"].detach(), op.width_in["d_model"].detach()
    F_out, F_in = op.width_out["d_ff"].detach(), op.width_in["d_ff"].detach()
    I = torch.eye(hd)
    H_out, H_in = torch.kron(op.width_out["heads"].detach(), I), torch.kron(op.width_in["heads"].detach(), I)
    K_out = torch.kron(op.width_out["kv_heads"].detach(), I)
    c = op.depth["dec"].detach()
    local = op.locals["dec"]
    rule = {  # block tensor -> (left matrix on its rows, right matrix on its columns)
        "attn.q.w": (H_out, M_in), "attn.k.w": (K_out, M_in), "attn.v.w": (K_out, M_in), "attn.o.w": (M_out, H_in),
        "ff.wi_0.w": (F_out, M_in), "ff.wi_1.w": (F_out, M_in), "ff.wo.w": (M_out, F_in),
    }
    tol = 1e-5
    for s in plan.dst_view:
        got = state[s.hf]
        if s.name == "embed.tok":
            want = small[s.name] @ M_out.T
        elif s.name == "dec.final_norm.w":
            want = M_in @ small[s.name]  # the tied head's norm: the reader matrix (head scale 1)
        else:
            j = local.index(s.local)
            parts = []
            for l in range(src.layers):
                w = small[f"dec.{l}.{s.local}"]
                if s.local in rule:
                    left, right = rule[s.local]
                    parts.append(left @ w @ right.T)
                else:  # the block norms' gains
                    parts.append(M_out @ w)
            want = sum(c[s.layer, l, j] * parts[l] for l in range(src.layers))
        assert (got - want).abs().max().item() <= tol * max(1.0, want.abs().max().item()), s.name
    # And what the materialised model computes is what the operator computes (through
    # transformers' forward with the operator's output as parameters).
    ids = batch()
    with torch.no_grad():
        direct = Functional(new_model(m, plan).eval(), op(small), op.aliases)(input_ids=ids).logits
    assert rel_change(logits(big.eval(), ids), direct) <= 1e-6


@pytest.mark.parametrize("family", ["t5", "bert", "gpt2"])
def test_materialised_model_computes_what_the_operator_computes(family):
    m, _src, _dst, plan, op = _perturbed(family)
    small = small_tensors(m, plan)
    big = op.materialise(new_model(m, plan), small).eval()
    ids = batch()
    f = Functional(new_model(m, plan).eval(), op(small), op.aliases)
    with torch.no_grad():
        direct = (f(input_ids=ids, decoder_input_ids=ids[:, :5]) if family == "t5" else f(input_ids=ids)).logits
    assert rel_change(logits(big, ids), direct) <= 1e-6


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_fit_lowers_the_loss_on_a_fixed_batch(family):
    src = spec(family)
    dst = spec(family, **wider(family), **deeper(family))
    m = model(src)
    ids = batch(1, b=4)
    with torch.no_grad():
        start = float(loss(_no_fit(m, src, dst).model.eval(), ids))
    r = grow_ligo(m, src, dst, loss_fn=lambda mm, b: loss(mm, b), batches=[[ids]] * 8, steps=8, lr=1e-2, seed=5)
    assert abs(r.losses[0] - start) <= 1e-4  # the fit starts from stacking + FPI
    with torch.no_grad():
        end = float(loss(r.model.eval(), ids))
    assert end < 0.97 * start, (start, r.losses, end)
    # the small model's weights did not move (frozen)
    m2 = model(src)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


RECIPE = """
model S = llama(layers=1, d_model=16, heads=4, kv_heads=2, d_ff=32, vocab=300, max_positions=64)
model B = llama(layers=2, d_model=32, heads=8, kv_heads=4, d_ff=64, vocab=300, max_positions=64)
grow S ligo(steps={n}, lr=0.01)@8steps B
train 16steps on "corpus.txt"
    objective clm
    optimizer adamw(lr=3e-3, warmup=2steps)
    batch_size=4 seq_len=32 val_every=4steps
"""


def _recipe(tmp_path, n=3):
    (tmp_path / "corpus.txt").write_text("\n".join(documents(200)) + "\n")
    path = tmp_path / "ligo.grow"
    path.write_text(RECIPE.format(n=n))
    return path


def test_run_counts_the_fit_as_steps_and_resumes_consistently(tmp_path):

    from surgery.plan import plan_file
    from surgery.train.loop import Trainer
    from surgery.train.schedule import compile_plan

    segments, settings = compile_plan(plan_file(_recipe(tmp_path)))
    full = tmp_path / "full"
    summary = Trainer(segments, settings, full, run_name="t", quiet=True, corpus_base=tmp_path).run()
    rows = [json.loads(l) for l in (full / "metrics.jsonl").read_text().splitlines()]
    fit = [r for r in rows if r.get("event") == "ligo"]
    assert len(fit) == 1
    fit = fit[0]
    tps = 4 * 32  # batch_size x corpus tokens per block (clm reads seq_len tokens)
    assert (fit["from_step"], fit["step"], fit["fit_steps"], fit["tokens"]) == (8, 11, 3, 11 * tps)
    assert fit["loss_last"] < fit["loss_first"]
    b_rows = [r for r in rows if r.get("model") == "B" and "event" not in r]
    assert b_rows[0]["step"] == 11 and b_rows[0]["train_loss"] is None  # the grown model enters after the fit
    assert [r["step"] for r in b_rows if r.get("train_loss") is not None][-1] == 16
    assert summary["steps"] == 16 and summary["tokens"] == 16 * tps
    # Stop at the growth point (the checkpoint at the end of S: the fit runs again on resume) or
    # inside the grown stage (after the fit), resume: the same weights and the same accounting.
    for stop in (8, 12):
        cut = tmp_path / f"cut{stop}"
        again = resume.stop_and_resume(segments, settings, cut, tmp_path, stop=stop)
        assert (again["steps"], again["tokens"]) == (summary["steps"], summary["tokens"])
        assert resume.same_final_weights(full, cut), stop
        resumed = [json.loads(l) for l in (cut / "metrics.jsonl").read_text().splitlines()]
        lig = [r for r in resumed if r.get("event") == "ligo"]
        untimed = lambda r: {k: v for k, v in r.items() if k not in ("fit_s", "wall_s")}
        assert len(lig) == 1 and untimed(lig[0]) == untimed(fit), stop  # a re-fit gives the same losses


def test_surgery_run_cli_with_ligo(tmp_path):
    from typer.testing import CliRunner

    from surgery.cli import app

    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", str(_recipe(tmp_path)), "--out", str(run), "--quiet"])
    assert res.exit_code == 0, res.output
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(run / "final")
    assert final.config.hidden_size == 32 and final.config.num_hidden_layers == 2


def test_plan_counts_the_fit(tmp_path):
    from surgery.plan import plan_file
    from surgery.plan.cost import fit_cost, ligo_operator_flops, stage_cost
    from surgery.shapes import flops_per_token

    plan = plan_file(_recipe(tmp_path, n=3))
    grow = plan.grows[0]
    assert grow.op == "ligo" and grow.args["steps"] == 3 and grow.args["lr"] == 0.01
    big_stage = plan.trains[1]
    cost = stage_cost(plan, big_stage)
    op_flops = ligo_operator_flops(plan.models["S"], plan.models["B"])
    assert op_flops > 0
    assert cost.steps == 8 and cost.fit_steps == 3
    assert cost.fit_flops == 3 * 3 * op_flops
    assert cost.flops == flops_per_token(plan.models["B"]) * cost.tokens + cost.fit_flops
    steps, tokens, flops = fit_cost(plan, grow)
    assert (steps, tokens) == (3, 3 * plan.train.tokens_per_step)
    assert flops == flops_per_token(plan.models["B"]) * tokens + 3 * 3 * op_flops
    # the operator's FLOPs estimate is what the operator does: count it with torch's counter
    from torch.utils.flop_counter import FlopCounterMode

    from surgery.families.build import build_model

    src = plan.models["S"]
    m = build_model(src)
    p = plan_ligo(m, src, plan.models["B"])
    op = LigoOperator(p)
    small = small_tensors(m, p)
    with FlopCounterMode(display=False) as counter:
        op(small)
    assert abs(counter.get_total_flops() - op_flops) <= 0.05 * op_flops


def test_plan_refuses_a_fit_longer_than_its_stage(tmp_path):
    from surgery.plan import plan_file
    from surgery.recipe import RecipeError

    with pytest.raises(RecipeError, match=r"ligo\(steps=8\)"):
        plan_file(_recipe(tmp_path, n=8))


def test_plan_accepts_ligo_for_width_only_and_depth_only(tmp_path):
    from surgery.plan import plan_file

    (tmp_path / "corpus.txt").write_text("\n".join(documents(50)) + "\n")
    for b in ("layers=2, d_model=16, heads=4, kv_heads=2, d_ff=32", "layers=1, d_model=32, heads=8, kv_heads=4, d_ff=64"):
        path = tmp_path / "r.grow"
        path.write_text(RECIPE.replace("layers=2, d_model=32, heads=8, kv_heads=4, d_ff=64", b).format(n=2))
        assert plan_file(path).grows[0].op == "ligo"


INIT_RECIPE = """
model T = t5(layers=1+1, d_model=32, heads=4, d_ff=64, vocab=300)
model S = t5(layers=2+2, d_model=64, heads=8, d_ff=128, vocab=300)
pretrained T = "pretrained-T"
grow T init-ligo(steps=2) S
train 6steps on "corpus.txt"
    objective span_corruption(rate=0.15, mean_span=3)
    optimizer adamw(lr=3e-3, warmup=2steps)
    batch_size=4 seq_len=48 val_every=3steps
"""


def test_init_ligo_fits_on_the_first_steps_of_the_budget(tmp_path):
    """init-ligo on a pretrained t5 checkpoint (depth and width): the fit is steps 0..1, the grown
    model trains steps 2..5, and the run's counters say 6 steps."""
    from surgery.families import build_model
    from surgery.plan import plan_file
    from surgery.train.loop import Trainer
    from surgery.train.schedule import compile_plan

    (tmp_path / "corpus.txt").write_text("\n".join(documents(200)) + "\n")
    recipe = tmp_path / "init.grow"
    recipe.write_text(INIT_RECIPE)
    plan = plan_file(recipe)
    build_model(plan.models["T"], seed=5).save_pretrained(tmp_path / "pretrained-T")
    segments, settings = compile_plan(plan)
    run = tmp_path / "run"
    summary = Trainer(segments, settings, run, run_name="t", quiet=True, corpus_base=tmp_path).run()
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    fit = [r for r in rows if r.get("event") == "ligo"]
    assert len(fit) == 1 and (fit[0]["from_step"], fit[0]["step"], fit[0]["fit_steps"]) == (0, 2, 2)
    trained = [r["step"] for r in rows if r.get("train_loss") is not None]
    assert min(trained) > 2 and max(trained) == 6
    assert summary["steps"] == 6 and summary["tokens"] == 6 * plan.train.tokens_per_step


def test_objectives_that_read_weights_beside_the_forward_call_are_refused(tmp_path):
    from surgery.plan import plan_file
    from surgery.recipe import RecipeError

    (tmp_path / "corpus.txt").write_text("\n".join(documents(50)) + "\n")
    path = tmp_path / "e.grow"
    path.write_text("""
model S = bert(layers=1, d_model=32, heads=4, d_ff=64, vocab=300)
model B = bert(layers=2, d_model=32, heads=4, d_ff=64, vocab=300)
grow S ligo(steps=2)@8steps B
train 16steps on "corpus.txt"
    objective electra
    batch_size=4 seq_len=32 val_every=4steps
""")
    with pytest.raises(RecipeError, match="electra with ligo"):
        plan_file(path)


def test_surgery_grow_points_ligo_to_recipes():
    from surgery.errors import SurgeryError
    from surgery.ops import parse_op

    with pytest.raises(SurgeryError, match="inside a run"):
        parse_op("ligo")
