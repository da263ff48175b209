"""Decoder-only families (GPT-2, Llama with grouped-query attention, tied and untied head): every op
through transformers' forward pass, streaming checkpoints, specs, recipes and the clm objective."""

from __future__ import annotations

import json

import pytest
import torch

from surgery.errors import SurgeryError
from surgery.io import load_checkpoint, save_checkpoint
from surgery.ops import grow_checkpoint, grow_model, plan_checkpoint
from surgery.spec import ModelSpec
from surgery.view import Kind
from tests.tiny import batch, logits, model, rel_change, spec

TOL = 1e-5
CASES = {
    "gpt2": spec("gpt2"),
    "llama-untied": spec("llama", head="untied"),
    "llama-tied": spec("llama", head="tied"),
}
W2 = dict(d_model=32, heads=8, d_ff=64)
W15 = dict(d_model=24, heads=6, d_ff=48)


def _target(s: ModelSpec, **dims) -> ModelSpec:
    if s.family == "llama" and "heads" in dims and "kv_heads" not in dims:
        dims["kv_heads"] = dims["heads"] // s.group_size  # grow kv heads and query heads alike
    return ModelSpec(**{**s.model_dump(), **dims})


def _grow(s, dst, op, options=None, seed=0):
    m = model(s, seed=seed)
    g = grow_model(m, s, dst, op, seed=seed, options=options)
    ids = batch(seed)
    return logits(m, ids), logits(g.model.eval(), ids), g


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("op,dims,options", [
    ("f", W2, None),
    ("l", W2, None),
    ("l", W15, None),
    ("d", dict(layers=4), {"depth": "identity"}),
    ("d", dict(layers=5), {"depth": "identity", "layers": [[0, 0, 1, 1, 1]]}),
    ("dl", dict(layers=3, **W15), None),
])
def test_exact_ops(case, op, dims, options):
    s = CASES[case]
    old, new, _ = _grow(s, _target(s, **dims), op, options)
    assert new.shape == old.shape
    assert rel_change(new, old) < TOL


@pytest.mark.parametrize("kv_heads,heads", [(2, 8), (2, 6), (4, 8), (4, 12)])
def test_gqa_query_heads_follow_their_kv_group(kv_heads, heads):
    """Grow kv heads and the group size independently: each new query head reads a copy of the kv
    head its source query head read, so `l` stays exact (2 kv heads, 4 query heads to start)."""
    s = CASES["llama-untied"]
    dst = ModelSpec(**{**s.model_dump(), **dict(d_model=heads * s.head_dim, heads=heads, kv_heads=kv_heads, d_ff=48)})
    old, new, g = _grow(s, dst, "l")
    assert rel_change(new, old) < TOL
    q = g.plan.rule.maps[Kind.HEADS]
    # query head h' = j' * group' + s' copies a query head of the group of kv head kv_map[j']
    from surgery.ops.width import head_mappings

    qmap, kvmap = head_mappings(s, dst, 0)
    assert torch.equal(qmap.src, q.src)
    group, group2 = s.group_size, dst.group_size
    for h in range(heads):
        assert int(qmap.src[h]) // group == int(kvmap.src[h // group2])


def test_gqa_shrinking_group_is_refused():
    s = CASES["llama-untied"]  # 4 query heads, 2 kv heads
    with pytest.raises(SurgeryError, match="kv groups"):
        grow_model(model(s), s, ModelSpec(**{**s.model_dump(), **dict(d_model=32, heads=8, kv_heads=8, d_ff=64)}), "f")


@pytest.mark.parametrize("case", CASES)
def test_stacking_and_aki_load_and_differ(case):
    s = CASES[case]
    for op, dims in (("a", W2), ("d", dict(layers=4)), ("d", dict(layers=8))):
        old, new, g = _grow(s, _target(s, **dims), op, {"layers": [[0, 1] * 4]} if dims.get("layers") == 8 else None)
        assert torch.isfinite(new).all()
        assert rel_change(new, old) > 1e-3, (op, dims)


@pytest.mark.parametrize("case", CASES)
def test_param_counts_and_config(case):
    s = CASES[case]
    m = model(s)
    assert m.num_parameters() == s.params
    assert ModelSpec.from_hf_config(m.config.to_dict()) == s
    big = _target(s, layers=3, **W15)
    g = grow_model(m, s, big, "dl")
    assert g.model.num_parameters() == big.params


@pytest.mark.parametrize("case", CASES)
def test_streaming_checkpoint_sharded(case, tmp_path):
    """Sharded source -> dl -> sharded output with its index; loads with from_pretrained, exact."""
    s = CASES[case]
    m = model(s)
    save_checkpoint(tmp_path / "src", m, shard_bytes=4096)
    assert (tmp_path / "src" / "model.safetensors.index.json").is_file()
    dst = _target(s, layers=3, **W15)
    cp = plan_checkpoint(tmp_path / "src", dst, "dl")
    assert cp.out_bytes == 4 * dst.params and cp.peak_bytes > 0
    grow_checkpoint(tmp_path / "src", dst, "dl", tmp_path / "out", shard_bytes=8192)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    ck = load_checkpoint(tmp_path / "out")
    assert ck.spec == dst
    grown = ck.model().eval()
    ids = batch(0)
    assert rel_change(logits(grown, ids), logits(m, ids)) < TOL


RECIPE = """
model S = llama(layers=2, d_model=32, heads=4, kv_heads=2, d_ff=64, vocab=300, tie=false)
model B = llama(layers=4, d_model=48, heads=6, kv_heads=2, d_ff=96, vocab=300, tie=false)
grow S dl@50% B
train 10steps on corpus("demo")
    batch_size=2 seq_len=16
"""


def test_recipe_llama_and_gpt2():
    from surgery.plan import build_plan
    from surgery.recipe import parse_recipe

    plan = build_plan(parse_recipe(RECIPE))
    assert plan.models["S"].kv_heads == 2 and plan.models["S"].head == "untied"
    assert plan.train.objective.name == "clm"
    gpt = RECIPE.replace("llama", "gpt2").replace(", kv_heads=2", "").replace(", tie=false", ", max_positions=64")
    plan = build_plan(parse_recipe(gpt))
    assert plan.models["B"].family == "gpt2" and plan.train.objective.name == "clm"
    bad = RECIPE.replace("heads=6, kv_heads=2", "heads=6, kv_heads=6")  # group 2 -> 1 shrinks
    with pytest.raises(Exception, match="query heads per kv head would shrink"):
        build_plan(parse_recipe(bad))


def test_clm_objective():
    import numpy as np

    from surgery.train.objectives import IGNORE, make_objective

    class Tok:
        pad_token_id = 0

    obj = make_objective("clm", {}, Tok(), 8)
    blocks = np.array([[5, 6, 7, 8, 9, 10, 0, 0]])
    out = obj(blocks, np.random.default_rng(0))
    assert out["labels"].tolist() == [[5, 6, 7, 8, 9, 10, IGNORE, IGNORE]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1, 0, 0]]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_surgery_run_clm_with_lossless_growth(tmp_path, family):
    """`surgery run` trains a decoder-only model with clm and grows it by dl mid-run: the validation
    loss right after the growth equals the one right before (exact), and the stages load back."""
    from typer.testing import CliRunner

    from surgery.cli import app
    from tests.fixtures_text import documents

    dims = {"llama": ("kv_heads=2, d_ff=64, tie=false", "kv_heads=2, d_ff=96, tie=false"),
            "gpt2": ("d_ff=64, max_positions=64", "d_ff=96, max_positions=64")}[family]
    (tmp_path / "corpus.txt").write_text("\n".join(documents(200)) + "\n")
    recipe = tmp_path / "tiny.grow"
    recipe.write_text(f"""
model S = {family}(layers=1, d_model=32, heads=4, {dims[0]}, vocab=300)
model B = {family}(layers=2, d_model=48, heads=6, {dims[1]}, vocab=300)
grow S dl@6steps B
train 10steps on "corpus.txt"
    optimizer adamw(lr=3e-3, warmup=2steps)
    batch_size=4 seq_len=32 val_every=3steps
""")
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(recipe), "--out", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    g = next(i for i, r in enumerate(rows) if r.get("event") == "grow")
    before, after = rows[g - 1], rows[g + 1]
    assert before["model"] == "S" and after["model"] == "B"
    assert abs(before["val_loss"] - after["val_loss"]) <= 1e-4
    ck = load_checkpoint(run / "final")
    assert ck.spec.family == family and ck.spec.d_model == 48


def test_grow_cli_dry_run_reads_headers_only(tmp_path, monkeypatch):
    """`surgery grow --dry-run` plans from the headers and prints the memory; no tensor is read."""
    from typer.testing import CliRunner

    from surgery.cli import app
    from surgery.io import Checkpoint

    save_checkpoint(tmp_path / "src", model(CASES["llama-untied"]), shard_bytes=4096)

    def no_reads(self, name):
        raise AssertionError(f"dry run read tensor {name}")

    monkeypatch.setattr(Checkpoint, "get", no_reads)
    to = "layers=3,d_model=24,heads=6,kv_heads=3,d_ff=48"
    result = CliRunner().invoke(app, ["grow", str(tmp_path / "src"), "--op", "dl", "--to", to, "--dry-run"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "memory: about" in result.output and "lm_head.weight" in result.output
    monkeypatch.undo()
    result = CliRunner().invoke(app, ["grow", str(tmp_path / "src"), "--op", "dl", "--to", to,
                                      "--out", str(tmp_path / "out"), "--no-probe"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "function moved" not in result.output
    assert load_checkpoint(tmp_path / "out").spec.kv_heads == 3
