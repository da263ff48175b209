"""Runs a researcher can trust and watch: the same inputs give the same run, nothing is lost
without being asked, a stop keeps what was done, and the run says what happens as it happens.

Each test drives the real command line (a subprocess, or typer's runner where a test must reach
inside the process) on tiny models and reads what a user would read: exit codes, messages, files.
"""

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file
from typer.testing import CliRunner

from surgery.cli import app
from tests.fixtures_text import documents
from tests.test_run import metrics, write_recipe

ENV = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")


def surgery(*args: str, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "surgery", *args], env=env or ENV, capture_output=True, text=True,
                          **kw)


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return x.keys() == y.keys() and all((x[k] == y[k]).all() for k in x)


def without_wall(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# -- same inputs, same run -------------------------------------------------------------------

def test_tokenizer_training_is_byte_identical_in_two_processes(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(documents(300)) + "\n")
    code = ("import sys; from pathlib import Path; from surgery.train.corpus import resolve_corpus, load_documents; "
            "from surgery.train.tokenizer import get_tokenizer; c = resolve_corpus(sys.argv[1], None); "
            "docs, _ = load_documents(c, seed=0, val_fraction=0.005); t = get_tokenizer(c, docs, sys.argv[2], 300); "
            "print(t.name_or_path)")
    folders = {}
    for family in ("t5", "bert"):
        for i in range(2):  # separate processes, separate caches: nothing is shared but the corpus
            env = dict(ENV, SURGERY_CACHE=str(tmp_path / f"cache{family}{i}"))
            out = subprocess.run([sys.executable, "-c", code, str(corpus), family], env=env, capture_output=True,
                                 text=True, check=True)
            folders[family, i] = Path(out.stdout.strip().splitlines()[-1])
        a, b = folders[family, 0], folders[family, 1]
        assert a.name == b.name  # the same cache key
        assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
        assert len(json.loads((a / "tokenizer.json").read_text())["model"]["vocab"]) > 100


INIT_RECIPE = """
model T = t5(layers=1+1, d_model=32, heads=4, d_ff=64, vocab=300)
model S = t5(layers=2+2, d_model=32, heads=4, d_ff=64, vocab=300)
pretrained T = "pretrained-T"
grow T init-d S
train 12steps on "corpus.txt"
    objective span_corruption(rate=0.15, mean_span=3)
    optimizer adamw(lr=3e-3, warmup=2steps)
    batch_size=4 seq_len=48 val_every=4steps
"""


def test_two_runs_of_an_init_recipe_and_their_fine_tuning_are_bit_identical(tmp_path):
    """The first model comes from a checkpoint (no model is built, so nothing seeded the global
    RNG before): dropout must still draw the same numbers in both runs."""
    from surgery.families import build_model
    from surgery.plan import plan_file
    from tests.finetune_fixtures import write_own_task_files

    own = write_own_task_files(tmp_path / "own")
    (tmp_path / "corpus.txt").write_text("\n".join(documents(300)) + "\n")
    recipe = tmp_path / "init.grow"
    recipe.write_text(INIT_RECIPE)
    spec = plan_file(recipe).models["T"]
    build_model(spec, seed=5).save_pretrained(tmp_path / "pretrained-T")
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        done = surgery("run", str(recipe), "--out", str(run), "--quiet", "--seed", "11")
        assert done.returncode == 0, done.stderr
    a, b = runs
    rows = metrics(a)
    assert len([r for r in rows if r.get("train_loss") is not None]) >= 3
    assert without_wall(rows) == without_wall(metrics(b))
    assert same_weights(a / "final", b / "final")
    for run in runs:
        done = surgery("finetune", str(run / "final"), "--task", "klue-nli", "--train-data", str(own["nli"]),
                       "--eval-data", str(own["nli"]), "--epochs", "2", "--batch-size", "4", "--save-model",
                       "--out", str(run / "ft"))
        assert done.returncode == 0, done.stderr
    assert same_weights(a / "ft/klue-nli/model", b / "ft/klue-nli/model")
    sa, sb = (json.loads((r / "ft/klue-nli/scores.json").read_text()) for r in runs)
    assert sa["scores"] == sb["scores"] and sa["train"]["final_loss"] == sb["train"]["final_loss"]


# -- nothing is lost without being asked ------------------------------------------------------

def _wait_for_step(run: Path, proc: subprocess.Popen, step: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        log = run / "metrics.jsonl"
        if log.exists() and any(json.loads(l).get("step", 0) >= step for l in log.read_text().splitlines() if l):
            return
        time.sleep(0.02)
    raise AssertionError(f"the run did not reach step {step} (exit {proc.poll()})")


def test_sigint_saves_a_checkpoint_a_rerun_is_refused_and_resume_loses_no_step(tmp_path):
    recipe = write_recipe(tmp_path, steps=30, extra="optimizer_on_grow=grow")
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert surgery("run", str(recipe), "--out", str(full)).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "surgery", "run", str(recipe), "--out", str(cut)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_step(cut, proc, 18)  # a line past 18 (the validation at 20): the stop lands at or after it
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    state = json.loads((cut / "checkpoints" / (cut / "checkpoints" / "latest").read_text() / "trainer_state.json")
                       .read_text())
    assert state["step"] >= 18  # saved at the stop, not only at the last validation (15)
    assert f"at step {state['step']}, checkpoint saved" in err and "--resume" in err and "Traceback" not in err
    assert "━" not in out and "val loss" in out  # not a terminal: event lines, no bars

    before = tree_digest(cut / "checkpoints")
    again = surgery("run", str(recipe), "--out", str(cut))
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [again.stderr.strip()]  # one line
    assert f"unfinished run (stopped at step {state['step']})" in again.stderr and "--resume" in again.stderr
    assert "--overwrite" in again.stderr
    assert tree_digest(cut / "checkpoints") == before  # untouched

    resumed = surgery("run", str(recipe), "--out", str(cut), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert same_weights(full / "final", cut / "final")
    assert without_wall(metrics(full)) == without_wall(metrics(cut))  # every step and validation, once


def test_a_finished_run_is_replaced_only_with_overwrite_and_then_entirely(tmp_path):
    recipe = write_recipe(tmp_path, steps=10, d="4steps", w_at="8steps")
    run = tmp_path / "run"
    assert surgery("run", str(recipe), "--out", str(run), "--quiet", "--no-finetune").returncode == 0
    stale = run / "finetune" / "klue-nli" / "scores.json"  # as a fine-tuning of the old model left it
    stale.parent.mkdir(parents=True)
    stale.write_text('{"accuracy": 99.0}')
    refused = surgery("run", str(recipe), "--out", str(run), "--quiet")
    assert refused.returncode == 2 and "holds a finished run" in refused.stderr and "--overwrite" in refused.stderr
    assert stale.exists()
    replaced = surgery("run", str(recipe), "--out", str(run), "--quiet", "--no-finetune", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert not stale.exists() and (run / "summary.json").exists()


def test_resume_where_there_is_no_checkpoint_says_so(tmp_path):
    recipe = write_recipe(tmp_path)
    done = surgery("run", str(recipe), "--out", str(tmp_path / "never"), "--resume")
    assert done.returncode == 2 and "no complete checkpoint" in done.stderr and "without --resume" in done.stderr
    assert not (tmp_path / "never" / "metrics.jsonl").exists()


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    recipe = write_recipe(tmp_path, steps=30)
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "surgery", "run", str(recipe), "--out", str(run), "--quiet"],
                             env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_step(run, first, 6)  # past the first checkpoint (5)
        second = surgery("run", str(recipe), "--out", str(run), "--quiet", "--overwrite")
        assert second.returncode == 2
        assert f"in use by another `surgery run` (pid {first.pid})" in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The killed run's lock is stale: the kernel dropped it with the process, so it is taken over.
    third = surgery("run", str(recipe), "--out", str(run), "--quiet", "--resume")
    assert third.returncode == 0, third.stderr


# -- in-process: a loss that diverges, a disk that refuses ---------------------------------------

def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import torch

    from surgery.train.loop import Trainer

    real = Trainer.loss
    calls = {"train": 0}

    def diverging(self, model, batch, train=True):
        loss, count = real(self, model, batch, train)
        if train:
            calls["train"] += 1
            if calls["train"] > 12:  # the 13th step's loss, as an exploding run would give
                loss = loss * float("nan")
        return loss, count

    monkeypatch.setattr(Trainer, "loss", diverging)
    recipe = write_recipe(tmp_path)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(recipe), "--out", str(run), "--quiet"])
    assert result.exit_code == 2, result.output
    assert "the training loss became nan at step 13 (S)" in result.output
    assert f"last good checkpoint is {run / 'checkpoints' / 'ckpt-00000010'} (step 10)" in result.output
    assert "Traceback" not in result.output
    from surgery.compress import load_model

    model = load_model(run / "checkpoints" / "ckpt-00000010" / "model")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    monkeypatch.setattr(Trainer, "loss", real)
    resumed = CliRunner().invoke(app, ["run", str(recipe), "--out", str(run), "--quiet", "--resume"])
    assert resumed.exit_code == 0, resumed.output


def test_a_checkpoint_that_cannot_be_written_keeps_the_previous_one(tmp_path, monkeypatch):
    from surgery.train import checkpoint

    real = checkpoint.save_file

    def full_disk(tensors, path, *a, **kw):
        if "ckpt-00000010" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(tensors, path, *a, **kw)

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    recipe = write_recipe(tmp_path, steps=24)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(recipe), "--out", str(run), "--quiet", "--no-finetune"],
                                env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert "warning: checkpoint at step 10 not written (No space left on device:" in result.output
    assert "the previous one (ckpt-00000008) is kept" in result.output
    assert not list((run / "checkpoints").glob(".ckpt-*"))  # the partial folder is gone

    # Stopped right after the failed write: the checkpoint on disk is the previous one, complete.
    from surgery.plan import plan_file
    from surgery.train.loop import Trainer
    from surgery.train.schedule import compile_plan

    segments, settings = compile_plan(plan_file(recipe))
    cut = tmp_path / "cut"
    Trainer(segments, settings, cut, run_name="t", quiet=True, corpus_base=tmp_path, stop_after_step=10).run()
    assert (cut / "checkpoints" / "latest").read_text() == "ckpt-00000008"
    assert json.loads((cut / "checkpoints" / "ckpt-00000008" / "trainer_state.json").read_text())["step"] == 8


# -- a run you can watch ------------------------------------------------------------------------

def test_tensorboard_holds_the_validation_losses_growths_and_stages(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = write_recipe(tmp_path, extra="report_to=tensorboard")
    run = tmp_path / "run"
    done = surgery("run", str(recipe), "--out", str(run), "--no-finetune")
    assert done.returncode == 0, done.stderr
    assert "grow d: T -> S" in done.stdout and "stage 1 (S) done" in done.stdout
    events = list((run / "logs").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    logged = sorted((e.step, e.value) for e in acc.Scalars("val_loss"))
    expected = sorted((r["step"], r["val_loss"]) for r in metrics(run) if r.get("val_loss") is not None)
    assert len(expected) >= 6 and [s for s, _ in logged] == [s for s, _ in expected]
    assert all(abs(a - b) <= 1e-5 * abs(b) for (_, a), (_, b) in zip(logged, expected))  # float32 in the file
    texts = set(acc.Tags()["tensors"])
    assert any("event/grow" in t for t in texts) and any("event/stage_end" in t for t in texts)

    none = surgery("run", str(recipe), "--out", str(tmp_path / "plain"), "--no-finetune", "--report-to", "none")
    assert none.returncode == 0 and not (tmp_path / "plain" / "logs").exists()
    bad = surgery("run", str(recipe), "--out", str(tmp_path / "bad"), "--report-to", "comet")
    assert bad.returncode == 2 and "report_to must be one of" in bad.stderr


def test_report_fits_80_columns_without_cutting_names_or_losses(tmp_path):
    names = ["ko-bert2bert-mini_T_init-da_B", "ko-bert2bert-mini_S_a_B", "B"]
    for i, name in enumerate(names):
        run = tmp_path / name
        (run / "finetune" / "klue-nli").mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({"wall_s": 3600.0 * (i + 1), "steps": 100, "tokens": 10_000,
                                                      "final_val_loss": 2.123456 + i}))
        (run / "metrics.jsonl").write_text(json.dumps({"stage": 0, "model": "B", "step": 100, "wall_s": 3600.0,
                                                       "val_loss": 2.123456 + i, "tokens": 10_000}) + "\n")
        (run / "finetune" / "klue-nli" / "scores.json").write_text(json.dumps({"scores": {"accuracy": 61.25 + i}}))
    done = surgery("report", *(str(tmp_path / n) for n in names), "--out", str(tmp_path / "rep"),
                   env=dict(ENV, COLUMNS="80"))
    assert done.returncode == 0, done.stderr
    lines = [l for l in done.stdout.splitlines() if not l.startswith("wrote ")]  # the table, not the paths
    assert max(len(l) for l in lines) <= 80 and "…" not in done.stdout
    for i, name in enumerate(names):
        row = next(l for l in lines if l.strip().startswith(name + " "))
        assert f"{2.123456 + i:.4f}" in row and f"{61.25 + i:.2f}" in row
    assert "Ext EM" not in done.stdout and "ROUGE-L" not in done.stdout  # empty in every run: left out
    md = (tmp_path / "rep" / "report.md").read_text().splitlines()
    assert md[0].count("|") == 13 and "ROUGE-L" in md[0]  # Markdown keeps all of Table 2's columns


def test_ckpt_every_is_a_recipe_setting_the_loop_follows(tmp_path):
    from surgery.plan import plan_file
    from surgery.train.loop import Trainer
    from surgery.train.schedule import compile_plan

    recipe = write_recipe(tmp_path, extra="ckpt_every=3steps")
    segments, settings = compile_plan(plan_file(recipe))
    assert settings.ckpt_every == 3 and settings.val_every == 5
    cut = tmp_path / "cut"
    Trainer(segments, settings, cut, run_name="t", quiet=True, corpus_base=tmp_path, stop_after_step=7).run()
    assert (cut / "checkpoints" / "latest").read_text() == "ckpt-00000006"  # 6: a ckpt_every step, not a validation
    bad = write_recipe(tmp_path, extra="ckpt_every=1ep")
    done = surgery("plan", str(bad))
    assert done.returncode == 2 and "ckpt_every is counted in steps" in done.stderr
