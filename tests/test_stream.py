"""Streamed growth (`grow_checkpoint`, `surgery grow`): the same bytes at any thread count and in
any order of production, the same tensors as in-memory growth, random splits drawn per block,
output dtypes, and a truncated source refused with nothing written."""

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import surgery.io as sio
from surgery.cli import app
from surgery.errors import SurgeryError
from surgery.io import load_checkpoint, save_checkpoint
from surgery.ops import entries, grow_checkpoint, grow_model, mapping, plan_checkpoint
from tests.tiny import model, spec

runner = CliRunner()

# (family, source dims, op, target dims): padding of the residual stream (1.5x), uneven head and
# d_ff copies, GQA, identity depth, AKI and FPI.
CASES = {
    "llama-dl": ("llama", dict(head="untied"), "dl", dict(layers=3, d_model=24, heads=6, kv_heads=3, d_ff=48)),
    "t5-l": ("t5", dict(head="untied"), "l", dict(d_model=24, heads=6, d_ff=48)),
    "bert-da": ("bert", {}, "da", dict(layers=3, d_model=32, heads=8, d_ff=128)),
    "gpt2-df": ("gpt2", {}, "df", dict(layers=3, d_model=24, heads=6, d_ff=48)),
}


@pytest.fixture()
def small_blocks(monkeypatch):
    # Tiny tensors would otherwise fit one block: make every random split span several.
    monkeypatch.setattr(entries, "BLOCK_ELEMS", 40)
    monkeypatch.setattr(mapping, "_CACHE_BLOCK", 50)  # matrices grown in place: several row blocks


def folder_bytes(path: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(path.iterdir())}


def make_source(tmp_path, case, dtype=torch.float32):
    fam, src_dims, op, dims = CASES[case]
    src = spec(fam, **src_dims)
    m = model(src).to(dtype)
    save_checkpoint(tmp_path / "src", m, shard_bytes=6_000)
    return m, src, src.model_copy(update=dims), op


@pytest.mark.parametrize("case", list(CASES))
def test_same_bytes_at_1_and_4_threads(tmp_path, case, small_blocks):
    _, _, dst, op = make_source(tmp_path, case)
    outs = []
    for threads in (1, 4, 4):
        out = tmp_path / f"out-{len(outs)}"
        grow_checkpoint(tmp_path / "src", dst, op, out, seed=3, shard_bytes=20_000, threads=threads)
        outs.append(folder_bytes(out))
    assert len([n for n in outs[0] if n.endswith(".safetensors")]) > 3  # tensors cross shard boundaries
    assert outs[0] == outs[1] == outs[2]


@pytest.mark.parametrize("case", list(CASES))
def test_streamed_equals_in_memory(tmp_path, case, small_blocks):
    m, src, dst, op = make_source(tmp_path, case)
    grow_checkpoint(tmp_path / "src", dst, op, tmp_path / "out", seed=3, shard_bytes=20_000, threads=4)
    streamed = load_checkpoint(tmp_path / "out")
    grown = grow_model(m, src, dst, op, seed=3).model
    state = grown.state_dict()
    for name in streamed.names():
        assert torch.equal(streamed.get(name), state[name]), name


@pytest.mark.parametrize("divided", [False, True])
@pytest.mark.parametrize("m", [mapping.copies_then_random(10, 17, torch.Generator().manual_seed(0)),
                               mapping.copies_then_padding(10, 25)], ids=["copies", "padding"])
def test_columns_grown_in_place_by_row_blocks_equal_a_plain_gather(m, divided, small_blocks):
    """A reader matrix read straight into its grown tensor grows its columns there, block of rows
    by block of rows; the bytes are those of gathering from a separate copy of the source."""
    t = torch.randn(23, 10)
    divisor = m.count[m.src.clamp(min=0)] if divided else None
    plain = m.gather(t, 1, divisor, out=torch.full((23, m.new), 7.0))
    out = torch.full((23, m.new), 7.0)
    out[:, :10] = t
    made = m.gather(out[:, :10], 1, divisor, out=out)
    assert made is out
    assert torch.equal(out, plain)  # padding columns left unset by both
    assert torch.equal(out[:, 10:][:, m.src[10:] >= 0], (t[:, m.src[10:][m.src[10:] >= 0]]
                                                          / (divisor[10:][m.src[10:] >= 0] if divided else 1)))


def test_split_blocks_sum_to_the_source_and_differ(small_blocks):
    """`l` splits every reader weight of a unit copied c times into c random parts that sum to it;
    each block draws its own parts (no pattern repeated from block to block), and a tensor's parts
    do not depend on which tensors were made before it."""
    src = spec("llama", head="untied")
    dst = src.model_copy(update=dict(d_model=32, heads=8, kv_heads=4, d_ff=64))
    m = model(src)
    g = grow_model(m, src, dst, "l", seed=7)
    w, w0 = g.model.state_dict()["model.layers.0.mlp.up_proj.weight"], m.state_dict()["model.layers.0.mlp.up_proj.weight"]
    # Rows 0..31 are the source's d_ff units (old units keep their place); d_model 16 -> 32 gives
    # every column two copies, side by side.
    parts = w[:32].reshape(32, 2, 16)
    assert torch.allclose(parts.sum(1), w0, rtol=1e-6, atol=1e-7)
    ratio = parts[:, 0] / w0  # the first copy's share, in [1/4, 3/4)
    assert bool(((ratio > 0.249) & (ratio < 0.751)).all())
    rows_per_block = max(1, entries.BLOCK_ELEMS // 32)
    assert not torch.allclose(ratio[:rows_per_block], ratio[rows_per_block:2 * rows_per_block])
    # Made alone, in another order, from a fresh plan: the same bytes.
    again = grow_model(m, src, dst, "l", seed=7)
    slot = again.plan.dst_view.by_hf()["model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(again.plan.entries[slot.name].weight(again._source), w)
    other = grow_model(m, src, dst, "l", seed=8).model.state_dict()["model.layers.0.mlp.up_proj.weight"]
    assert not torch.equal(other, w)


@pytest.mark.parametrize("out_dtype", [None, "float32"])
def test_bf16_source_keeps_its_dtype_unless_asked(tmp_path, out_dtype):
    m, src, dst, op = make_source(tmp_path, "llama-dl", dtype=torch.bfloat16)
    grow_checkpoint(tmp_path / "src", dst, op, tmp_path / "out", seed=3, threads=2, dtype=out_dtype)
    ckpt = load_checkpoint(tmp_path / "out")
    want = torch.bfloat16 if out_dtype is None else torch.float32
    assert {ckpt.dtype(n) for n in ckpt.names()} == {want}
    # The arithmetic is fp32 either way: a bf16 output is the fp32 one rounded once.
    grown = grow_model(m.float(), src, dst, op, seed=3).model.state_dict()
    for name in ckpt.names():
        assert torch.equal(ckpt.get(name), grown[name].to(want)), name


def test_dry_run_counts_the_pipeline(tmp_path):
    _, _, dst, op = make_source(tmp_path, "llama-dl")
    one = plan_checkpoint(tmp_path / "src", dst, op, threads=1)
    four = plan_checkpoint(tmp_path / "src", dst, op, threads=4)
    assert four.peak_bytes > one.peak_bytes  # two working sets in flight instead of one
    assert (one.threads, four.threads) == (1, 4)
    res = runner.invoke(app, ["grow", str(tmp_path / "src"), "--op", op, "--to", "layers=3,d_model=24,heads=6,kv_heads=3,d_ff=48",
                              "--dry-run", "--threads", "3"])
    assert res.exit_code == 0, res.output
    assert "streamed on 3 threads" in res.output


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_shard_one_line_exit_2_nothing_written(tmp_path):
    make_source(tmp_path, "llama-dl")
    shards = sorted((tmp_path / "src").glob("model-*.safetensors"))
    _truncate(shards[len(shards) // 2], 0.6)
    out = tmp_path / "out"
    res = runner.invoke(app, ["grow", str(tmp_path / "src"), "--op", "dl", "--to", "layers=3,d_model=24,heads=6,kv_heads=3,d_ff=48",
                              "--out", str(out), "--no-probe", "--threads", "4"])
    assert res.exit_code == 2, res.output
    assert res.output.strip().count("\n") == 0, res.output
    assert "truncated" in res.output and shards[len(shards) // 2].name in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no output, no temporary folder


def test_source_truncated_during_the_run_leaves_nothing(tmp_path, monkeypatch):
    """A shard cut short after its header was read (a copy still in progress): the first read past
    its end stops the run, the workers are drained, and neither DST nor its temporary folder stays."""
    make_source(tmp_path, "llama-dl")
    shards = sorted((tmp_path / "src").glob("model-*.safetensors"))
    real_get, calls = sio.Checkpoint.get, []

    def get(self, name):
        calls.append(name)
        if len(calls) == 5:
            _truncate(shards[3], 0.3)  # layer 1's tensors: read after this
        return real_get(self, name)

    monkeypatch.setattr(sio.Checkpoint, "get", get)
    dst = spec("llama", head="untied").model_copy(update=CASES["llama-dl"][3])
    with pytest.raises(SurgeryError, match="truncated"):
        grow_checkpoint(tmp_path / "src", dst, "dl", tmp_path / "out", threads=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_threads_and_dtype_mistakes_exit_2(tmp_path):
    make_source(tmp_path, "llama-dl")
    for extra, message in ((["--threads", "0"], "--threads"), (["--dtype", "fp8"], "unknown dtype")):
        res = runner.invoke(app, ["grow", str(tmp_path / "src"), "--op", "dl", "--to", "layers=3", "--out",
                                  str(tmp_path / "out"), *extra])
        assert res.exit_code == 2 and message in res.output, res.output
        assert res.output.strip().count("\n") == 0
        assert not (tmp_path / "out").exists()


def test_repeated_layers_made_once_and_written_twice(tmp_path, monkeypatch):
    """Layers that depth growth repeats are made once and their bytes written at every place
    they go, here in another shard."""
    _, _, dst, op = make_source(tmp_path, "bert-da")
    made, real = [], sio.TensorTask.made

    def counted(self):
        made.append(self.name)
        return real(self)

    monkeypatch.setattr(sio.TensorTask, "made", counted)
    grow_checkpoint(tmp_path / "src", dst, op, tmp_path / "out", seed=3, shard_bytes=20_000, threads=2)
    name = "bert.encoder.layer.{}.attention.self.query.weight"
    assert name.format(0) in made and name.format(2) not in made
    # Layer 2 is a copy of layer 0 (stacking 2 -> 3): same bytes under both names.
    ckpt = load_checkpoint(tmp_path / "out")
    assert ckpt.tensors[name.format(2)].file != ckpt.tensors[name.format(0)].file
    assert torch.equal(ckpt.get(name.format(2)), ckpt.get(name.format(0)))
    assert ckpt.spec == dst
