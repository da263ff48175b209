"""BERT variants: masking statistics, losses that fall on real text, compression ops, plan checks."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from surgery.compress import distil_student, factorize, load_model, share
from surgery.errors import RecipeError
from surgery.plan import build_plan
from surgery.recipe import parse_recipe
from surgery.spec import ModelSpec
from surgery.train.bert_objectives import as_model_kind, truncated_geometric
from surgery.train.data import to_doc_blocks
from surgery.train.objectives import IGNORE, make_objective
from surgery.train.tokenizer import train_tokenizer
from tests.fixtures_text import documents
from tests.tiny import batch, logits, model, rel_change, spec


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(documents(), "bert", 300)


def _stream(tok, n_docs=400):
    return np.concatenate([tok(d, add_special_tokens=False)["input_ids"] + [tok.sep_token_id] for d in documents(n_docs)])


def _blocks(tok, width, n=64):
    s = _stream(tok)
    return s[: (len(s) // width) * width].reshape(-1, width)[:n]


# ---- masking statistics ---------------------------------------------------------------------
def test_mlm_rate_and_80_10_10(tok):
    obj = make_objective("mlm", {"rate": 0.15}, tok, 128)
    b = obj(_blocks(tok, obj.raw_len, 256), np.random.default_rng(0))
    chosen = b["labels"] != IGNORE
    assert abs(chosen.float().mean().item() * 128 / 126 - 0.15) < 0.01
    masked = (b["input_ids"] == tok.mask_token_id) & chosen
    kept = (b["input_ids"] == b["labels"]) & chosen
    n = chosen.sum().item()
    assert abs(masked.sum().item() / n - 0.8) < 0.02 and abs(kept.sum().item() / n - 0.1) < 0.02 + 1 / 300


def test_static_masks_repeat_per_block_dynamic_do_not(tok):
    blocks = _blocks(tok, 62, 8)
    static = make_objective("mlm", {"masking": "static", "masks": 2}, tok, 64, seed=3)
    a = static(blocks, np.random.default_rng(1), block_ids=np.arange(8), epoch=0)["input_ids"]
    b = static(blocks[::-1].copy(), np.random.default_rng(2), block_ids=np.arange(8)[::-1], epoch=2)["input_ids"]
    c = static(blocks, np.random.default_rng(1), block_ids=np.arange(8), epoch=1)["input_ids"]
    assert torch.equal(a, b.flip(0))  # same block, same copy (epoch 2 % 2 == 0): same mask
    assert not torch.equal(a, c)  # the other copy
    dyn = make_objective("mlm", {}, tok, 64)
    assert not torch.equal(dyn(blocks, np.random.default_rng(1))["input_ids"], dyn(blocks, np.random.default_rng(2))["input_ids"])


def test_span_masking_rate_lengths_whole_words_and_span_level_replacement(tok):
    obj = make_objective("span", {"sbo": True}, tok, 128)
    blocks = _blocks(tok, obj.raw_len, 200)
    b = obj(blocks, np.random.default_rng(0))
    chosen = (b["labels"] != IGNORE).numpy()
    assert abs(chosen.sum() / (chosen.size * 126 / 128) - 0.15) < 0.01
    starts = obj.starts
    word_lens, replaced_frac = [], []
    ids, orig = b["input_ids"].numpy(), obj._wrap(blocks)
    for row in range(len(ids)):
        left, right = b["span_left"][row].numpy(), b["span_right"][row].numpy()
        for s, e in sorted({(l + 1, r) for l, r in zip(left, right) if l >= 0}):
            assert chosen[row, s:e].all() and not chosen[row, s - 1] and not chosen[row, e]
            assert (starts[orig[row, s]] or s == 1) and starts[orig[row, e]]  # whole words (a block may open mid-word)
            word_lens.append(int(starts[orig[row, s:e]].sum()))
            kinds = {("mask" if t == tok.mask_token_id else "keep" if t == o else "rand") for t, o in zip(ids[row, s:e], orig[row, s:e])}
            assert len(kinds - {"keep"}) <= 1 or kinds == {"rand", "keep"}  # one decision per span
            replaced_frac.append("mask" in kinds)
    assert word_lens and max(word_lens) <= 10
    assert abs(np.mean(replaced_frac) - 0.8) < 0.06  # 80% of spans become [MASK] as a whole


def test_span_lengths_follow_the_clipped_geometric():
    """Token-level spans on long rows (the budget rarely cuts): lengths ~ Geometric(0.2) clipped
    at 10 (renormalised). Spans that would touch an earlier span are redrawn, as in SpanBERT,
    which shortens the realised mean a little (3.5 vs 3.8)."""
    from surgery.train.bert_objectives import span_mask_row

    probs, rng, lengths = truncated_geometric(0.2, 10), np.random.default_rng(0), []
    for _ in range(200):
        maskable = np.ones(512, dtype=bool)
        maskable[[0, -1]] = False
        _, spans = span_mask_row(np.arange(512), maskable, np.ones(512, dtype=bool), 76, probs, rng, whole_words=False)
        assert sum(e - s for s, e in spans) == 76
        lengths += [e - s for s, e in spans[:-1]]  # the last span may be cut to the budget
    hist = np.bincount(lengths, minlength=11)[1:] / len(lengths)
    assert np.abs(hist - probs).max() < 0.04
    assert abs(np.mean(lengths) - probs @ np.arange(1, 11)) < 0.4


def test_sop_pairs_swap_half_and_stay_in_one_document(tok):
    s = _stream(tok)
    blocks = to_doc_blocks(s, 61, tok.sep_token_id, tok.pad_token_id)
    assert not (blocks == tok.sep_token_id).any()  # no block crosses a document boundary
    obj = make_objective("sop", {}, tok, 64)
    b = obj(blocks[:200], np.random.default_rng(0))
    assert abs(b["order_label"].float().mean().item() - 0.5) < 0.1
    ids, types = b["input_ids"], b["token_type_ids"]
    assert (ids[:, 0] == tok.cls_token_id).all() and ((ids == tok.sep_token_id).sum(1) == 2).all()
    assert (types.max(1).values == 1).all()


def test_electra_generator_dims_and_replacements(tok):
    obj = make_objective("electra", {"generator": 0.25}, tok, 64)
    m = model(ModelSpec(family="bert", layers=2, d_model=32, heads=4, d_ff=64, vocab=300))
    aux = obj.build_aux(m)
    assert obj.generator_dims(m.config) == (8, 1, 16)
    assert aux.project.out_features == 8
    b = obj(_blocks(tok, obj.raw_len, 8), np.random.default_rng(0))
    chosen = b["labels"] != IGNORE
    assert (b["input_ids"][chosen] == tok.mask_token_id).all()
    loss, n = obj.loss(m, aux, dict(b))
    assert torch.isfinite(loss) and n == chosen.sum()


# ---- losses fall on real text ----------------------------------------------------------------
KO = Path(os.environ.get("SURGERY_DATA", "/work/shared/data")) / "ko-pretrain"


def _ko_docs(n=150):
    import gzip

    path = KO / "kowiki.train.txt.gz"
    if not path.exists():
        return None
    docs = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                docs.append(line.strip()[:2000])
            if len(docs) >= n:
                break
    return docs


@pytest.fixture(scope="module")
def ko():
    if not KO.exists():
        pytest.skip(f"real Korean text not found at {KO} (set SURGERY_DATA)")
    docs = _ko_docs()
    if not docs:
        pytest.skip(f"no readable text file in {KO}")
    t = train_tokenizer(docs, "bert", 2000)
    s = np.concatenate([t(d, add_special_tokens=False)["input_ids"] + [t.sep_token_id] for d in docs])
    return t, s


@pytest.mark.parametrize("name, params", [("mlm", {}), ("mlm", {"masking": "static"}), ("span", {"sbo": True}),
                                          ("electra", {}), ("sop", {})])
def test_loss_decreases_on_korean_text(ko, name, params):
    t, stream = ko
    torch.manual_seed(0)
    obj = make_objective(name, params, t, 64, seed=0)
    blocks = (to_doc_blocks(stream, obj.raw_len, t.sep_token_id, t.pad_token_id) if name == "sop"
              else stream[: len(stream) // obj.raw_len * obj.raw_len].reshape(-1, obj.raw_len))
    m = as_model_kind(model(ModelSpec(family="bert", layers=2, d_model=64, heads=4, d_ff=128, vocab=len(t))), obj.model_kind).train()
    aux = obj.build_aux(m)
    params_ = list(m.parameters()) + (list(aux.parameters()) if aux is not None else [])
    opt = torch.optim.AdamW(params_, lr=2e-3)
    fixed = obj(blocks[:8], np.random.default_rng(99), block_ids=np.arange(8))

    def val():
        with torch.no_grad():
            return float(obj.loss(m, aux, dict(fixed))[0])

    first = val()
    for step in range(30):
        idx = np.random.default_rng(step).choice(len(blocks), 8)
        loss, _ = obj.loss(m, aux, obj(blocks[idx], np.random.default_rng([0, step]), block_ids=idx))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert val() < first * 0.9, (first, val())


# ---- compression ops -------------------------------------------------------------------------
def test_factorize_full_rank_is_exact_lower_rank_is_measured():
    s = spec("bert", layers=2, d_model=16, heads=4, d_ff=64)
    m = model(s)
    ids = batch()
    base = logits(m, ids)
    full = factorize(m, s.model_copy(update={"family": "albert", "embedding": 16})).eval()
    assert rel_change(logits(full, ids), base) < 1e-5
    low_spec = s.model_copy(update={"family": "albert", "embedding": 8})
    low = factorize(m, low_spec).eval()
    assert low.num_parameters() == low_spec.params
    assert 0 < rel_change(logits(low, ids), base) < 1.0


def test_share_and_distil_sizes_and_from_pretrained(tmp_path):
    from transformers import AlbertForMaskedLM, BertForMaskedLM

    s = spec("bert", layers=4, d_model=16, heads=4, d_ff=64)
    m = model(s)
    shared_spec = s.model_copy(update={"family": "albert", "share": "all"})
    sh = share(m, shared_spec, "mean")
    sh.save_pretrained(tmp_path / "a")
    again = AlbertForMaskedLM.from_pretrained(tmp_path / "a")
    assert again.num_parameters() == shared_spec.params and again.config.num_hidden_groups == 1
    student_spec = s.model_copy(update={"layers": 2})
    st = distil_student(m, student_spec)
    st.save_pretrained(tmp_path / "d")
    st2 = BertForMaskedLM.from_pretrained(tmp_path / "d")
    assert st2.num_parameters() == student_spec.params
    assert torch.equal(st2.bert.encoder.layer[1].output.dense.weight, m.bert.encoder.layer[2].output.dense.weight)
    assert type(load_model(tmp_path / "a")).__name__ == "AlbertForMaskedLM"


def test_paper_parameter_counts():
    """seeds/003's ALBERT table: BERT-base ~108M, ALBERT-base ~12M (V=30000, H=768, E=128)."""
    bert = ModelSpec(family="bert", layers=12, d_model=768, heads=12, d_ff=3072, vocab=30000)
    albert = ModelSpec(family="albert", layers=12, d_model=768, heads=12, d_ff=3072, vocab=30000, embedding=128, share="all")
    pooler = 768 * 768 + 768
    bert_body = bert.params - bert.param_groups()["lm head"]  # the table counts the encoder
    albert_body = albert.params - albert.param_groups()["lm head"] + pooler
    assert round(bert_body / 1e6) == 108
    assert round(albert_body / 1e6) == 12
    assert albert.param_groups()["embedding"] == 30000 * 128 + 512 * 128 + 2 * 128 + 2 * 128


# ---- plan ------------------------------------------------------------------------------------
BASE = """model B = bert(layers=4, d_model=32, heads=4, d_ff=64, vocab=300)
model S = bert(layers=2, d_model=32, heads=4, d_ff=64, vocab=300)
model F = albert(layers=4, d_model=32, heads=4, d_ff=64, vocab=300, embedding=16)
model A = albert(layers=4, d_model=32, heads=4, d_ff=64, vocab=300, embedding=16, share=all)
model W = bert(layers=4, d_model=64, heads=8, d_ff=128, vocab=300)
"""


@pytest.mark.parametrize("chain, train, message", [
    ("grow B factorize(8)@5steps F", "", r"factorize\(8\) but F has embedding=16"),
    ("grow B share@5steps A", "", r"share keeps the embedding size .*factorize first"),
    ("grow B distil@5steps W", "", r"fewer layers|keeps the width"),
    ("grow B distil(style=tinybert)@5steps W", "", r"student's layers|keeps heads"),
    ("grow B distil(style=tinybert)@5steps B", "", r"the student is the teacher's size"),
    ("grow B distil(style=tinybert, soft=3)@5steps S", "", r"takes no soft \(that is distilbert's\)"),
    ("grow B distil(style=tutor, tutor=1.5)@5steps S", "", r"tutor must be in \(0, 1\], got 1.5"),
    ("grow F d@5steps A", "", r"growing albert models is not supported yet|factorize|share"),
    ("grow S d@3steps B f@6steps W", "objective electra", r"electra with growth mid-run \(f@6steps\) is not supported yet: .* sized by d_model \(32 -> 64\)"),
    ("grow S d@3steps B f@6steps W", "objective span(sbo=true)", r"span\(sbo=true\) with growth mid-run \(f@6steps\)"),
    ("grow S d@5steps B", "objective sop", r"sop with growth mid-run \(d@5steps\) is not supported yet"),
    ("", "objective sop packing=full-sentences", r"sop needs segments from one document"),
    ("", "objective mlm(masking=sometimes)", r"masking must be one of dynamic, static"),
    ("", "objective electra(generator=2)", r"generator must be in \(0, 1\], got 2"),
])
def test_plan_rejects(chain, train, message):
    text = BASE + chain + "\n" + ("train B " if not chain else "train ") + "10steps " + train + "\n"
    with pytest.raises(RecipeError, match=message):
        build_plan(parse_recipe(text, file="x.grow"))


def test_plan_counts_compressions():
    text = BASE + 'pretrained B = "b"\ngrow B init-factorize F init-share A\ntrain 10steps objective mlm(masking=static, masks=10)\n'
    from surgery.plan.export import plan_json

    out = plan_json(build_plan(parse_recipe(text, file="x.grow")))
    fac, sh = [s for s in out["stages"] if s["kind"] == "grow"]
    assert (fac["op"], sh["op"]) == ("factorize", "share")
    assert fac["params_after"] == out["models"]["F"]["params"] < fac["params_before"]
    assert sh["params_after"] == out["models"]["A"]["params"] < sh["params_before"]
    assert out["train"]["objective"]["params"] == {"rate": 0.15, "masking": "static", "masks": 10}


@pytest.mark.parametrize("objective", ["electra", "span(sbo=true)"])
def test_depth_growth_mid_run_keeps_the_objective_modules(tmp_path, objective):
    """d(identity) mid-run with an objective that trains modules beside the model: the grown model
    computes what the small one did and the modules are kept, so the validation loss right after
    the growth equals the one right before it (a rebuilt generator or head would move it)."""
    from surgery.plan import plan_file
    from surgery.train.loop import Trainer
    from surgery.train.schedule import compile_plan

    (tmp_path / "corpus.txt").write_text("\n".join(documents(200)) + "\n")
    recipe = tmp_path / "g.grow"
    recipe.write_text(BASE + f"""grow S d(identity)@6steps B
train 10steps on "corpus.txt"
    objective {objective}
    optimizer adamw(lr=3e-3, warmup=2steps)
    batch_size=4 seq_len=32 val_every=3steps
""")
    segments, settings = compile_plan(plan_file(recipe))
    Trainer(segments, settings, tmp_path / "out", run_name="g", quiet=True, corpus_base=tmp_path).run()
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    at = [r["val_loss"] for r in rows if r.get("step") == 6 and r.get("val_loss") is not None]
    assert len(at) == 2 and abs(at[0] - at[1]) < 1e-4 * abs(at[0]), at
    assert load_model(tmp_path / "out" / "final").config.num_hidden_layers == 4
