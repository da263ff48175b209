"""Every shipped recipe plans, and its parameter counts are what transformers builds."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    AlbertConfig,
    AlbertForMaskedLM,
    BertConfig,
    BertForMaskedLM,
    T5Config,
    T5ForConditionalGeneration,
)
from typer.testing import CliRunner

from surgery.cli import app
from surgery.plan import GrowStage, Point, TrainStage, plan_file
from surgery.plan.export import plan_json
from surgery.shapes import tensor_groups

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").rglob("*.grow"))
TABLE2 = [
    "T", "S", "S_a_B", "T_d_S_a_B", "T_da_B", "B", "S_init-a_B_28000steps",
    "T_init-d_S_a_B", "S_init-f_B", "S_init-a_B", "T_init-da_B",
]
CLASSES = {"t5": (T5Config, T5ForConditionalGeneration), "bert": (BertConfig, BertForMaskedLM),
           "albert": (AlbertConfig, AlbertForMaskedLM)}


def test_all_table2_rows_exist_at_both_scales():
    for folder in ("ko-bert2bert", "ko-bert2bert-mini"):
        assert sorted(p.stem for p in (ROOT / "recipes" / folder).glob("*.grow")) == sorted(TABLE2)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_recipe_plans_and_json_is_one_object(path):
    result = CliRunner().invoke(app, ["plan", str(path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["stages"] and data["models"]
    for name, model in data["models"].items():
        cfg_cls, _ = CLASSES[model["family"]]
        config = cfg_cls(**model["hf_config"])
        assert config.d_model if model["family"] == "t5" else config.hidden_size
    human = CliRunner().invoke(app, ["plan", str(path)])
    assert human.exit_code == 0, human.output
    assert "stages" in human.stdout


def _specs(paths):
    out = {}
    for path in paths:
        for spec in plan_file(path).models.values():
            out[spec.describe() + spec.ff + spec.head] = spec
    return list(out.values())


# tiny models are built for real; paper-size ones on the meta device (no memory)
SMALL = [s for s in _specs(RECIPES) if s.params < 5_000_000]
PAPER = [s for s in _specs(RECIPES) if s.params >= 5_000_000]


@pytest.mark.parametrize("spec", SMALL, ids=lambda s: s.describe())
def test_small_recipe_models_match_transformers(spec):
    cfg_cls, model_cls = CLASSES[spec.family]
    model = model_cls(cfg_cls(**spec.hf_config()))
    assert model.num_parameters() == spec.params == sum(g.params for g in tensor_groups(spec))


@pytest.mark.parametrize("spec", PAPER, ids=lambda s: s.describe())
def test_paper_size_models_match_transformers_on_meta(spec):
    cfg_cls, model_cls = CLASSES[spec.family]
    with torch.device("meta"):
        model = model_cls(cfg_cls(**spec.hf_config()))
    assert model.num_parameters() == spec.params == sum(g.params for g in tensor_groups(spec))


def test_paper_sizes_are_table1():
    plan = plan_file(ROOT / "recipes/ko-bert2bert/T_d_S_a_B.grow")
    got = {n: (s.layers_text(), s.d_model, s.heads, s.d_ff) for n, s in plan.models.items()}
    assert got == {"T": ("6+6", 512, 8, 1024), "S": ("12+12", 512, 8, 1024), "B": ("12+12", 768, 12, 3072)}
    assert plan.train.val_every == 1000 and plan.train.budget == Point(value=5, unit="ep")
    assert plan.train.objective.params == {"rate": 0.15, "mean_span": 3}


def test_table2_schedule_semantics():
    plan = plan_file(ROOT / "recipes/ko-bert2bert/T_d_S_a_B.grow")  # 1-1-3
    kinds = [(s.kind, getattr(s, "model", None) or (s.from_model, s.to_model)) for s in plan.stages]
    assert kinds == [("train", "T"), ("grow", ("T", "S")), ("train", "S"), ("grow", ("S", "B")), ("train", "B")]
    t, _, s, _, b = plan.stages
    assert (t.start.value, t.end.value, s.start.value, s.end.value, b.start.value, b.end) == (0, 1, 1, 2, 2, None)

    plan = plan_file(ROOT / "recipes/ko-bert2bert/T_init-d_S_a_B.grow")  # 2-3, T pretrained
    grow = plan.stages[0]
    assert isinstance(grow, GrowStage) and grow.init and grow.op == "d" and grow.at.value == 0
    assert plan.checkpoints["T"] == str((ROOT / "runs/ko-bert2bert/T/final").resolve())
    assert isinstance(plan.stages[1], TrainStage) and plan.stages[1].init_from is None

    plan = plan_file(ROOT / "recipes/ko-bert2bert/S_init-a_B_28000steps.grow")
    assert plan.train.budget == Point(value=28000, unit="steps") and plan.final_model == "B"


def test_plan_is_serializable_and_round_trips():
    from surgery.plan import Plan

    plan = plan_file(ROOT / "recipes/demo.grow")
    data = json.loads(json.dumps(plan.model_dump(mode="json")))
    assert Plan.model_validate(data) == plan
    assert plan_json(plan)["plan"] == data


def test_plan_path_does_not_import_torch():
    code = (
        "import sys; from surgery.plan_cli import plan_command; from surgery.plan import plan_file; "
        "from pathlib import Path; plan_command(Path('recipes/ko-bert2bert/T_init-da_B.grow'), json_out=True); "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
