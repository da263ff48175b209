"""MSG (masked structural growth): exact at mask 0 at any ratio (post-LN BERT included), the masks
matter in the middle of the ramp, they fold away into a plain transformers model, and a run
stopped in the middle of a ramp resumes bit-exactly."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from surgery.errors import RecipeError, SurgeryError
from surgery.families import FAMILIES
from surgery.ops import grow_model
from surgery.ops.msg import Ramp
from surgery.train.masks import MaskedGrowth
from tests.fixtures_text import documents
from tests.tiny import batch, logits, model, rel_change, spec

TOL = 1e-5

# (family, target dims): width 1.5x (non-integer), 2x, depth, and both
CASES = [
    ("bert", dict(d_model=24, heads=6, d_ff=96)),
    ("bert", dict(d_model=32, heads=8, d_ff=128)),
    ("bert", dict(layers=4)),
    ("bert", dict(d_model=24, heads=6, d_ff=96, layers=3)),
    ("t5", dict(d_model=24, heads=6, d_ff=48)),
    ("t5", dict(d_model=24, heads=6, d_ff=48, layers=3, decoder_layers=4)),
    ("gpt2", dict(d_model=24, heads=6, d_ff=48)),
    ("gpt2", dict(d_model=24, heads=6, d_ff=48, layers=3)),
    ("llama", dict(d_model=24, heads=6, kv_heads=3, d_ff=48)),
    ("llama", dict(d_model=32, heads=8, kv_heads=2, d_ff=48, layers=3)),  # group size 2 -> 4
    ("llama", dict(d_model=24, heads=6, kv_heads=3, d_ff=48, layers=3, head="untied")),
]


def _ids(case):
    fam, dims = case
    return fam + "-" + "-".join(f"{k}{v}" for k, v in dims.items())


def _grown(family, dims, ramp: Ramp | None = None):
    extra = {"head": dims["head"]} if "head" in dims else {}
    src = spec(family, **extra)
    dst = spec(family, **dims)
    small = model(src)
    big = grow_model(small, src, dst, "msg", seed=3).model.eval()
    assert big.num_parameters() == dst.params
    return small, big, MaskedGrowth(big, src, dst, ramp or Ramp(0, 10)), dst


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_masks_at_zero_keep_the_logits_and_mid_ramp_moves_them(case):
    small, big, masks, _ = _grown(*case)
    ids = batch()
    ref = logits(small, ids)
    masks.set_step(0)
    assert rel_change(logits(big, ids), ref) < TOL
    masks.set_step(5)  # half way: the new units, heads and layers take part
    assert rel_change(logits(big, ids), ref) > 1e-3
    masks.set_step(10)  # mask 1 with the hooks = the plain model
    at_one = logits(big, ids)
    masks.fold()
    assert rel_change(logits(big, ids), at_one) < TOL


@pytest.mark.parametrize("family", [n for n, f in FAMILIES.items() if f.has_view])
def test_every_growable_family_is_exact_at_mask_zero(family):
    """1.5x width and one more layer per stack, for every family with a view (one descriptor file
    is all a new family needs to be covered here)."""
    s = spec(family)
    dims = dict(d_model=int(s.d_model * 1.5), d_ff=int(s.d_ff * 1.5), layers=s.layers + 1)
    if s.d_kv is None:
        dims["heads"] = int(s.heads * 1.5)
    if s.kv_heads is not None:
        dims["kv_heads"] = int(s.kv_heads * 1.5)
    if s.decoder_layers is not None:
        dims["decoder_layers"] = s.decoder_layers + 1
    small, big, masks, _ = _grown(family, dims)
    ids = batch()
    masks.set_step(0)
    assert rel_change(logits(big, ids), logits(small, ids)) < TOL
    masks.set_step(5)
    assert rel_change(logits(big, ids), logits(small, ids)) > 1e-3


@pytest.mark.parametrize("case", CASES[:1] + CASES[4:5], ids=_ids)
def test_without_masks_the_grown_weights_are_not_the_function(case):
    """The check above can fail: the same grown weights without the masks compute something else."""
    small, big, masks, _ = _grown(*case)
    masks.fold()
    ids = batch()
    assert rel_change(logits(big, ids), logits(small, ids)) > 1e-2


def test_folded_model_saves_as_a_plain_transformers_model(tmp_path):
    _, big, masks, _ = _grown("bert", dict(d_model=24, heads=6, d_ff=96, layers=3))
    masks.set_step(3)
    ids = batch()
    masks.fold()
    big.save_pretrained(tmp_path)
    again = type(big).from_pretrained(tmp_path).eval()
    fresh = type(big)(again.config)
    assert set(again.state_dict()) == set(fresh.state_dict())
    assert set(load_file(tmp_path / "model.safetensors")) <= set(fresh.state_dict())
    assert torch.equal(logits(big, ids), logits(again, ids))
    # no hook is left on any module
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in big.modules())


def test_ramp_values():
    r = Ramp(at=10, ramp=4, depth_ramp=2, width_start=0, depth_start=3)
    assert [r.width_value(n) for n in (10, 11, 14, 20)] == [0.0, 0.25, 1.0, 1.0]
    assert [r.depth_value(n) for n in (12, 13, 14, 15)] == [0.0, 0.0, 0.5, 1.0]
    assert r.end == 15 and not r.done(14) and r.done(15)
    assert Ramp(at=0, ramp=4, width=True, depth=False).end == 4


def test_grown_optimizer_state_keeps_old_units_and_zeroes_new_ones():
    src, dst = spec("gpt2"), spec("gpt2", d_model=24, heads=6, d_ff=48)
    small = model(src)
    g = grow_model(small, src, dst, "msg", seed=0)
    state = {n: {"exp_avg": torch.ones_like(p), "exp_avg_sq": torch.ones_like(p), "step": torch.tensor(3.0)}
             for n, p in small.named_parameters()}
    grown = g.grow_optimizer_state(state)
    m = grown["transformer.h.0.mlp.c_fc.weight"]["exp_avg"]  # [in=d_model, out=d_ff]
    assert m.shape == (24, 48) and m[:16, :32].eq(1).all() and m[16:].eq(0).all() and m[:, 32:].eq(0).all()


# -- plan ------------------------------------------------------------------------------------------
def _plan(text: str):
    from surgery.plan import build_plan
    from surgery.recipe import parse_recipe

    return build_plan(parse_recipe(textwrap.dedent(text), "x.grow"))


MODELS = """\
    model S = bert(layers=2, d_model=16, heads=4, d_ff=64, vocab=300)
    model B = bert(layers=3, d_model=24, heads=6, d_ff=96, vocab=300)
    model W = bert(layers=2, d_model=24, heads=6, d_ff=96, vocab=300)
"""


def test_plan_accepts_depth_width_or_both_and_shows_the_ramp():
    from surgery.plan.cost import op_cost, op_ramp

    plan = _plan(MODELS + "grow S msg(ramp=6, depth_ramp=4, depth_start=2)@8steps B\ntrain 20steps on \"c.txt\"\n")
    g = plan.grows[0]
    assert g.args["ramp"] == 6 and op_ramp(plan, g) == 6
    assert "new layers over 4 steps from +2" in op_cost(plan, g) and "Exact at the growth step" in op_cost(plan, g)
    width_only = _plan(MODELS + "grow S msg@8steps W\ntrain 120steps on \"c.txt\"\n")
    assert op_ramp(width_only, width_only.grows[0]) == 100  # the default ramp
    _plan(MODELS + "grow W msg(ramp=3)@8steps B\ntrain 20steps on \"c.txt\"\n")  # depth only
    from surgery.plan.export import plan_json

    grow = next(s for s in plan_json(plan)["stages"] if s["kind"] == "grow")
    assert grow["ramp_steps"] == 6 and grow["cost"].startswith("masks ramp 0 -> 1")


def test_plan_refuses_a_ramp_longer_than_its_stage_and_same_size():
    with pytest.raises(RecipeError, match="ramp over 30 steps, but B trains only 12 steps"):
        _plan(MODELS + "grow S msg(ramp=30)@8steps B\ntrain 20steps on \"c.txt\"\n")
    with pytest.raises(RecipeError, match="init-msg ramps its masks while the next stage trains"):
        _plan(MODELS + 'pretrained S = "nowhere"\ngrow S init-msg W init-d B\ntrain 120steps on "c.txt"\n')
    _plan(MODELS + 'pretrained S = "nowhere"\ngrow S init-f W init-msg(ramp=5) B\ntrain 120steps on "c.txt"\n')
    with pytest.raises(RecipeError, match="must be 0..1 in order, got \\[1, 0\\]"):
        _plan(MODELS + "grow W msg[1, 0, 1]@8steps B\ntrain 120steps on \"c.txt\"\n")
    layers = _plan(MODELS + "grow W msg[0, 0, 1]@8steps B\ntrain 120steps on \"c.txt\"\n").grows[0].args["layers"]
    assert layers == [[0, 0, 1]]
    with pytest.raises(RecipeError, match="same size"):
        _plan(MODELS + "grow S msg@8steps S\ntrain 20steps on \"c.txt\"\n")


# -- run -------------------------------------------------------------------------------------------
RECIPE = """
model S = bert(layers=2, d_model=16, heads=4, d_ff=64, vocab=300)
model B = bert(layers=3, d_model=24, heads=6, d_ff=96, vocab=300)
grow S msg(ramp=6, depth_ramp=4, depth_start=1)@6steps B
train 16steps on "corpus.txt"
    optimizer adamw(lr=3e-3, warmup=2steps)
    batch_size=4 seq_len=32 val_every=2steps optimizer_on_grow=grow
"""


def test_run_stopped_mid_ramp_resumes_bit_exactly(tmp_path):
    from surgery.plan import plan_file
    from surgery.train.loop import Trainer
    from surgery.train.schedule import compile_plan

    (tmp_path / "corpus.txt").write_text("\n".join(documents(200)) + "\n")
    recipe = tmp_path / "msg.grow"
    recipe.write_text(RECIPE)
    segments, settings = compile_plan(plan_file(recipe))
    full, cut = tmp_path / "full", tmp_path / "cut"
    kw = dict(run_name="t", quiet=True, corpus_base=tmp_path)
    Trainer(segments, settings, full, **kw).run()
    # stopped at step 9: its last checkpoint is step 8, two steps into the six-step ramp
    Trainer(segments, settings, cut, stop_after_step=9, **kw).run()
    ck = cut / "checkpoints" / (cut / "checkpoints" / "latest").read_text().strip()
    assert json.loads((ck / "trainer_state.json").read_text())["step"] == 8
    _assert_plain(ck / "model")  # the mid-ramp checkpoint holds plain weights: the step gives the masks
    Trainer(segments, settings, cut, resume=True, **kw).run()
    a = load_file(full / "final" / "model.safetensors")
    b = load_file(cut / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    rows = [json.loads(l) for l in (full / "metrics.jsonl").read_text().splitlines()]
    g = next(i for i, r in enumerate(rows) if r.get("event") == "grow")
    assert rows[g - 1]["step"] == rows[g + 1]["step"] == 6
    assert abs(rows[g - 1]["val_loss"] - rows[g + 1]["val_loss"]) < 1e-4  # exact at the growth step

    # the stage and final folders are plain models without mask state
    for folder in (full / "stages" / "1-B", full / "final", cut / "final"):
        _assert_plain(folder)


def _assert_plain(folder):
    from transformers import BertForMaskedLM

    m = BertForMaskedLM.from_pretrained(folder)
    assert m.config.hidden_size == 24 and m.config.num_hidden_layers == 3
    assert set(load_file(folder / "model.safetensors")) <= set(m.state_dict())
    assert not any(x._forward_hooks or x._forward_pre_hooks for x in m.modules())


def test_run_refuses_a_ramp_past_its_stage_when_only_the_data_can_tell(tmp_path):
    from surgery.train.masks import check_ramps
    from surgery.train.schedule import Growth, Segment

    seg = Segment("B", spec("bert", d_model=24, heads=6, d_ff=96), (1, "ep"), (2, "ep"), grow=Growth("msg", {"ramp": 50}))
    with pytest.raises(SurgeryError, match="ramp over 50 steps but B trains 10 steps"):
        check_ramps([seg], [(10, 20)])
    check_ramps([seg], [(10, 60)])


@pytest.mark.parametrize("family", ["t5", "gpt2", "llama"])
def test_run_grows_by_msg_with_the_validation_loss_kept(tmp_path, family):
    """surgery run with each family's default objective: the loss right after an msg growth is the
    loss right before it, and the final folder is the plain target model."""
    from typer.testing import CliRunner

    from surgery.cli import app
    layers = "2+2" if family == "t5" else "2"
    kv = ", kv_heads=2" if family == "llama" else ""
    kv_big = ", kv_heads=3" if family == "llama" else ""
    big_layers = "3+3" if family == "t5" else "3"
    (tmp_path / "corpus.txt").write_text("\n".join(documents(120)) + "\n")
    recipe = tmp_path / "r.grow"
    recipe.write_text(f"""
model S = {family}(layers={layers}, d_model=16, heads=4, d_ff=32, vocab=300{kv})
model B = {family}(layers={big_layers}, d_model=24, heads=6, d_ff=48, vocab=300{kv_big})
grow S msg(ramp=2)@2steps B
train 6steps on "corpus.txt"
    batch_size=2 seq_len=32 val_every=2steps
""")
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", str(recipe), "--out", str(run), "--quiet"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    g = next(i for i, r in enumerate(rows) if r.get("event") == "grow")
    assert abs(rows[g - 1]["val_loss"] - rows[g + 1]["val_loss"]) < 1e-4
    from surgery.io import load_checkpoint

    assert load_checkpoint(run / "final").spec.d_model == 24


def test_surgery_run_killed_mid_ramp_resumes_to_the_uninterrupted_weights(tmp_path):
    """The same through the CLI with a SIGKILL (as tests/test_run.py does for the other ops)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "corpus.txt").write_text("\n".join(documents(200)) + "\n")
    recipe = tmp_path / "msg.grow"
    recipe.write_text(RECIPE.replace("msg(ramp=6, depth_ramp=4, depth_start=1)", "msg(ramp=30, depth_ramp=20)")
                      .replace("train 16steps", "train 40steps"))
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    cmd = lambda out, *extra: [sys.executable, "-m", "surgery", "run", str(recipe), "--out", str(out), "--quiet", *extra]
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(cmd(full), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        log = killed / "metrics.jsonl"
        if log.exists() and any(json.loads(l).get("step", 0) >= 12 for l in log.read_text().splitlines() if l):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ck = killed / "checkpoints" / (killed / "checkpoints" / "latest").read_text().strip()
    assert 6 < json.loads((ck / "trainer_state.json").read_text())["step"] < 36  # inside the ramp
    subprocess.run(cmd(killed, "--resume"), check=True, env=env, capture_output=True)
    a = load_file(full / "final" / "model.safetensors")
    b = load_file(killed / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_init_msg_ramps_from_the_first_step(tmp_path):
    """init-msg grows a pretrained checkpoint before training; its masks ramp over the first steps."""
    from typer.testing import CliRunner

    from surgery.cli import app
    from surgery.families.build import build_model

    small = spec("bert", vocab=300)
    build_model(small, seed=0).save_pretrained(tmp_path / "src")
    (tmp_path / "corpus.txt").write_text("\n".join(documents(120)) + "\n")
    recipe = tmp_path / "r.grow"
    recipe.write_text("""
model S = bert(layers=2, d_model=16, heads=4, d_ff=64, vocab=300)
model B = bert(layers=3, d_model=24, heads=6, d_ff=96, vocab=300)
pretrained S = "src"
grow S init-msg(ramp=3, depth_start=1) B
train 6steps on "corpus.txt"
    batch_size=2 seq_len=32 val_every=2steps
""")
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", str(recipe), "--out", str(run), "--quiet"])
    assert res.exit_code == 0, res.output
    _assert_plain(run / "final")


def test_attach_finds_the_growth_of_an_init_or_a_mid_run_segment():
    from types import SimpleNamespace

    from surgery.train.masks import attach
    from surgery.train.schedule import Growth, Segment

    src, dst = spec("bert"), spec("bert", d_model=24, heads=6, d_ff=96)
    small = model(src)
    big = grow_model(small, src, dst, "msg").model.eval()
    g = Growth("msg", {"ramp": 4})
    init = Segment("B", dst, (0, "steps"), (6, "steps"), grow=g, init_from="x", init_spec=src)
    trainer = SimpleNamespace(segments=[init], bounds=[(0, 6)], s=SimpleNamespace(seed=0))
    masks = attach(trainer, 0, big, 0)
    ids = batch()
    assert masks is not None and rel_change(logits(big, ids), logits(small, ids)) < TOL
    masks.fold()
    assert attach(trainer, 0, big, 4) is None  # the ramp is over at step 4
    first = Segment("S", src, (0, "steps"), (5, "steps"))
    later = Segment("B", dst, (5, "steps"), (12, "steps"), grow=g)
    trainer = SimpleNamespace(segments=[first, later], bounds=[(0, 5), (5, 12)], s=SimpleNamespace(seed=0))
    masks = attach(trainer, 1, big, 7)  # resumed two steps into the ramp
    assert masks.width_c == 0.5 and attach(trainer, 0, small, 3) is None
    masks.fold()


def test_a_stage_saved_inside_a_ramp_is_folded_and_said():
    from surgery.train.masks import before_save

    _, big, masks, _ = _grown("gpt2", dict(d_model=24, heads=6, d_ff=48))
    masks.set_step(3)
    said = []
    assert before_save(masks, type("UI", (), {"warn": lambda self, t: said.append(t)})()) is None
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in big.modules())
    assert "inside an msg ramp (width mask 0.3" in said[0]
    assert before_save(None) is None


def test_surgery_plan_prints_the_shapes_the_ramp_and_exactness(tmp_path):
    from typer.testing import CliRunner

    from surgery.cli import app

    recipe = tmp_path / "r.grow"
    recipe.write_text(textwrap.dedent(MODELS) + "grow S msg(ramp=6)@8steps B\ntrain 20steps on \"c.txt\"\n")
    out = CliRunner().invoke(app, ["plan", str(recipe)]).stdout
    for needle in ("grow S -> B by msg", "[16, 16] x6", "[24, 24] x9", "ramp 6steps",
                   "plain model 6 steps after the growth", "Exact at the growth step"):
        assert needle in out, needle
