"""`surgery grow --op factorize|share|distil`: loadable output, parameter change and the measured
function change, exactly zero for full-rank factorization."""

import re

import pytest
from typer.testing import CliRunner

from surgery.cli import app
from surgery.families import build_model
from surgery.spec import ModelSpec


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert") / "ckpt"
    spec = ModelSpec(family="bert", layers=4, d_model=32, heads=4, d_ff=64, vocab=100, max_positions=64)
    build_model(spec, seed=0).save_pretrained(folder)
    return folder


def grow(*args):
    return CliRunner().invoke(app, ["grow", *map(str, args)])


def moved(output: str) -> float:
    return float(re.search(r"max relative logit change (\S+)", output).group(1))


def test_factorize_full_rank_is_exact_lower_rank_reports_its_error(bert, tmp_path):
    from transformers import AlbertForMaskedLM

    full = grow(bert, "--op", "factorize", "--to", "embedding=32", "--out", tmp_path / "full")
    assert full.exit_code == 0, full.output
    assert moved(full.output) == 0.0
    low = grow(bert, "--op", "factorize", "--to", "embedding=8", "--out", tmp_path / "low")
    assert low.exit_code == 0, low.output
    assert moved(low.output) > 1e-3
    model = AlbertForMaskedLM.from_pretrained(tmp_path / "low")
    assert model.config.embedding_size == 8
    assert model.num_parameters() == ModelSpec(family="albert", layers=4, d_model=32, heads=4, d_ff=64, vocab=100,
                                               max_positions=64, embedding=8).params


def test_share_and_distil_make_the_planned_sizes(bert, tmp_path):
    from transformers import AlbertForMaskedLM, BertForMaskedLM

    shared = grow(bert, "--op", "share", "--to", "share=all", "--out", tmp_path / "shared")
    assert shared.exit_code == 0, shared.output
    assert AlbertForMaskedLM.from_pretrained(tmp_path / "shared").config.num_hidden_groups == 1
    student = grow(bert, "--op", "distil", "--to", "layers=2", "--out", tmp_path / "student")
    assert student.exit_code == 0, student.output
    assert BertForMaskedLM.from_pretrained(tmp_path / "student").config.num_hidden_layers == 2


def test_compression_mistakes_are_one_line(bert, tmp_path):
    result = grow(bert, "--op", "factorize", "--to", "d_model=16", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "keeps" in result.output and not (tmp_path / "x").exists()
    result = grow(bert, "--op", "factorize", "--to", "heads=4", "--out", tmp_path / "y")
    assert result.exit_code == 2 and "embedding=E" in result.output


def test_compression_has_no_header_only_dry_run(bert, tmp_path):
    result = grow(bert, "--op", "factorize", "--to", "embedding=8", "--out", tmp_path / "z", "--dry-run")
    assert result.exit_code == 2 and "without --dry-run" in result.output and not (tmp_path / "z").exists()


def test_op_arguments_reach_the_op_or_are_refused(bert, tmp_path):
    import torch
    from safetensors.torch import load_file
    from transformers import AlbertForMaskedLM

    rank = grow(bert, "--op", "factorize(8)", "--to", "", "--out", tmp_path / "r")
    assert rank.exit_code == 0, rank.output
    assert AlbertForMaskedLM.from_pretrained(tmp_path / "r").config.embedding_size == 8
    last = grow(bert, "--op", "distil(select=last)", "--to", "layers=2", "--out", tmp_path / "last")
    assert last.exit_code == 0, last.output
    teacher, student = load_file(bert / "model.safetensors"), load_file(tmp_path / "last" / "model.safetensors")
    key = "bert.encoder.layer.{}.output.dense.weight"
    assert torch.equal(student[key.format(0)], teacher[key.format(2)])  # the last two of four layers
    for op, message in [("factorize(8)", "but --to embedding=16"), ("factorize(64)", "factorize(64)"),
                        ("distil(T=3)", "training loss setting"), ("distil(select=middle)", "unknown argument")]:
        extra = ["--to", "embedding=16" if op == "factorize(8)" else "layers=2" if op.startswith("distil") else ""]
        result = grow(bert, "--op", op, *extra, "--out", tmp_path / "bad")
        assert result.exit_code == 2 and message in result.output, (op, result.output)
        assert not (tmp_path / "bad").exists()
