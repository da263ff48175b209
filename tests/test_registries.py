"""The registries are the one place each thing is known: every entry resolves to its
implementation, plan and run agree on the cases where they used to disagree, and planning stays
torch-free and deterministic."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap

import pytest

from surgery import catalog
from surgery.errors import RecipeError, SurgeryError
from surgery.families import FAMILIES
from surgery.plan import build_plan
from surgery.recipe import parse_recipe
from surgery.spec import ModelSpec


def _resolve(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("name", list(catalog.OPS) + list(catalog.COMPRESS_OPS))
def test_every_op_points_at_its_implementation(name):
    info = catalog.OPS.get(name) or catalog.COMPRESS_OPS[name]
    assert callable(_resolve(info.impl))
    assert info.in_run is None or callable(catalog.resolve(info.in_run))


@pytest.mark.parametrize("name", list(catalog.OBJECTIVES))
def test_every_objective_points_at_its_implementation_and_fits_some_family(name):
    info = catalog.OBJECTIVES[name]
    assert isinstance(_resolve(info.impl), type)
    assert info.families, f"{name} trains no family"


@pytest.mark.parametrize("name", list(catalog.TASKS))
def test_every_task_points_at_its_implementation(name):
    from surgery.finetune.base import Task

    assert issubclass(_resolve(catalog.TASKS[name].impl), Task)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_default_objective_trains_it_and_tiny_spec_builds(family):
    d = FAMILIES[family]
    assert family in catalog.OBJECTIVES[d.default_objective].families
    spec = ModelSpec.of(family, vocab=101, **d.tiny)
    assert spec.params > 0
    assert set(d.tiny) <= set(d.args)


def _plan(text: str, name: str = "x.grow"):
    return build_plan(parse_recipe(textwrap.dedent(text), name))


def _refused(text: str) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        _plan(text)
    return info.value


# ---- the three cases where plan accepted what run then refused ----------------------------
def test_max_positions_growth_is_refused_at_plan_time_as_the_ops_refuse_it():
    err = _refused("""\
        model S = bert(layers=2, d_model=32, heads=2, d_ff=64, vocab=500, max_positions=64)
        model B = bert(layers=2, d_model=64, heads=4, d_ff=128, vocab=500, max_positions=128)
        grow S f@50% B
        train 10steps on corpus("demo")
        """)
    assert "max_positions changes (64 -> 128); growth keeps it" in err.message
    assert (err.line, err.column) == (3, 14)  # at the target model, whose max_positions differs
    # and the op refuses with the same rule, on the same specs
    from surgery.ops.growth import check_specs, parse_op

    s = ModelSpec(family="bert", layers=2, d_model=32, heads=2, d_ff=64, vocab=500, max_positions=64)
    b = s.model_copy(update={"d_model": 64, "heads": 4, "d_ff": 128, "max_positions": 128})
    with pytest.raises(SurgeryError, match="max_positions changes"):
        check_specs(s, b, parse_op("f", {}))


def test_fractional_finetune_epochs_are_refused_by_plan_like_finetuning():
    err = _refused("""\
        model B = bert(layers=2, d_model=32, heads=2, d_ff=64, vocab=500)
        train B 10steps on corpus("demo")
        finetune klue-nli(epochs=2.5)
        """)
    assert "epochs is a whole number, got 2.5" in err.message and err.line == 3
    # what the plan accepts, fine-tuning's own settings accept
    from surgery.finetune.params import from_recipe, parse_params

    ok = _plan("""\
        model B = bert(layers=2, d_model=32, heads=2, d_ff=64, vocab=500)
        train B 10steps on corpus("demo")
        finetune klue-nli(epochs=2, warmup=0.2, weight_decay=0, seq_len=64)
        """)
    params = parse_params(from_recipe(ok.finetune[0].params))
    assert params.epochs == 2 and params.weight_decay == 0 and params.max_length == 64


@pytest.mark.parametrize("op", ["f", "factorize"])
def test_bert_to_albert_chain_errors_do_not_depend_on_the_hash_seed(op, tmp_path):
    recipe = tmp_path / "mixed.grow"
    recipe.write_text(textwrap.dedent(f"""\
        model B = bert(layers=2, d_model=32, heads=2, d_ff=64, vocab=500)
        model A = albert(layers=2, d_model=32, heads=2, d_ff=64, vocab=500, embedding=16)
        grow B {op}@50% A
        train 10steps on corpus("demo") objective electra
        """))
    outs = set()
    for seed in ("0", "1", "2", "3"):
        res = subprocess.run([sys.executable, "-m", "surgery", "plan", str(recipe)], capture_output=True, text=True,
                             env={**os.environ, "PYTHONHASHSEED": seed})
        assert res.returncode == 2, res.stderr + res.stdout
        outs.add(res.stdout + res.stderr)
    assert len(outs) == 1, outs


def test_a_mixed_chain_defaults_to_the_first_model_objective():
    plan = _plan("""\
        model B = bert(layers=2, d_model=32, heads=2, d_ff=64, vocab=500)
        model A = albert(layers=2, d_model=32, heads=2, d_ff=64, vocab=500, embedding=16)
        grow B factorize@50% A
        train 10steps on corpus("demo")
        """)
    assert plan.train.objective.name == "mlm"


# ---- bounds come from the registry ----------------------------------------------------------
@pytest.mark.parametrize("clause, message", [
    ("objective mlm(masks=0)", "masks must be at least 1, got 0"),
    ("objective span(p=1)", "p must be between 0 and 1 (exclusive), got 1"),
    ("objective span_corruption(mean_span=0.5)", None),  # span_corruption is not for bert
])
def test_argument_bounds_are_the_registry_bounds(clause, message):
    err = _refused(f"""\
        model B = bert(layers=2, d_model=32, heads=2, d_ff=64, vocab=500)
        train B 10steps on corpus("demo") {clause}
        """)
    if message:
        assert message in err.message
    else:
        assert "span_corruption is for t5 models" in err.message


def test_plan_imports_no_torch_for_any_family():
    code = (
        "import sys\n"
        "from surgery.plan import plan_file\n"
        "import surgery.plan_cli, surgery.families, surgery.catalog, surgery.growth_rules\n"
        "from surgery.spec import ModelSpec\n"
        "from surgery.families import FAMILIES\n"
        "for n, d in FAMILIES.items():\n"
        "    ModelSpec.of(n, vocab=101, **d.tiny).params\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_no_import_cycle_between_finetune_modules():
    """Each finetune module imports on its own, in a fresh interpreter (a cycle shows as an
    ImportError on some import order)."""
    mods = ["surgery.finetune.base", "surgery.finetune.tasks", "surgery.finetune.nli",
            "surgery.finetune.qa_extractive", "surgery.finetune.qa_generative", "surgery.finetune.summarization",
            "surgery.families", "surgery.spec", "surgery.catalog", "surgery.plan"]
    for m in mods:
        res = subprocess.run([sys.executable, "-c", f"import {m}"], capture_output=True, text=True)
        assert res.returncode == 0, (m, res.stderr)


def test_every_registry_entry_is_documented():
    """docs/recipes.md names every family, family argument, op, objective and task."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "recipes.md").read_text()
    names = list(FAMILIES) + [a for f in FAMILIES.values() for a in f.args] + list(catalog.OPS) \
        + list(catalog.COMPRESS_OPS) + list(catalog.OBJECTIVES) + list(catalog.TASKS) + list(catalog.TASK_ARGS)
    missing = sorted({n for n in names if f"`{n}" not in text and f"{n}(" not in text and f"{n}=" not in text})
    assert not missing, missing
