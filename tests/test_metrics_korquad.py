"""KorQuAD 1.0 EM / character F1 on hand-checked examples (expected values worked out in comments)."""

import pytest

from surgery.metrics import korquad_scores, normalize_answer, qa_exact_match, qa_f1


def test_identical_answer():
    assert qa_exact_match("1989년 2월 15일", "1989년 2월 15일") == 1.0
    assert qa_f1("1989년 2월 15일", "1989년 2월 15일") == 1.0


def test_korean_brackets_and_quotes_are_spaces():
    # 《임종석》 -> " 임종석 " -> "임종석"; 'A(B)' -> 'a b ' -> "a b" (replaced by spaces, not deleted)
    assert normalize_answer("《임종석》") == "임종석"
    assert normalize_answer("A(B)") == "a b"
    assert qa_exact_match("‘임종석’", "임종석") == 1.0


def test_ascii_punctuation_is_deleted():
    # '.' is ASCII punctuation and deleted outright: "U.S.A" -> "usa"
    assert normalize_answer("U.S.A") == "usa"
    assert qa_exact_match("약 3.5%", "약 35") == 1.0


def test_partial_answer_character_f1():
    # pred chars 1 9 8 9 년 2 월 (7); gold 1 9 8 9 년 2 월 1 5 일 (10); overlap 7
    # P = 7/7 = 1, R = 7/10 = 0.7, F1 = 2*0.7/1.7 = 0.8235294
    assert qa_exact_match("1989년 2월", "1989년 2월 15일") == 0.0
    assert qa_f1("1989년 2월", "1989년 2월 15일") == pytest.approx(14 / 17)


def test_spacing_counts_for_em_not_for_f1():
    # normalized "2월15일" != "2월 15일", but both are the characters 2 월 1 5 일
    assert qa_exact_match("2월15일", "2월 15일") == 0.0
    assert qa_f1("2월15일", "2월 15일") == 1.0


def test_curly_double_quotes_are_kept_as_the_official_script_does():
    # “ and ” are neither in the Korean mark list nor ASCII punctuation: pred chars “ 서 울 ” (4),
    # gold 서 울 (2), overlap 2: P = 0.5, R = 1, F1 = 2*0.5/1.5 = 2/3
    assert qa_exact_match("“서울”", "서울") == 0.0
    assert qa_f1("“서울”", "서울") == pytest.approx(2 / 3)


def test_no_overlap_and_empty_prediction():
    assert qa_f1("부산", "서울") == 0.0
    assert qa_f1("", "서울") == 0.0
    assert qa_exact_match("", "서울") == 0.0


def test_corpus_scores_take_best_gold_and_average():
    # q1: "세종" vs "세종대왕": overlap 2, P 1, R 0.5, F1 2/3; q2 best gold is the exact one: EM 1, F1 1
    scores = korquad_scores(["세종", "1989년 2월"], [["세종대왕"], ["1989년 2월 15일", "1989년 2월"]])
    assert scores["exact_match"] == pytest.approx(50.0)
    assert scores["f1"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    # without the second gold, q2 is the 14/17 case above: F1 = (2/3 + 14/17)/2 = 74.5098...
    scores = korquad_scores(["세종", "1989년 2월"], [["세종대왕"], ["1989년 2월 15일"]])
    assert scores == {"exact_match": 0.0, "f1": pytest.approx(74.50980392)}


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        korquad_scores(["a"], [])
