"""Scores of the fine-tuning tasks, written for Korean text: this project's own metrics.

- `korquad`: exact match and character-level F1 as the official KorQuAD 1.0 evaluation computes them.
- `rouge`: ROUGE-L F1 (longest common subsequence) on Unicode-aware tokens, so Hangul counts.
- `table2`: the paper's average score, and which columns it averages.
"""

from surgery.metrics.korquad import (
    korquad_scores,
    normalize_answer,
    qa_exact_match,
    qa_f1,
)
from surgery.metrics.rouge import RougeL, rouge_l, rouge_l_corpus, rouge_tokens
from surgery.metrics.table2 import TABLE2_AVERAGED, table2_average

__all__ = [
    "korquad_scores",
    "normalize_answer",
    "qa_exact_match",
    "qa_f1",
    "RougeL",
    "rouge_l",
    "rouge_l_corpus",
    "rouge_tokens",
    "TABLE2_AVERAGED",
    "table2_average",
]
