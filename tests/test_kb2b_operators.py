"""kb2b.operators: the benchmark's recipes plan, its runs start after their sources, and the
measurement (target, interpolated reach, seed statistics) gives the numbers worked out by hand."""

import json
import math
import threading
from pathlib import Path

import pytest

from kb2b import operators as ops
from surgery.plan import plan_file


@pytest.fixture(scope="module")
def mini():
    return ops.SCALES["mini"]()


def test_every_run_of_both_scales_plans(tmp_path, mini):
    for sc in (mini, ops.SCALES["paper"]()):
        todo = ops.jobs(sc, tmp_path, "t5:a")
        (tmp_path / "t5-S" / "final").mkdir(parents=True, exist_ok=True)
        (tmp_path / "bert-S" / "final").mkdir(parents=True, exist_ok=True)
        (tmp_path / "_recipes").mkdir(exist_ok=True)
        labels = {j.op for j in todo}
        assert {"scratch", "a", "f", "l", "da", "df", "dl"} <= labels
        for job in todo:
            if job.op.split("@")[0] in ("msg", "ligo") and job.op not in ops_in_registry():
                continue
            f = tmp_path / "_recipes" / f"{job.name}.grow"
            f.write_text(job.recipe)
            plan = plan_file(f)
            assert plan.train.budget.value == sc.steps
            assert plan.train.val_batches == sc.val_batches


def ops_in_registry():
    from surgery.catalog import OPS

    return set(OPS)


def test_seeds_per_op_and_sources(tmp_path, mini):
    todo = ops.jobs(mini, tmp_path, "t5:a")
    count = {}
    for j in todo:
        count[(j.pair, j.op)] = count.get((j.pair, j.op), 0) + 1
    assert count[("t5", "scratch")] == count[("t5", "a")] == mini.headline_seeds >= 5
    assert count[("bert", "scratch")] == count[("bert", "da")] == mini.seeds
    names = [j.name for j in todo]
    # the headline pairs come first, seed by seed, scratch beside the op
    assert names[2:2 + 2 * mini.headline_seeds] == [f"t5-{op}-s{k}" for k in range(mini.headline_seeds) for op in ("scratch", "a")]
    assert all(count[(p, op)] >= 3 for (p, op) in count if op not in ("S",) and not op.startswith("sweep"))
    for j in todo:
        if j.op not in ("S", "scratch") and not j.op.startswith("sweep"):
            assert j.needs == (f"{j.pair}-S",) and f'pretrained S = "../{j.pair}-S/final"' in j.recipe
    sweep = [j for j in todo if j.op.startswith("sweep")]
    assert len(sweep) == len(mini.sweep) * mini.sweep_seeds and all(not j.needs for j in sweep)
    assert "grow S a@60steps B" in next(j.recipe for j in sweep if j.op == "sweep-a@0.1")


def test_lanes_start_runs_after_their_sources_and_skip_those_of_a_failed_one(tmp_path, mini, monkeypatch):
    bench = ops.Bench(mini, root=tmp_path, lanes=2)
    started, lock = [], threading.Lock()

    def run_one(job, dry_run=False):
        with lock:
            started.append(job.name)
        if job.name == "bert-S":
            return False
        d = bench.runs / job.name
        d.mkdir(parents=True)
        (d / "summary.json").write_text("{}")
        return True

    monkeypatch.setattr(bench, "run_one", run_one)
    todo = ops.jobs(mini, bench.runs, None)
    assert bench.run_all(todo) is False
    assert not any(n.startswith("bert-") and n not in ("bert-S",) and "scratch" not in n for n in started)
    for j in todo:
        if j.name in started:
            for need in j.needs:
                assert started.index(need) < started.index(j.name)
    assert "t5-a-s4" in started and "bert-scratch-s2" in started


def test_reach_interpolates_between_validations():
    curve = [(0, 0.0, 8.0), (10, 5.0, 6.0), (20, 10.0, 4.0)]
    assert ops.reach(curve, 5.0) == (15.0, 7.5)
    assert ops.reach(curve, 6.0) == (10.0, 5.0)
    assert ops.reach(curve, 3.9) is None
    assert ops.reach([(0, 0.0, 1.0)], 2.0) == (0.0, 0.0)


def test_summary_has_the_t_interval():
    s = ops.summary([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["sd"] == 1.0
    assert s["ci95"] == pytest.approx(4.303 / math.sqrt(3))
    assert ops.summary([2.0])["ci95"] is None and ops.summary([])["n"] == 0


def _fake_run(root: Path, name: str, curve, steps: int, wall: float):
    d = root / name
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text("\n".join(json.dumps({"step": s, "wall_s": w, "val_loss": v}) for s, w, v in curve))
    (d / "summary.json").write_text(json.dumps({"steps": steps, "wall_s": wall}))


def test_measure_against_the_tail_mean_of_the_same_seed(tmp_path, mini):
    bench = ops.Bench(mini, root=tmp_path)
    r = bench.runs
    _fake_run(r, "t5-S", [(0, 0, 9.0), (10, 1, 7.0), (20, 2, 7.0), (30, 3, 7.0)], 30, 3)
    # scratch seed 0: tail mean of the last 3 = 5.0; seed 1: 6.0
    _fake_run(r, "t5-scratch-s0", [(0, 0, 9.0), (100, 10, 6.0), (200, 20, 5.0), (300, 30, 4.0)], 300, 40.0)
    _fake_run(r, "t5-scratch-s1", [(0, 0, 9.0), (100, 10, 7.0), (200, 20, 6.0), (300, 30, 5.0)], 300, 40.0)
    # grown: reaches 5.0 half way between steps 50 and 100 (75), 6.0 at step 50
    _fake_run(r, "t5-a-s0", [(0, 0, 7.0), (50, 4, 6.0), (100, 8, 4.0), (300, 30, 3.0)], 300, 30.0)
    _fake_run(r, "t5-a-s1", [(0, 0, 7.0), (50, 4, 6.0), (100, 8, 4.0), (300, 30, 3.0)], 300, 30.0)
    m = ops.measure(bench)
    a = m["pairs"]["t5"]["ops"]["a"]
    assert a["steps_pct"]["values"] == [25.0, pytest.approx(50 / 3)]
    # the fake runs' summaries were written at once: they trained side by side
    assert a["wall_pct"]["values"] == [15.0, 10.0]
    assert m["pairs"]["t5"]["ops"]["scratch"]["scratch_beats_small_by"]["values"] == [2.0, 1.0]
    # paired against a on the same seed: l reaches the target at step 100 of 300, a at 75
    _fake_run(r, "t5-l-s0", [(0, 0, 7.0), (50, 4, 6.0), (150, 12, 4.0), (300, 30, 3.0)], 300, 30.0)
    m = ops.measure(bench)
    assert m["pairs"]["t5"]["paired"]["l"]["values"] == [pytest.approx(100 / 3 - 25)]
    md = ops.to_markdown(m)
    assert "| a | 2/2 |" in md and "t5-a-s0 | 5.0000 |" in md
    # a run that trained at another time keeps its step share, not its wall share
    import os

    os.utime(r / "t5-a-s1" / "summary.json", (1e9, 1e9))
    a = ops.measure(bench)["pairs"]["t5"]["ops"]["a"]
    assert a["wall_pct"]["values"] == [15.0] and len(a["steps_pct"]["values"]) == 2


@pytest.mark.parametrize("args,says", [(["--pairs", "bart"], "--pairs: unknown bart"),
                                       (["--ops", "msg,lgo"], "--ops: unknown lgo"),
                                       (["--sweep", "t5:z"], "the t5 pair has no op z"),
                                       (["--sweep", "gpt:a"], "--sweep: unknown gpt")])
def test_a_misspelt_selection_is_refused_not_ignored(tmp_path, capsys, args, says):
    with pytest.raises(SystemExit) as e:
        ops.main(["mini", *args, "--dry-run", "--root", str(tmp_path)])
    assert e.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
