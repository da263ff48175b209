"""The recipes shown in the docs and in `surgery plan --help` are valid."""

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from surgery.cli import app
from surgery.plan import build_plan
from surgery.recipe import parse_recipe

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "docs/recipes.md", ROOT / "README.md"]


def _recipe_blocks():
    for doc in DOCS:
        for i, block in enumerate(re.findall(r"```\n(.*?)```", doc.read_text(), re.S)):
            if re.search(r"^\s*(#.*\n)*\s*model ", block):
                yield pytest.param(block, id=f"{doc.name}-{i}")


@pytest.mark.parametrize("block", list(_recipe_blocks()))
def test_doc_recipes_plan(block, tmp_path):
    build_plan(parse_recipe(block, file=str(tmp_path / "doc.grow")))


def test_layer_list_example_from_the_reference():
    text = (
        "model A = bert(layers=8, d_model=32, heads=4, d_ff=64)\nmodel B = bert(layers=12, d_model=32, heads=4, d_ff=64)\n"
        "grow A d[0..7, 4..7]@1ep B\ntrain 2ep\n"
    )
    grow = build_plan(parse_recipe(text)).grows[0]
    assert grow.args["layers"] == [[0, 1, 2, 3, 4, 5, 6, 7, 4, 5, 6, 7]] and "select" not in grow.args


def test_plan_help_has_the_syntax():
    out = CliRunner().invoke(app, ["plan", "--help"], env={"COLUMNS": "120"}).stdout
    for needle in ("model T = t5(", "pretrained", "init-", "d(identity)", "d[0..5 x4]", "until val_loss", "finetune", "@40%"):
        assert needle in out, needle


def test_plan_help_syntax_is_not_rewrapped_on_an_80_column_terminal():
    out = CliRunner().invoke(app, ["plan", "--help"], env={"COLUMNS": "80"}).stdout
    for line in ("embedding=128, share=all|attention|ffn|none)", "distil(style=distilbert|tinybert|tutor, select=every-other|first|last)",
                 "optimizer adamw(lr=5e-4, warmup=1%, schedule=linear)", "d[0..5 x4] explicit source layers (t5: d[0..5 x2 + 0..5 x2])"):
        assert line in out, line


def test_plan_help_lists_every_registry_entry():
    from surgery import catalog
    from surgery.families import FAMILIES

    out = CliRunner().invoke(app, ["plan", "--help"], env={"COLUMNS": "80"}).stdout
    for name in [*FAMILIES, *catalog.OPS, *catalog.COMPRESS_OPS, *catalog.OBJECTIVES, *catalog.TASKS]:
        assert f" {name}" in out, name
