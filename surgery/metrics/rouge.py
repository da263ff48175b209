"""ROUGE-L F1 for Korean (and any script).

The usual package, rouge-score, lowercases and then keeps only [a-z0-9] runs as tokens, so a Hangul
sentence becomes an empty token list and scores 0 against anything (tests show it when the package
is installed). Here tokens are runs of Unicode letters and digits (`str.isalnum`), everything else
separates them; so eojeol (space-separated Korean words) are the units, with punctuation cut off.
`unit="char"` scores characters instead (no spaces), more lenient to Korean particles and endings.

ROUGE-L is the longest common subsequence (LCS) of the two token lists: precision = LCS/|pred|,
recall = LCS/|ref|, F1 their harmonic mean (beta = 1), over the whole text as one sequence (like
rouge-score's `rougeL`, not the sentence-union `rougeLsum`). A corpus score is the mean F1 x 100.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

Unit = Literal["word", "char"]


class RougeL(NamedTuple):
    precision: float
    recall: float
    f1: float


def rouge_tokens(text: str, unit: Unit = "word") -> list[str]:
    kept = "".join(ch if ch.isalnum() else " " for ch in text.lower())
    if unit == "char":
        return [ch for ch in kept if not ch.isspace()]
    if unit == "word":
        return kept.split()
    raise ValueError(f"unit must be 'word' or 'char', not {unit!r}")


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    # One row of the dynamic programme, over the shorter sequence.
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, start=1):
            above = row[j]
            row[j] = diagonal + 1 if x == y else max(above, row[j - 1])
            diagonal = above
    return row[-1]


def rouge_l(prediction: str, reference: str, unit: Unit = "word") -> RougeL:
    pred, ref = rouge_tokens(prediction, unit), rouge_tokens(reference, unit)
    lcs = lcs_length(pred, ref) if pred and ref else 0
    if lcs == 0:
        return RougeL(0.0, 0.0, 0.0)
    precision, recall = lcs / len(pred), lcs / len(ref)
    return RougeL(precision, recall, 2 * precision * recall / (precision + recall))


def rouge_l_corpus(predictions: Sequence[str], references: Sequence[str], unit: Unit = "word") -> float:
    """Mean ROUGE-L F1 over the pairs, in percent."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return 0.0
    return 100.0 * sum(rouge_l(p, r, unit).f1 for p, r in zip(predictions, references)) / len(predictions)
