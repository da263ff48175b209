"""Corpora, the batch order, and clear errors for bad data files."""

import gzip

import numpy as np
import pytest

from surgery.errors import SurgeryError
from surgery.train.corpus import load_documents, resolve_corpus
from surgery.train.data import BatchOrder
from tests.fixtures_text import documents


def test_text_and_jsonl_corpora_split_by_document(tmp_path):
    docs = documents(400)
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress("\n".join(docs[:200]).encode()))
    import json

    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[200:]))
    train, valid = load_documents(resolve_corpus(str(tmp_path)), seed=0)
    assert len(train) + len(valid) == 400
    assert len(valid) == 32  # at least a few validation documents for a small corpus
    assert sorted(train + valid) == sorted(d.strip() for d in docs)


def test_bad_corpora_say_what_is_wrong(tmp_path):
    with pytest.raises(SurgeryError, match="corpus .*missing.txt.* not found"):
        resolve_corpus(str(tmp_path / "missing.txt"))
    bad = tmp_path / "broken.txt.gz"
    bad.write_bytes(b"this is not gzip data")
    with pytest.raises(SurgeryError, match="cannot read corpus"):
        load_documents(resolve_corpus(str(bad)))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(SurgeryError, match="empty or too small"):
        load_documents(resolve_corpus(str(empty)))
    jl = tmp_path / "x.jsonl"
    jl.write_text('{"body": "no text field"}\n')
    with pytest.raises(SurgeryError, match="'text' field"):
        load_documents(resolve_corpus(str(jl)))


def test_batch_order_is_a_function_of_the_step():
    order = BatchOrder(n_blocks=100, batch_size=8, grad_accum=2, seed=3)
    assert order.steps_per_epoch == 6
    epoch0 = np.concatenate([order.indices(s, m) for s in range(6) for m in range(2)])
    assert len(set(epoch0.tolist())) == 96  # no block twice within an epoch
    again = BatchOrder(n_blocks=100, batch_size=8, grad_accum=2, seed=3)
    assert (again.indices(7, 1) == order.indices(7, 1)).all()
    assert not (order.indices(6, 0) == order.indices(0, 0)).all()  # a new permutation each epoch


def test_demo_corpus_is_real_korean_text_from_an_installed_package():
    train, valid = load_documents(resolve_corpus("demo"))
    text = "".join(train)
    hangul = sum("\uac00" <= ch <= "\ud7a3" for ch in text)
    assert len(train) > 500 and len(valid) >= 10
    assert hangul / len(text) > 0.5
