"""The "Avrg. score" column of Table 2 in the Ko-bert2BERT study (seeds/000).

It is not the mean of all six score columns. Checked on all 11 rows, the reported average equals
the mean of four numbers, NLI accuracy, extractive F1, generative F1 and ROUGE-L F1, to within
rounding (|difference| <= 0.005 on every row), while the six-column mean misses by -0.20 to +1.59
(row 1: six-column mean 66.07 against the reported 66.27; four-column mean 66.265). So the paper
counts each task once, QA by its F1, and leaves the EM columns out. tests/test_metrics_table2.py
re-checks every row.
"""

from __future__ import annotations

from collections.abc import Mapping

from surgery.errors import SurgeryError

# (task, score) pairs the paper averages, in Table 2's column order.
TABLE2_AVERAGED: tuple[tuple[str, str], ...] = (
    ("klue-nli", "accuracy"),
    ("korquad-ext", "f1"),
    ("korquad-gen", "f1"),
    ("news-summ", "rouge_l"),
)


def table2_average(results: Mapping[str, Mapping[str, float]]) -> float:
    """The Table 2 average from `{task: {score: value}}`, e.g. the scores `finetune` returns."""
    missing = [f"{task} {score}" for task, score in TABLE2_AVERAGED if score not in results.get(task, {})]
    if missing:
        raise SurgeryError(f"the Table 2 average needs {', '.join(missing)}: fine-tune those tasks first")
    return sum(float(results[task][score]) for task, score in TABLE2_AVERAGED) / len(TABLE2_AVERAGED)
