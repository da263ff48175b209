"""The Table 2 average: which columns the paper averages, checked on all 11 rows of seeds/000."""

import pytest

from surgery.errors import SurgeryError
from surgery.metrics import table2_average

# NLI acc, Ext EM, Ext F1, Gen EM, Gen F1, ROUGE-L F1, reported average (Table 2, rows 1-11)
ROWS = [
    (66.63, 63.44, 76.88, 67.94, 80.83, 40.72, 66.27),
    (68.60, 72.67, 84.15, 71.27, 83.91, 40.94, 69.40),
    (68.17, 74.61, 85.49, 71.51, 84.22, 40.98, 69.71),
    (69.33, 76.48, 87.01, 72.77, 85.41, 40.78, 70.63),
    (70.73, 76.65, 87.09, 72.79, 85.06, 40.74, 70.91),
    (68.60, 74.61, 85.41, 71.20, 84.23, 40.72, 69.74),
    (69.57, 73.81, 84.77, 73.81, 85.50, 40.86, 70.17),
    (71.93, 75.37, 86.00, 75.63, 86.97, 41.04, 71.49),
    (72.13, 74.77, 85.87, 75.65, 87.15, 41.21, 71.59),
    (71.07, 77.00, 87.11, 75.94, 87.60, 41.03, 71.70),
    (72.20, 78.07, 88.39, 76.17, 87.88, 40.97, 72.36),
]


def as_results(row):
    nli, ext_em, ext_f1, gen_em, gen_f1, rouge, _ = row
    return {
        "klue-nli": {"accuracy": nli},
        "korquad-ext": {"exact_match": ext_em, "f1": ext_f1},
        "korquad-gen": {"exact_match": gen_em, "f1": gen_f1},
        "news-summ": {"rouge_l": rouge},
    }


@pytest.mark.parametrize("row", ROWS, ids=[f"row{i}" for i in range(1, 12)])
def test_average_reproduces_every_row(row):
    assert table2_average(as_results(row)) == pytest.approx(row[6], abs=0.0051)


def test_six_column_mean_does_not():
    misses = [abs(sum(r[:6]) / 6 - r[6]) for r in ROWS]
    assert max(misses) > 1.5 and sum(m > 0.5 for m in misses) == 10


def test_missing_task_is_a_user_error():
    results = as_results(ROWS[0])
    del results["news-summ"]
    with pytest.raises(SurgeryError, match="news-summ rouge_l"):
        table2_average(results)
