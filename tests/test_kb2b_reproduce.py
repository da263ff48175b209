"""kb2b.reproduce: dependency order, lanes, skip/resume logic (subprocesses faked), and the
recipe -> fine-tuning argument mapping it relies on."""

import json
import threading
from pathlib import Path

import pytest

from kb2b import reproduce as rp
from kb2b.headline import time_to_reach


def fake_plan(tmp_path, waves, lanes=None):
    (tmp_path / "recipes" / "tiny").mkdir(parents=True)
    for job in {j.recipe for w in waves for lane in w for j in lane}:
        (tmp_path / "recipes" / "tiny" / f"{job}.grow").write_text("# fake\n")
    return rp.Plan("tiny", root=tmp_path, lanes=lanes, waves=waves)


@pytest.fixture
def calls(monkeypatch):
    """Replace the subprocesses: record each command, and make `surgery run` leave a summary.json."""
    seen, lock = [], threading.Lock()

    def run_logged(plan, cmd, log):
        with lock:
            seen.append(cmd)
        if cmd[2:4] == ["surgery", "run"]:
            out = Path(cmd[cmd.index("--out") + 1])
            out.mkdir(parents=True, exist_ok=True)
            (out / "summary.json").write_text("{}")
        return 0

    monkeypatch.setattr(rp, "run_logged", run_logged)
    return seen


def started(calls):
    return [Path(c[c.index("--out") + 1]).name for c in calls if c[2:4] == ["surgery", "run"]]


WAVES = [
    [[rp.J("S")], [rp.J("T"), rp.J("T_da_B")]],
    [[rp.J("B")], [rp.J("S_init-a_B", needs=["S"])]],
    [[rp.J("B-seed1", "B", seed=1)], [rp.J("T_init-da_B", needs=["T"])]],
]


def test_every_run_starts_after_the_runs_it_loads_and_seeds_are_passed(tmp_path, calls):
    plan = fake_plan(tmp_path, WAVES)
    assert rp.reproduce(plan, skip_finetune=True) is False  # the fake runs leave no report to write
    order = started(calls)
    assert sorted(order) == sorted(j.name for j in plan.jobs())
    for job in plan.jobs():
        for need in job.needs:
            assert order.index(need) < order.index(job.name)
    # waves: nothing of wave 2 before all of wave 1
    assert max(order.index(n) for n in ("S", "T", "T_da_B")) < min(order.index(n) for n in ("B", "S_init-a_B"))
    seed_cmd = next(c for c in calls if c[2:4] == ["surgery", "run"] and "B-seed1" in c[c.index("--out") + 1])
    assert seed_cmd[seed_cmd.index("--seed") + 1] == "1" and seed_cmd[4].endswith("recipes/tiny/B.grow")
    assert all("--no-finetune" in c for c in calls if c[2:4] == ["surgery", "run"])


def test_one_lane_runs_the_waves_in_order(tmp_path, calls):
    plan = fake_plan(tmp_path, WAVES, lanes=1)
    rp.reproduce(plan, skip_finetune=True)
    assert started(calls) == [j.name for j in plan.jobs()]


def test_finished_runs_are_skipped_and_stopped_ones_resumed(tmp_path, calls):
    plan = fake_plan(tmp_path, WAVES)
    (plan.runs / "S").mkdir(parents=True)
    (plan.runs / "S" / "summary.json").write_text("{}")
    (plan.runs / "B" / "checkpoints").mkdir(parents=True)
    (plan.runs / "B" / "checkpoints" / "latest").write_text("ckpt-40")
    rp.reproduce(plan, skip_finetune=True)
    assert "S" not in started(calls)
    b = next(c for c in calls if c[2:4] == ["surgery", "run"] and c[c.index("--out") + 1].endswith("/B"))
    assert "--resume" in b
    assert not any("--resume" in c for c in calls if c[2:4] == ["surgery", "run"] and not c[c.index("--out") + 1].endswith("/B"))


def test_a_run_whose_source_failed_is_not_started(tmp_path, monkeypatch):
    plan = fake_plan(tmp_path, [[[rp.J("S")]], [[rp.J("S_init-a_B", needs=["S"])]]])
    seen = []
    monkeypatch.setattr(rp, "run_logged", lambda plan, cmd, log: seen.append(cmd) or 1)  # every run fails
    assert rp.reproduce(plan, skip_finetune=True) is False
    assert len(seen) == 1 and seen[0][seen[0].index("--out") + 1].endswith("/S")


def test_dry_run_starts_nothing(tmp_path, calls):
    plan = fake_plan(tmp_path, WAVES)
    rp.reproduce(plan, dry_run=True)
    assert calls == []


def test_finetune_skips_scored_tasks(tmp_path, monkeypatch, calls):
    plan = fake_plan(tmp_path, [[[rp.J("S")]]])
    run = plan.runs / "S"
    (run / "finetune" / "klue-nli").mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    monkeypatch.setattr(rp, "finetune_tasks", lambda plan, job: [("klue-nli", {}), ("news-summ", {})])
    assert rp.finetune_todo(plan, rp.J("S")) == ["klue-nli", "news-summ"]
    (run / "finetune" / "klue-nli" / "scores.json").write_text(json.dumps({"accuracy": 50.0}))
    assert rp.finetune_todo(plan, rp.J("S")) == ["news-summ"]
    assert rp.finetune(plan, rp.J("S")) is True
    assert calls[-1][2:4] == ["kb2b.reproduce", "_finetune"]
    (run / "finetune" / "news-summ").mkdir()
    (run / "finetune" / "news-summ" / "scores.json").write_text("{}")
    n = len(calls)
    assert rp.finetune(plan, rp.J("S")) is True and len(calls) == n  # all scored: nothing started


def test_the_mini_waves_respect_every_recipes_pretrained_checkpoint():
    """Each `pretrained X = ".../<run>/final"` of a mini recipe names a run of an earlier wave."""
    import re

    done: set[str] = set()
    for wave in rp.WAVES:
        for lane in wave:
            for job in lane:
                text = (rp.ROOT / "recipes" / "ko-bert2bert-mini" / f"{job.recipe}.grow").read_text()
                loads = set(re.findall(r'runs/ko-bert2bert-mini/([^/"]+)/final', text))
                assert loads <= done, (job.name, loads - done)
                assert loads == set(job.needs)
        done |= {j.name for lane in wave for j in lane}
    assert {j.name for j in rp.Plan("mini").jobs()} >= set(rp.TABLE2_ORDER)


def test_time_to_reach_interpolates_between_validations():
    curve = [(0.0, 0, 9.0), (10.0, 10, 6.0), (20.0, 20, 4.0)]
    hit = time_to_reach(curve, 5.0)
    assert hit["wall_s"] == 20.0 and hit["step"] == 20 and hit["wall_s_interp"] == pytest.approx(15.0)
    assert time_to_reach(curve, 3.0) is None
    assert time_to_reach(curve, 9.5)["wall_s_interp"] == 0.0


def test_the_finetune_lock_keeps_a_second_process_out(tmp_path):
    import os

    lock = tmp_path / "run" / "finetune" / ".lock"
    assert rp.take_lock(lock) is True and lock.read_text() == str(os.getpid())
    assert rp.take_lock(lock) is False  # held by a live process (us)
    lock.write_text("999999999")  # a process that is gone
    assert rp.take_lock(lock) is True


def test_the_paper_table_has_every_row_the_driver_runs():
    from kb2b.headline import PAPER_TABLE2

    assert list(PAPER_TABLE2) == sorted(rp.TABLE2_ORDER, key=lambda n: PAPER_TABLE2[n][0])
    assert [v[0] for v in PAPER_TABLE2.values()] == list(range(1, 12))
