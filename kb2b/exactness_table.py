"""Measured function change per op, family, head kind and ratio on tiny random models whose norm
gains and biases are perturbed away from their init (as in tests/tiny.py). Prints a markdown table.

    python kb2b/exactness_table.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
torch.set_num_threads(1)

from surgery.ops import grow_model  # noqa: E402
from tests.tiny import batch, logits, model, rel_change, spec  # noqa: E402

T5 = {"2x": dict(d_model=32, heads=8, d_ff=64), "1.5x": dict(d_model=24, heads=6, d_ff=48)}
BERT = {"2x": dict(d_model=32, heads=8, d_ff=128), "1.5x": dict(d_model=24, heads=6, d_ff=96)}
DEPTH = {"t5": dict(layers=3, decoder_layers=4), "bert": dict(layers=3)}


def change(src, dst, op, options=None):
    m = model(src)
    errs = [rel_change(logits(grow_model(m, src, dst, op, seed=s, options=options).model.eval(), batch(s)),
                       logits(m, batch(s))) for s in range(3)]
    return max(errs)


def main():
    print("| family | head | op | ratio | max relative logit change (3 seeds) |")
    print("| --- | --- | --- | --- | --- |")
    for fam, widths in (("t5", T5), ("bert", BERT)):
        heads = ["tied", "tied-unscaled", "untied"] if fam == "t5" else ["tied"]
        for head in heads:
            src = spec(fam, head=head) if fam == "t5" else spec(fam)
            for op in ("f", "l", "a"):
                for ratio, dims in widths.items():
                    print(f"| {fam} | {head} | {op} | {ratio} | {change(src, src.model_copy(update=dims), op):.1e} |")
            deeper = src.model_copy(update=DEPTH[fam])
            print(f"| {fam} | {head} | d (stack) | depth | {change(src, deeper, 'd'):.1e} |")
            print(f"| {fam} | {head} | d(identity) | depth | {change(src, deeper, 'd', {'depth': 'identity'}):.1e} |")
            for ratio, dims in widths.items():
                print(f"| {fam} | {head} | dl | depth + {ratio} | {change(src, deeper.model_copy(update=dims), 'dl'):.1e} |")


if __name__ == "__main__":
    main()
