"""KorQuAD 1.0 exact match and F1, computed the way its official evaluation script does.

That script is SQuAD v1.1's with two Korean changes, both kept here:
- normalization first turns quotes and brackets common in Korean text (' " 《 》 < > 〈 〉 ( ) ‘ ’)
  into spaces, then lowercases, deletes ASCII punctuation and collapses whitespace; SQuAD's English
  article removal (a/an/the) is not done;
- F1 counts characters, not words (Korean words carry particles, so word overlap is too harsh):
  the multiset of non-space characters of the normalized prediction against the gold's.
Exact match compares the normalized strings, so inner spacing still matters to EM ("2월 15일" is
not "2월15일") while F1 ignores it. A question's score is its best over the gold answers; a data
set's is the mean, times 100.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Iterable, Sequence

# Replaced by a space (not deleted), before lowercasing, as the official script does.
_KOREAN_MARKS = str.maketrans({ch: " " for ch in "'\"《》<>〈〉()‘’"})
_ASCII_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    text = text.translate(_KOREAN_MARKS).lower().translate(_ASCII_PUNCT)
    return " ".join(text.split())


def qa_exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def qa_f1(prediction: str, gold: str) -> float:
    pred_chars = [c for c in normalize_answer(prediction) if not c.isspace()]
    gold_chars = [c for c in normalize_answer(gold) if not c.isspace()]
    same = sum((Counter(pred_chars) & Counter(gold_chars)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_chars), same / len(gold_chars)
    return 2 * precision * recall / (precision + recall)


def korquad_scores(predictions: Sequence[str], golds: Sequence[Iterable[str]]) -> dict[str, float]:
    """`{"exact_match", "f1"}` in percent; `golds[i]` holds every gold answer of question i."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} questions")
    if not predictions:
        return {"exact_match": 0.0, "f1": 0.0}
    em = f1 = 0.0
    for pred, answers in zip(predictions, golds):
        answers = list(answers)
        em += max(qa_exact_match(pred, a) for a in answers)
        f1 += max(qa_f1(pred, a) for a in answers)
    n = len(predictions)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}
