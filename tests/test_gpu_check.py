"""bench/gpu_check.py in its CPU mode: the table's numbers are there and growth behaves (the GPU
figures themselves need a GPU: `python bench/gpu_check.py`)."""

import importlib.util
from pathlib import Path

import torch


def test_gpu_check_small_mode_measures_both_loops_and_a_growth(capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", Path(__file__).parent.parent / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    threads = torch.get_num_threads()
    try:
        rows = gpu_check.main(["--small"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert [r["model"] for r in rows] == ["t5-tiny", "bert-tiny"]
    for r in rows:
        assert r["loop_tok_s"] > 0 and r["hand_tok_s"] > 0 and r["two_proc_tok_s"] is None  # one CPU process
        assert r["loop_mfu"] is None  # no GPU peak to divide by on CPU
    # d(identity) on pre-norm T5 is exactly function-preserving: the loss does not move at the growth.
    t5 = rows[0]
    assert abs(t5["val_before_grow"] - t5["val_after_grow"]) <= 1e-5
    assert "val before->after grow" in out and out.count("tiny ") >= 2
