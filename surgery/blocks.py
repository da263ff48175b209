"""How many corpus tokens one training block holds, per objective: what `surgery plan` counts as
tokens and what the loop logs, from one function. No torch here (the plan imports it).

A block is cut from the packed corpus and then wrapped by the objective: BERT objectives add
[CLS] and [SEP] (sentence order: [CLS] A [SEP] B [SEP]); T5 span corruption replaces each masked
span by one sentinel and appends </s>, so its block is longer than seq_len; causal LM uses
seq_len tokens as they are.
"""

from __future__ import annotations


def t5_span_lengths(raw_len: int, rate: float, mean_span: float) -> tuple[int, int, int, int]:
    """(noise tokens, spans, input length, target length) for one block, as T5 computes them."""
    noise = max(1, min(raw_len - 1, round(raw_len * rate)))
    spans = max(1, round(noise / mean_span))
    return noise, spans, raw_len - noise + spans + 1, noise + spans + 1


def t5_raw_len(seq_len: int, rate: float, mean_span: float) -> int:
    """The longest raw block whose corrupted form fits seq_len."""
    raw = seq_len
    while t5_span_lengths(raw + 1, rate, mean_span)[2] <= seq_len:
        raw += 1
    return raw


# specials an objective wraps a block in (objectives not listed use the block as it is)
_SPECIALS_IN_BLOCK = {"mlm": 2, "span": 2, "electra": 2, "sop": 3}


def raw_block_len(objective: str, seq_len: int, params: dict) -> int:
    """Corpus tokens per block for `objective` at model input length `seq_len`."""
    if objective == "span_corruption":
        return t5_raw_len(seq_len, params.get("rate", 0.15), params.get("mean_span", 3.0))
    return seq_len - _SPECIALS_IN_BLOCK.get(objective, 0)
