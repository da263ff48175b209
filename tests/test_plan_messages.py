"""What `surgery plan` tells a user agrees with what `surgery run` then does and logs, in the
user's own units."""

from __future__ import annotations

import json
import textwrap

import pytest
from typer.testing import CliRunner

from surgery.cli import app
from surgery.errors import RecipeError
from surgery.plan import build_plan, plan_file
from surgery.plan.cost import stage_cost
from surgery.recipe import parse_recipe
from surgery.shapes import human
from tests.fixtures_text import documents


@pytest.mark.parametrize("model, objective", [
    ("t5(layers=1+1, d_model=32, heads=4, d_ff=64, vocab=300)", "span_corruption"),
    ("bert(layers=1, d_model=32, heads=4, d_ff=64, vocab=300)", "mlm"),
    ("gpt2(layers=1, d_model=32, heads=4, d_ff=64, vocab=300, max_positions=64)", "clm"),
])
def test_planned_tokens_are_the_logged_tokens(tmp_path, model, objective):
    (tmp_path / "corpus.txt").write_text("\n".join(documents(200)) + "\n")
    recipe = tmp_path / "r.grow"
    recipe.write_text(f'model M = {model}\ntrain M 6steps on "corpus.txt" objective {objective}\n'
                      "    batch_size=2 seq_len=48 val_every=3steps\n")
    plan = plan_file(recipe)
    planned = stage_cost(plan, plan.trains[0]).tokens
    res = CliRunner().invoke(app, ["run", str(recipe), "--out", str(tmp_path / "run"), "--quiet", "--no-finetune"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = max(r["tokens"] for r in rows if "tokens" in r)
    assert planned == logged


def test_points_out_of_order_are_told_in_the_user_s_units():
    text = textwrap.dedent("""\
        model T = t5(layers=1+1, d_model=32, heads=4, d_ff=64)
        model S = t5(layers=2+2, d_model=32, heads=4, d_ff=64)
        model B = t5(layers=2+2, d_model=64, heads=8, d_ff=128)
        grow T d@105steps S l@40% B
        train 200steps on corpus("demo")
        """)
    with pytest.raises(RecipeError) as info:
        build_plan(parse_recipe(text))
    assert "40% (= 80steps) is not after 105steps" in info.value.message


@pytest.mark.parametrize("n, text", [(999.6e9, "1T"), (999.4e9, "999G"), (1234.0, "1.23k"), (12, "12")])
def test_flops_print_with_a_unit_never_in_exponent_form(n, text):
    assert human(n) == text
