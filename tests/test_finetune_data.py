"""Task data: shared files (skipped when absent), local files, the substitutes, user errors."""

import json

import pytest

from surgery.errors import SurgeryError
from surgery.finetune import data
from tests.finetune_fixtures import write_own_task_files


def need(key):
    path = data.shared_file(key)
    if not path.is_file():
        pytest.skip(f"shared data not present: {path} (set SURGERY_DATA)")
    return path


def test_klue_nli_dev():
    need("klue-nli/dev")
    dev = data.load_nli(None, "dev")
    assert len(dev) == 3000
    assert {e.label for e in dev} == {0, 1, 2}
    assert all(e.premise and e.hypothesis for e in dev[:20])


def test_korquad_article_split_is_deterministic_disjoint_and_80_20():
    need("korquad/dev")
    train, dev = data.load_korquad(None, None, split_seed=0)
    again_train, again_dev = data.load_korquad(None, None, split_seed=0)
    assert [q.id for q in train] == [q.id for q in again_train] and [q.id for q in dev] == [q.id for q in again_dev]
    train_articles, dev_articles = {q.article for q in train}, {q.article for q in dev}
    assert not train_articles & dev_articles
    assert (len(train_articles), len(dev_articles)) == (112, 28)  # 140 articles, 80/20
    assert len(train) + len(dev) == 5774 and 0.7 < len(train) / 5774 < 0.87
    assert not {q.context for q in train} & {q.context for q in dev}
    other_train, _ = data.load_korquad(None, None, split_seed=1)
    assert {q.article for q in other_train} != train_articles
    for q in dev[:50]:
        start = q.answer_starts[0]
        assert q.context[start : start + len(q.answers[0])] == q.answers[0]


def test_split_articles_sizes():
    train, dev = data.split_articles(10, seed=3)
    assert len(train) == 8 and len(dev) == 2 and sorted(train + dev) == list(range(10))
    assert data.split_articles(10, seed=3) == (train, dev)


def test_lead_sentence_split():
    article = "세종대왕은 조선의 네 번째 왕이다. 그는 J. R. 스미스와 무관하며 3.5배 많은 일을 했다. 훈민정음을 만들었다."
    lead, rest = data.lead_split(article, min_rest=10)
    assert lead == "세종대왕은 조선의 네 번째 왕이다."
    assert rest.startswith("그는 J. R.")
    assert data.lead_split("마침표가 없는 글") is None
    assert data.lead_split("짧다. " + "가" * 80) is None  # lead under 10 characters


def test_summarization_sets():
    need("kowiki/valid")
    valid = data.load_summ(None, "kowiki/valid", None, "valid")
    assert 300 < len(valid) <= 327
    assert all(e.target.endswith((".", "!", "?")) and len(e.source) >= 50 for e in valid)
    need("sci-news")
    news = data.load_summ(None, "sci-news", None, "news")
    assert len(news) == 50 and all(e.target and len(e.target) < len(e.source) for e in news)


def test_local_files_in_shared_formats(tmp_path):
    files = write_own_task_files(tmp_path)
    nli = data.load_nli(files["nli"], "train")
    assert len(nli) == 16 and nli[0].label == 0
    train, dev = data.load_korquad(files["squad"], files["squad"], 0)
    assert len(train) == len(dev) > 0
    summ = data.load_summ(files["wiki"], "kowiki/train", 3, "x")
    assert len(summ) == 3 and summ[0].target == "오늘은 날씨가 맑고 바람이 시원하다."
    news = data.load_summ(files["news"], "sci-news", None, "x")
    assert news[0].target.split(" ")[0] == "오늘은"


def test_missing_and_corrupt_data_are_user_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("SURGERY_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(SurgeryError, match="SURGERY_DATA"):
        data.load_nli(None, "dev")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(SurgeryError, match="not valid JSON"):
        data.load_nli(bad, "dev")
    bad.write_text(json.dumps([{"premise": "가", "hypothesis": "나", "gold_label": "maybe"}]), encoding="utf-8")
    with pytest.raises(SurgeryError, match="maybe"):
        data.load_nli(bad, "dev")
    bad.write_text(json.dumps({"data": [{"title": "t"}]}), encoding="utf-8")
    with pytest.raises(SurgeryError, match="SQuAD"):
        data.load_korquad(None, bad, 0)


def test_hub_names():
    assert data.hub_name("hf:klue:nli") == ("klue", "nli")
    assert data.hub_name("squad_kor_v1") is None  # a bare word is a (missing) path, not a hub name
    assert data.hub_name("KorQuAD/squad_kor_v1") == ("KorQuAD/squad_kor_v1", None)
    assert data.hub_name("data/train.json") is None


def test_default_root_is_beside_the_repo(monkeypatch):
    monkeypatch.delenv("SURGERY_DATA", raising=False)
    assert data.data_root().parts[-2:] == ("shared", "data")
