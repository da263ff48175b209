"""`surgery report` reads what `surgery run` and `surgery finetune` write."""

import json

from surgery.report import build_table, load_run


def fake_run(root, name, wall_s, curve, scores):
    d = root / name
    (d / "finetune").mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"wall_s": wall_s, "steps": 10, "tokens": 100, "final_val_loss": curve[-1][1]}))
    (d / "metrics.jsonl").write_text("".join(json.dumps({"wall_s": t, "step": i, "val_loss": v}) + "\n" for i, (t, v) in enumerate(curve)))
    for task, s in scores.items():
        (d / "finetune" / task).mkdir()
        # as surgery.finetune writes it: the scores nested under "scores", beside numbers that are not scores
        (d / "finetune" / task / "scores.json").write_text(json.dumps({"task": task, "scores": s, "eval_seconds": 1.5}))
    return d


def test_scores_nested_as_finetune_writes_them_reach_the_table(tmp_path):
    scores = {"klue-nli": {"accuracy": 40.0}, "korquad-ext": {"exact_match": 10.0, "f1": 20.0},
              "korquad-gen": {"exact_match": 5.0, "f1": 30.0}, "news-summ": {"rouge_l": 10.0, "rouge_l_news": 8.0}}
    b = load_run(fake_run(tmp_path, "B", 100.0, [(0, 9.0), (50, 6.0), (100, 5.0)], scores))
    g = load_run(fake_run(tmp_path, "G", 90.0, [(0, 6.0), (30, 5.0), (90, 4.0)], {}))
    assert b.scores["klue-nli"] == {"accuracy": 40.0} and "eval_seconds" not in b.scores["klue-nli"]
    assert b.average == (40 + 20 + 30 + 10) / 4
    header, body = build_table([b, g], "B")
    row = dict(zip(header, body[0]))
    assert row["NLI Acc"] == "40.00" and row["Ext F1"] == "20.00" and row["Avrg. score"] == "25.00"
    assert dict(zip(header, body[1]))["To Base loss (/Base)"] == "30.00"  # G first reaches 5.0 at 30 s of B's 100 s
