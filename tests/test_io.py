"""Checkpoint folders: lazy reading, streaming/sharded atomic writing, loading with from_pretrained."""

import json

import pytest
import torch
import transformers

from surgery.errors import SurgeryError
from surgery.io import TensorTask, load_checkpoint, save_checkpoint
from surgery.ops import grow_checkpoint, grow_model
from tests.tiny import batch, logits, model, rel_change, spec


def reload(path, cls):
    return getattr(transformers, cls).from_pretrained(str(path)).eval()


@pytest.mark.parametrize("head", ["tied", "tied-unscaled", "untied"])
def test_t5_roundtrip_keeps_head_kind(tmp_path, head):
    s = spec("t5", head=head)
    m = model(s)
    save_checkpoint(tmp_path / "m", m)
    ckpt = load_checkpoint(tmp_path / "m")
    assert ckpt.spec == s
    back = ckpt.model()
    assert (back.lm_head.weight is back.shared.weight) == (head != "untied")
    assert rel_change(logits(back, batch()), logits(m, batch())) == 0.0


def test_sharded_write_and_read(tmp_path):
    m = model(spec("bert"))
    save_checkpoint(tmp_path / "m", m, shard_bytes=4096)
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert load_checkpoint(tmp_path / "m").spec == spec("bert")
    assert rel_change(logits(reload(tmp_path / "m", "BertForMaskedLM"), batch()), logits(m, batch())) == 0.0


@pytest.mark.parametrize("shard_bytes", [10**6, 64])
def test_zero_tensors_are_holes_that_read_as_zeros(tmp_path, shard_bytes):
    """Zero tensors are never written (holes of the file), also where a shard ends with them: the
    files are as long as their headers say and read back as zeros with safetensors itself."""
    from safetensors.torch import load_file

    from surgery.io import write_tensors

    a = torch.randn(4, 3)
    tasks = [TensorTask("a", (4, 3), torch.float32, lambda: a.clone()),
             TensorTask("z", (5, 4), torch.float32, None, zeros=True),
             TensorTask("b", (2,), torch.float32, lambda: torch.ones(2)),
             TensorTask("z2", (8,), torch.float32, None, zeros=True)]
    (tmp_path / "m").mkdir()
    names = write_tensors(tmp_path / "m", tasks, shard_bytes=shard_bytes, threads=2)
    got = {}
    for n in names:
        if n.endswith(".safetensors"):
            got.update(load_file(str(tmp_path / "m" / n)))  # refuses a file shorter than its header
    assert torch.equal(got["a"], a) and torch.equal(got["b"], torch.ones(2))
    assert torch.equal(got["z"], torch.zeros(5, 4)) and torch.equal(got["z2"], torch.zeros(8))
    # 64 bytes a shard: [a], [z], [b, z2]; each layout ends with a hole
    assert len([n for n in names if n.endswith(".safetensors")]) == (1 if shard_bytes > 1000 else 3)


@pytest.mark.parametrize("fam,op,dims", [("t5", "dl", dict(layers=3, decoder_layers=3, d_model=24, heads=6, d_ff=48)),
                                         ("bert", "da", dict(layers=3, d_model=32, heads=8, d_ff=128)),
                                         ("t5", "f", dict(d_model=32, heads=8, d_ff=64))])
def test_streaming_growth_equals_in_memory_growth(tmp_path, fam, op, dims):
    src = spec(fam, head="untied") if fam == "t5" else spec(fam)
    dst = src.model_copy(update=dims)
    m = model(src)
    save_checkpoint(tmp_path / "src", m)
    grow_checkpoint(tmp_path / "src", dst, op, tmp_path / "out", seed=5, shard_bytes=20_000)
    streamed = load_checkpoint(tmp_path / "out").model().eval()
    in_memory = grow_model(m, src, dst, op, seed=5).model.eval()
    for (n, a), (_, b) in zip(sorted(streamed.state_dict().items()), sorted(in_memory.state_dict().items())):
        assert torch.equal(a, b), n


def test_refuses_non_empty_output(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(SurgeryError, match="not empty"):
        save_checkpoint(tmp_path / "out", {"a": torch.zeros(1)}, {"model_type": "bert"})


def test_bad_sources(tmp_path):
    with pytest.raises(SurgeryError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SurgeryError, match="no config.json"):
        load_checkpoint(tmp_path / "empty")
    bad = tmp_path / "corrupt"
    save_checkpoint(bad, model(spec("bert")))
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(SurgeryError, match="safetensors"):
        load_checkpoint(bad)
    gpt = tmp_path / "mistral"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}))
    with pytest.raises(SurgeryError, match="unsupported architecture"):
        load_checkpoint(gpt)


def test_impossible_target_writes_nothing(tmp_path):
    save_checkpoint(tmp_path / "src", model(spec("bert")))
    with pytest.raises(SurgeryError, match="shrink"):
        grow_checkpoint(tmp_path / "src", spec("bert", d_model=8, heads=2), "f", tmp_path / "out")
    assert not (tmp_path / "out").exists()
