"""`surgery grow`: the shape table and probe on success; one line and exit 2 on a user's mistake."""

import pytest
from typer.testing import CliRunner

from surgery.cli import app
from surgery.errors import SurgeryError
from surgery.grow_cli import parse_to
from surgery.io import load_checkpoint, save_checkpoint
from tests.tiny import model, spec

runner = CliRunner()


@pytest.fixture()
def t5_src(tmp_path):
    save_checkpoint(tmp_path / "src", model(spec("t5")))
    return tmp_path / "src"


def test_grow_prints_shapes_and_probe(t5_src, tmp_path):
    res = runner.invoke(app, ["grow", str(t5_src), "--op", "l", "--to", "d_model=24,heads=6,d_ff=48",
                              "--out", str(tmp_path / "out"), "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert "16x16" in res.output and "24x24" in res.output
    change = float(res.output.split("max relative logit change")[1].split()[0])
    assert change < 1e-5
    assert (tmp_path / "out" / "config.json").is_file()


@pytest.mark.parametrize("op,to,message", [
    ("f", "d_model=8,heads=2", "d_model would shrink from 16 to 8"),
    ("f", "heads=5", "heads=5 does not divide"),
    ("d", "d_model=32,heads=8,d_ff=64", "use da, df or dl to grow both"),
    ("f", "layers=3+3", "use df"),
    ("x", "d_model=32", "unknown growth op"),
    ("f", "width=3", "unknown key"),
    ("f", "d_model=32,heads=4", "heads grow as whole heads of size 4 (d_model 16 / heads 4); d_model=32 with heads=4 "
                                "makes them 8: give heads=8 (or give d_kv= to change the head size)"),
    ("f", "d_model=18", "d_model=18 is not a multiple of 4: use d_model=20 with heads=5"),
])
def test_user_mistakes_exit_2_and_write_nothing(t5_src, tmp_path, op, to, message):
    out = tmp_path / "out"
    res = runner.invoke(app, ["grow", str(t5_src), "--op", op, "--to", to, "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert res.output.strip().count("\n") == 0  # one line
    assert not out.exists()


def test_bad_source_exit_2(tmp_path):
    res = runner.invoke(app, ["grow", str(tmp_path / "nope"), "--op", "f", "--to", "d_model=32", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "no such checkpoint" in res.output


def test_parse_to_keeps_unset_keys():
    base = spec("t5")
    got = parse_to("layers=4+6,d_model=32,heads=8", base)
    assert (got.layers, got.decoder_layers, got.d_model, got.heads, got.d_ff) == (4, 6, 32, 8, base.d_ff)
    with pytest.raises(SurgeryError):
        parse_to("layers=x", base)


@pytest.mark.parametrize("fam,to,want", [
    ("bert", "d_model=32", dict(d_model=32, heads=8)),  # issue #16: no detour through d_kv
    ("gpt2", "d_model=24,d_ff=64", dict(d_model=24, heads=6, d_ff=64)),
    ("t5", "d_model=32", dict(d_model=32, heads=8)),
    ("llama", "d_model=32", dict(d_model=32, heads=8, kv_heads=4)),  # the group size (2) is kept
    ("llama", "d_model=32,kv_heads=2", dict(d_model=32, heads=8, kv_heads=2)),
    ("llama", "d_model=32,heads=8,kv_heads=8", dict(d_model=32, heads=8, kv_heads=8)),  # given: kept
])
def test_d_model_scales_heads_at_constant_head_size(fam, to, want):
    got = parse_to(to, spec(fam))
    assert {k: getattr(got, k) for k in want} == want
    assert got.head_dim == 4


def test_bert_grows_by_d_model_alone(tmp_path):
    save_checkpoint(tmp_path / "src", model(spec("bert")))
    res = runner.invoke(app, ["grow", str(tmp_path / "src"), "--op", "f", "--to", "d_model=32,d_ff=128",
                              "--out", str(tmp_path / "out"), "--no-probe"])
    assert res.exit_code == 0, res.output
    grown = load_checkpoint(tmp_path / "out").spec
    assert (grown.d_model, grown.heads, grown.head_dim) == (32, 8, 4)


def test_d_model_no_head_count_fits_names_the_ones_that_do(tmp_path):
    save_checkpoint(tmp_path / "src", model(spec("bert")))
    res = runner.invoke(app, ["grow", str(tmp_path / "src"), "--op", "f", "--to", "d_model=30", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "use d_model=28 with heads=7 or d_model=32 with heads=8" in res.output
    assert "d_kv" not in res.output  # BERT has no separate head size: never suggest it
    assert not (tmp_path / "o").exists()
