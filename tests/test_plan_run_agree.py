"""What `surgery plan` accepts, `surgery run` does: hypothesis writes valid recipes across families,
ops, growth points, objectives and fine-tuning arguments at tiny sizes; each one that plans must
train two optimizer steps per stage and fine-tune one step without an error.

The default suite draws a few examples (derandomized: the same ones every run);
`SURGERY_PROPERTY_EXAMPLES=300 pytest tests/test_plan_run_agree.py` is the long run to do before
changing a registry (docs/families.md).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from surgery import catalog
from surgery.cli import app
from surgery.errors import RecipeError
from surgery.families import FAMILIES
from surgery.plan import plan_file
from tests.finetune_fixtures import write_own_task_files
from tests.fixtures_text import documents

EXAMPLES = int(os.environ.get("SURGERY_PROPERTY_EXAMPLES", "6"))
WORK = Path(tempfile.mkdtemp(prefix="surgery-agree-"))
CORPUS = WORK / "corpus.txt"
CORPUS.write_text("\n".join(documents(120)) + "\n")


def _data_root() -> Path:
    """Fine-tuning files in the shared data's layout, made from the fixtures (no shared data)."""
    root = WORK / "data"
    if not root.exists():
        files = write_own_task_files(WORK / "own")
        (root / "klue-nli").mkdir(parents=True)
        for split in ("train", "dev"):
            with gzip.open(root / "klue-nli" / f"klue-nli-v1.1_{split}.json.gz", "wt", encoding="utf-8") as f:
                f.write(files["nli"].read_text(encoding="utf-8"))
    return root


def _model_line(name: str, family: str, layers: tuple[int, int], width: int, extra: dict) -> str:
    d = FAMILIES[family]
    depth = f"{layers[0]}+{layers[1]}" if len(d.stacks) == 2 and d.has_view else str(layers[0])
    args = dict(layers=depth, d_model=16 * width, heads=2 * width, d_ff=32 * width, vocab=200, **extra)
    if "kv_heads" in d.args:
        args["kv_heads"] = width
    return f"model {name} = {family}(" + ", ".join(f"{k}={v}" for k, v in args.items()) + ")"


@st.composite
def recipes(draw):
    family = draw(st.sampled_from(sorted(FAMILIES)))
    d = FAMILIES[family]
    extra = {}
    if "tie" in d.args:
        extra["tie"] = draw(st.sampled_from(["true", "false"]))
    if "ff" in d.args:
        extra["ff"] = draw(st.sampled_from(["relu", "gated-gelu"]))
    if "max_positions" in d.args:
        extra["max_positions"] = 64
    objectives = [n for n, o in catalog.OBJECTIVES.items() if family in o.families]
    objective = draw(st.sampled_from(objectives))
    layers, width = (1, 1), 1
    lines = [_model_line("M0", family, layers, width, extra)]
    chain = ["M0"]
    n_growths = draw(st.integers(0, 2)) if d.has_view and objective in ("mlm", "clm", "span_corruption") else 0
    point = 0
    for i in range(n_growths):
        op = draw(st.sampled_from(list(catalog.OPS)))
        info = catalog.OPS[op]
        if info.depth:
            layers = (layers[0] + 1, layers[1] + 1)
        if info.width:
            width += 1
        if op == "d" and draw(st.booleans()):
            op = "d(identity)"
        if op == "msg":  # its ramp must fit in the 2-step stage after it
            op = "msg(ramp=2)"
        point += 2
        lines.append(_model_line(f"M{i + 1}", family, layers, width, extra))
        chain += [f"{op}@{point}steps", f"M{i + 1}"]
    steps = point + 2
    obj_args = ""
    if objective == "mlm" and draw(st.booleans()):
        obj_args = f"(rate={draw(st.sampled_from([0.1, 0.15, 0.3]))})"
    lines.append("grow " + " ".join(chain) if len(chain) > 1 else "")
    train_model = "" if len(chain) > 1 else "M0 "
    lines.append(f'train {train_model}{steps}steps on "{CORPUS}" objective {objective}{obj_args}\n'
                 f"    batch_size=2 seq_len=32 val_every={steps}steps")
    tasks = [t for t, info in catalog.TASKS.items() if family in info.families and t == "klue-nli"]
    if tasks:
        epochs = draw(st.sampled_from(["1", "1.0"]))
        lines.append(f"finetune klue-nli(epochs={epochs}, max_examples=4, eval_examples=4, batch_size=2, seq_len=32)")
    return "\n".join(lines) + "\n"


def _check(text: str) -> None:
    folder = Path(tempfile.mkdtemp(dir=WORK))
    recipe = folder / "r.grow"
    recipe.write_text(text)
    try:
        plan_file(recipe)
    except RecipeError:
        return  # refused at plan time: fine (every refusal names FILE:LINE:COL)
    env = {"SURGERY_DATA": str(_data_root())}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        res = CliRunner().invoke(app, ["run", str(recipe), "--out", str(folder / "run"), "--quiet"])
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert res.exit_code == 0, f"plan accepted but run failed:\n{text}\n{res.output}\n{res.exception!r}"
    assert (folder / "run" / "final" / "config.json").exists()
    if "finetune klue-nli" in text:
        scores = json.loads((folder / "run" / "finetune" / "klue-nli" / "scores.json").read_text())
        assert scores, text
    shutil.rmtree(folder, ignore_errors=True)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(recipes())
def test_every_recipe_that_plans_runs(text):
    _check(text)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_default_recipe_runs(family):
    """One recipe per family (its default objective, a growth where it grows), whatever hypothesis drew."""
    d = FAMILIES[family]
    extra = {"max_positions": 64} if "max_positions" in d.args else {}
    lines = [_model_line("A", family, (1, 1), 1, extra)]
    if d.has_view:
        lines += [_model_line("B", family, (2, 2), 2, extra), "grow A dl@2steps B"]
    lines.append(f'train {"" if d.has_view else "A "}4steps on "{CORPUS}"\n    batch_size=2 seq_len=32 val_every=4steps')
    _check("\n".join(lines) + "\n")
