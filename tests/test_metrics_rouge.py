"""ROUGE-L F1 on Korean text, with hand-computed values; and why rouge-score is not used."""

import pytest

from surgery.metrics import rouge_l, rouge_l_corpus, rouge_tokens


def test_korean_words_subsequence():
    # ref 5 eojeol, pred 3, all three in order in ref: LCS 3, P = 1, R = 3/5, F1 = 2*0.6/1.6 = 0.75
    score = rouge_l("연구진은 결과를 발표했다", "연구진은 실험 결과를 학술지에 발표했다")
    assert score.precision == 1.0 and score.recall == pytest.approx(0.6)
    assert score.f1 == pytest.approx(0.75)


def test_order_matters():
    # tokens [부산, 서울] vs [서울, 부산]: LCS 1, P = R = 1/2, F1 = 0.5
    assert rouge_l("부산 서울", "서울 부산").f1 == pytest.approx(0.5)


def test_punctuation_separates_and_is_dropped():
    assert rouge_tokens("서울, 부산. (2020년)") == ["서울", "부산", "2020년"]
    assert rouge_l("서울, 부산.", "서울 부산").f1 == 1.0


def test_character_unit():
    # 고양이가 잔다 / 고양이는 잔다: chars 고 양 이 가 잔 다 vs 고 양 이 는 잔 다, LCS 5, P = R = 5/6
    assert rouge_l("고양이가 잔다", "고양이는 잔다", unit="char").f1 == pytest.approx(5 / 6)
    # the same pair on words shares only 잔다: P = R = 1/2
    assert rouge_l("고양이가 잔다", "고양이는 잔다").f1 == pytest.approx(0.5)


def test_empty_and_corpus_mean():
    assert rouge_l("", "서울").f1 == 0.0
    assert rouge_l("서울", "").f1 == 0.0
    # mean of 0.75 and 0.5, in percent
    corpus = rouge_l_corpus(["연구진은 결과를 발표했다", "부산 서울"], ["연구진은 실험 결과를 학술지에 발표했다", "서울 부산"])
    assert corpus == pytest.approx(62.5)


def test_rouge_score_package_drops_hangul():
    rouge_scorer = pytest.importorskip(
        "rouge_score.rouge_scorer", reason="rouge-score not installed: its tokenizer keeps only [a-z0-9], see surgery/metrics/rouge.py"
    )
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    # two near-identical Korean sentences: rouge-score sees no tokens at all and scores 0
    assert scorer.score("연구진은 실험 결과를 발표했다", "연구진은 실험 결과를 발표했다")["rougeL"].fmeasure == 0.0
    assert rouge_l("연구진은 실험 결과를 발표했다", "연구진은 실험 결과를 발표했다").f1 == 1.0
