"""Masking statistics of the pretraining objectives, on a tokenizer trained on a fixture."""

import numpy as np
import pytest

from surgery.train.bert_objectives import MaskedLMPlus
from surgery.train.objectives import IGNORE, SpanCorruption, t5_span_lengths
from surgery.train.tokenizer import train_tokenizer
from tests.fixtures_text import documents


@pytest.fixture(scope="module")
def t5_tok():
    return train_tokenizer(documents(), "t5", 300)


@pytest.fixture(scope="module")
def bert_tok():
    return train_tokenizer(documents(), "bert", 300)


def _blocks(tok, width, n=64):
    stream = np.concatenate([tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id or tok.sep_token_id]
                             for d in documents(400)])
    stream = stream[: (len(stream) // width) * width].reshape(-1, width)
    return stream[:n]


def test_span_corruption_rate_spans_and_reconstruction(t5_tok):
    obj = SpanCorruption(t5_tok, seq_len=128, rate=0.15, mean_span=3.0)
    noise, spans, in_len, tgt_len = t5_span_lengths(obj.raw_len, 0.15, 3.0)
    assert in_len <= 128 and t5_span_lengths(obj.raw_len + 1, 0.15, 3.0)[2] > 128
    blocks = _blocks(t5_tok, obj.raw_len)
    batch = obj(blocks, np.random.default_rng(0))
    sentinels = set(obj.sentinels)
    span_lengths = []
    for row, inp, lab in zip(blocks, batch["input_ids"].tolist(), batch["labels"].tolist()):
        inp = [t for t in inp if t != t5_tok.pad_token_id][:-1]  # drop padding and </s>
        lab = [t for t in lab if t != IGNORE][:-1]
        # Put the hidden tokens back where their sentinels stand: the original block comes back.
        hidden, current = {}, None
        for t in lab:
            if t in sentinels:
                current = t
                hidden[t] = []
            else:
                hidden[current].append(t)
        rebuilt = [x for t in inp for x in (hidden[t] if t in sentinels else [t])]
        assert rebuilt == row.tolist()
        assert sum(len(v) for v in hidden.values()) == noise
        assert len(hidden) == spans
        span_lengths += [len(v) for v in hidden.values()]
    assert abs(np.mean(span_lengths) - noise / spans) < 1e-9
    assert abs(noise / obj.raw_len - 0.15) < 0.01


def test_span_corruption_is_dynamic_and_reproducible(t5_tok):
    obj = SpanCorruption(t5_tok, seq_len=64)
    blocks = _blocks(t5_tok, obj.raw_len, n=4)
    a = obj(blocks, np.random.default_rng(1))["input_ids"]
    b = obj(blocks, np.random.default_rng(1))["input_ids"]
    c = obj(blocks, np.random.default_rng(2))["input_ids"]
    assert (a == b).all() and not (a == c).all()


def test_mlm_masking_fractions(bert_tok):
    obj = MaskedLMPlus(bert_tok, seq_len=128)
    blocks = _blocks(bert_tok, obj.raw_len, n=64)
    batch = obj(blocks, np.random.default_rng(0))
    ids, labels = batch["input_ids"].numpy(), batch["labels"].numpy()
    original = np.concatenate([np.full((len(blocks), 1), bert_tok.cls_token_id), blocks,
                               np.full((len(blocks), 1), bert_tok.sep_token_id)], axis=1)
    special = np.isin(original, bert_tok.all_special_ids)
    chosen = labels != IGNORE
    assert not (chosen & special).any()
    assert (labels[chosen] == original[chosen]).all()
    assert (ids[~chosen] == original[~chosen]).all()
    rate = chosen.sum() / (~special).sum()
    masked = (ids[chosen] == bert_tok.mask_token_id).mean()
    kept = (ids[chosen] == original[chosen]).mean()
    assert abs(rate - 0.15) < 0.015
    assert abs(masked - 0.8) < 0.04
    assert abs(kept - 0.1) < 0.04  # random replacements that happen to equal the token are rare at this vocab
