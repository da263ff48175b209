"""RoBERTa's own quirks: positions offset by the padding index, one token type, its MLM head."""

from __future__ import annotations

import torch

from surgery.ops import grow_model
from surgery.spec import ModelSpec
from tests.tiny import VOCAB, model, spec


def test_padding_offset_positions_survive_growth():
    # transformers numbers positions from pad_token_id + 1 and skips pads: a padded batch gives the
    # unpadded logits at the real tokens, before and after an exact growth
    src = spec("roberta")
    dst = spec("roberta", d_model=32, heads=8, d_ff=128, layers=3)
    m = model(src)
    assert m.config.pad_token_id == 1 and m.config.max_position_embeddings == src.max_positions + 2
    grown = grow_model(m, src, dst, "dl", seed=1).model.eval()
    ids = torch.randint(3, VOCAB, (1, 7), generator=torch.Generator().manual_seed(0))
    padded = torch.cat([ids, torch.ones(1, 3, dtype=torch.long)], dim=1)
    mask = (padded != 1).long()
    with torch.no_grad():
        for net in (m, grown):
            plain = net(input_ids=ids).logits
            pad = net(input_ids=padded, attention_mask=mask).logits[:, :7]
            assert (plain - pad).abs().max() < 1e-5
        assert ((grown(input_ids=ids).logits - m(input_ids=ids).logits).abs().max()
                / m(input_ids=ids).logits.abs().max()) < 1e-5


def test_spec_round_trips_through_config_json():
    s = spec("roberta", max_positions=40)
    cfg = model(s).config.to_dict()
    assert cfg["type_vocab_size"] == 1
    assert ModelSpec.from_hf_config(cfg) == s
