"""`surgery run` end to end on tiny models: stages, growth mid-run, resume after SIGKILL, bad data."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from surgery.cli import app
from tests.fixtures_text import documents

RECIPE = """
model T = t5(layers=1+1, d_model=32, heads=4, d_ff=64, vocab=300)
model S = t5(layers=2+2, d_model=32, heads=4, d_ff=64, vocab=300)
model B = t5(layers=2+2, d_model=64, heads=8, d_ff=128, vocab=300)
grow T d@{d} S {w}@{w_at} B
train {steps}steps on "corpus.txt"
    objective span_corruption(rate=0.15, mean_span=3)
    optimizer adamw(lr=3e-3, warmup=4steps)
    batch_size=4 seq_len=48 val_every=5steps {extra}
"""


def write_recipe(folder: Path, *, d="8steps", w="l", w_at="16steps", steps=24, extra="") -> Path:
    (folder / "corpus.txt").write_text("\n".join(documents(300)) + "\n")
    recipe = folder / "tiny.grow"
    recipe.write_text(RECIPE.format(d=d, w=w, w_at=w_at, steps=steps, extra=extra))
    return recipe


def metrics(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("width_op", ["l", "f"])
def test_three_stage_run_and_lossless_growth_keeps_validation_loss(tmp_path, width_op):
    recipe = write_recipe(tmp_path, w=width_op)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(recipe), "--out", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    rows = metrics(run)
    assert {r["model"] for r in rows} == {"T", "S", "B"}
    grows = [i for i, r in enumerate(rows) if r.get("event") == "grow"]
    assert [rows[i]["op"] for i in grows] == ["d", width_op]
    # The validation line just before the width growth (end of S) and just after (start of B).
    before, after = rows[grows[1] - 1], rows[grows[1] + 1]
    assert before["model"] == "S" and after["model"] == "B" and before["step"] == after["step"] == 16
    assert abs(before["val_loss"] - after["val_loss"]) <= 1e-4
    for key in ("stage", "model", "step", "tokens", "wall_s", "train_loss"):
        assert all(key in r for r in rows if "event" not in r)
    for folder in ("stages/0-T", "stages/1-S", "stages/2-B", "final"):
        assert (run / folder / "config.json").exists() and (run / folder / "tokenizer.json").exists()
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(run / "final")
    assert model.config.d_model == 64 and model.config.num_layers == 2
    assert len(AutoTokenizer.from_pretrained(run / "final")) <= 300
    assert (run / "curves.png").stat().st_size > 0 and (run / "plan.json").exists()


def test_growth_that_is_not_lossless_changes_validation_loss(tmp_path):
    recipe = write_recipe(tmp_path, w="a")
    run = tmp_path / "run"
    assert CliRunner().invoke(app, ["run", str(recipe), "--out", str(run), "--quiet"]).exit_code == 0
    rows = metrics(run)
    g = [i for i, r in enumerate(rows) if r.get("event") == "grow"][1]
    assert abs(rows[g - 1]["val_loss"] - rows[g + 1]["val_loss"]) > 1e-3


def _run_cmd(recipe, out, *extra):
    return [sys.executable, "-m", "surgery", "run", str(recipe), "--out", str(out), "--quiet", *extra]


def test_resume_after_sigkill_gives_the_uninterrupted_weights(tmp_path):
    # Optimizer state grows with the weights here, so the checkpoint after growth holds grown state.
    recipe = write_recipe(tmp_path, steps=30, extra="optimizer_on_grow=grow")
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    full = tmp_path / "full"
    subprocess.run(_run_cmd(recipe, full), check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_run_cmd(recipe, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill once training is past its first checkpoints and into the grown model, before the end.
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        log = killed / "metrics.jsonl"
        if log.exists() and any(json.loads(l).get("step", 0) >= 22 for l in log.read_text().splitlines() if l):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists()
    subprocess.run(_run_cmd(recipe, killed, "--resume"), check=True, env=env, capture_output=True)
    a = load_file(full / "final" / "model.safetensors")
    b = load_file(killed / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]
    assert strip(metrics(full)) == strip(metrics(killed))


def test_missing_or_corrupt_data_is_one_clear_line(tmp_path):
    recipe = write_recipe(tmp_path)
    (tmp_path / "corpus.txt").unlink()
    result = CliRunner().invoke(app, ["run", str(recipe), "--out", str(tmp_path / "r"), "--quiet"])
    assert result.exit_code == 2 and "tiny.grow:6:18: error: corpus 'corpus.txt' not found" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()  # refused before writing
    bad = tmp_path / "corpus.txt.gz"
    bad.write_bytes(b"not gzip at all")
    recipe.write_text(recipe.read_text().replace('"corpus.txt"', '"corpus.txt.gz"'))
    result = CliRunner().invoke(app, ["run", str(recipe), "--out", str(tmp_path / "r"), "--quiet"])
    assert result.exit_code == 2 and "cannot read corpus" in result.output


def test_resume_without_a_checkpoint_says_so(tmp_path):
    recipe = write_recipe(tmp_path)
    (tmp_path / "r" / "checkpoints").mkdir(parents=True)
    result = CliRunner().invoke(app, ["run", str(recipe), "--out", str(tmp_path / "r"), "--resume", "--quiet"])
    assert result.exit_code == 2 and "no complete checkpoint" in result.output


def test_grown_optimizer_state_is_per_parameter(tmp_path):
    """AdamW advances each parameter's step in place: after growth every parameter keeps its own."""
    import torch

    from surgery.families import build_model
    from surgery.ops import grow_model
    from surgery.spec import ModelSpec
    from surgery.train import checkpoint as ckpt
    from surgery.train.loop import make_optimizer
    from surgery.train.schedule import RunSettings

    small = ModelSpec(family="t5", layers=1, decoder_layers=1, d_model=16, heads=2, d_ff=32, vocab=64)
    big = small.model_copy(update={"d_model": 32, "heads": 4, "d_ff": 64})
    model = build_model(small, seed=0)
    opt = make_optimizer(model, RunSettings())
    batch = {"input_ids": torch.randint(3, 64, (2, 8)), "labels": torch.randint(3, 64, (2, 5))}
    model(**batch).loss.backward()
    opt.step()
    growth = grow_model(model, small, big, "l", seed=0)
    new_opt = make_optimizer(growth.model, RunSettings())
    ckpt.load_optimizer_state(new_opt, growth.model, growth.grow_optimizer_state(ckpt.optimizer_state_by_name(opt, model)))
    growth.model(**batch).loss.backward()
    new_opt.step()
    steps = {float(s["step"]) for s in new_opt.state.values() if "step" in s}
    assert steps <= {1.0, 2.0} and 2.0 in steps


@pytest.mark.parametrize("stop_at", [8, 24])
def test_resume_from_a_segment_end_or_the_last_step(tmp_path, stop_at):
    """A stop right after a segment's last checkpoint (before growth, or before the final save)."""
    from surgery.plan import plan_file
    from surgery.train.loop import Trainer
    from surgery.train.schedule import compile_plan

    recipe = write_recipe(tmp_path)
    segments, settings = compile_plan(plan_file(recipe))
    full, cut = tmp_path / "full", tmp_path / "cut"
    Trainer(segments, settings, full, run_name="t", quiet=True, corpus_base=tmp_path).run()
    Trainer(segments, settings, cut, run_name="t", quiet=True, corpus_base=tmp_path, stop_after_step=stop_at).run()
    assert not (cut / "final").exists()
    Trainer(segments, settings, cut, run_name="t", quiet=True, corpus_base=tmp_path, resume=True).run()
    a = load_file(full / "final" / "model.safetensors")
    b = load_file(cut / "final" / "model.safetensors")
    assert all((a[k] == b[k]).all() for k in a)
    assert sorted(p.name for p in (cut / "stages").iterdir()) == ["0-T", "1-S", "2-B"]


def test_seed_option_overrides_the_training_seed_but_keeps_the_validation_batches(tmp_path):
    recipe = write_recipe(tmp_path)
    runs = {}
    for name, extra in (("default", []), ("seed0", ["--seed", "0"]), ("seed3", ["--seed", "3"])):
        runs[name] = tmp_path / name
        result = CliRunner().invoke(app, ["run", str(recipe), "--out", str(runs[name]), "--quiet", *extra])
        assert result.exit_code == 0, result.output
    summary = {k: json.loads((v / "summary.json").read_text()) for k, v in runs.items()}
    assert summary["default"]["settings"]["seed"] == 0 and summary["default"]["settings"]["val_seed"] is None
    assert summary["seed3"]["settings"]["seed"] == 3 and summary["seed3"]["settings"]["val_seed"] == 0
    losses = {k: [r["train_loss"] for r in metrics(v) if r.get("train_loss") is not None] for k, v in runs.items()}
    assert losses["seed0"] == losses["default"]  # --seed equal to the recipe's changes nothing
    assert losses["seed3"] != losses["default"]

    # The validation batches are the recipe's whatever --seed says.
    from dataclasses import replace

    from surgery.plan import plan_file
    from surgery.train.loop import Trainer
    from surgery.train.schedule import compile_plan

    segments, settings = compile_plan(plan_file(recipe))
    batches = []
    for s in (settings, replace(settings, seed=3, val_seed=0)):
        trainer = Trainer(segments, s, tmp_path / "x", run_name="x", quiet=True, corpus_base=tmp_path)
        trainer.prepare_data()
        batches.append(trainer.val)
    assert len(batches[0]) == len(batches[1]) > 0
    for a, b in zip(*batches):
        assert all((a[k] == b[k]).all() for k in a)
