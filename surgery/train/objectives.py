"""Pretraining objectives: how a block of packed token ids becomes a model input and its labels.

Every objective draws its randomness from the generator it is handed, and the loop derives that
generator from (seed, step): masking is dynamic (new every time a block is seen, as RoBERTa) and a
resumed run sees exactly the masks an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from surgery.blocks import t5_raw_len, t5_span_lengths

IGNORE = -100


def _sentinel_ids(tokenizer) -> list[int]:
    ids = []
    while True:
        tid = tokenizer.convert_tokens_to_ids(f"<extra_id_{len(ids)}>")
        if tid is None or tid == tokenizer.unk_token_id:
            return ids
        ids.append(tid)


class Objective:
    """What the loop asks of every pretraining objective (each one entry of surgery.catalog.OBJECTIVES,
    whose `impl` names its class):

    - `raw_len`: corpus tokens per block; calling it on blocks (and an rng) gives the model's batch;
    - `model_kind`: the class it trains ("mlm": *ForMaskedLM, "pretraining": *ForPreTraining with
      the sentence-order head, "lm": the family's LM class as built);
    - `mask_id`: the mask token distillation reuses (None where the objective masks nothing);
    - `build_aux(model)`: modules trained beside the model (a generator, a head), or None;
    - `loss(model, aux, batch)`: (mean loss, tokens it is averaged over, an int or a 0-dim tensor
      left on the device); the model's own by default.
    """

    raw_len: int
    model_kind: str = "lm"
    mask_id: int | None = None
    packing_required: str | None = None

    def build_aux(self, model):
        return None

    def loss(self, model, aux, batch):
        out = model(**batch)
        # the count stays on the device: training never reads it, validation reads it once
        return out.loss, (batch["labels"] != IGNORE).sum()


@dataclass
class SpanCorruption(Objective):
    """T5's objective: replace random spans (15% of tokens, mean length 3) with sentinels; the
    target lists each sentinel followed by the tokens it hid."""

    tokenizer: object
    seq_len: int
    rate: float = 0.15
    mean_span: float = 3.0
    seed: int = 0  # the masks come from the rng the loop hands over, a function of (seed, step)
    family: str = "t5"

    def __post_init__(self):
        self.sentinels = _sentinel_ids(self.tokenizer)
        self.eos = self.tokenizer.eos_token_id
        self.pad = self.tokenizer.pad_token_id
        raw = self.raw_len = t5_raw_len(self.seq_len, self.rate, self.mean_span)
        _, spans, _, self.target_len = t5_span_lengths(raw, self.rate, self.mean_span)
        if spans > len(self.sentinels):
            raise ValueError(f"seq_len {self.seq_len} needs {spans} sentinels; the tokenizer has {len(self.sentinels)}")

    def _mask(self, rng: np.random.Generator) -> np.ndarray:
        noise, spans, _, _ = t5_span_lengths(self.raw_len, self.rate, self.mean_span)

        def partition(total: int) -> np.ndarray:  # `spans` positive parts summing to total
            cuts = np.sort(rng.choice(np.arange(1, total), spans - 1, replace=False)) if spans > 1 else []
            return np.diff(np.concatenate([[0], cuts, [total]])).astype(int)

        noise_lens, keep_lens = partition(noise), partition(self.raw_len - noise)
        mask = np.zeros(self.raw_len, dtype=bool)
        pos = 0
        for keep, hide in zip(keep_lens, noise_lens):  # always start with kept text
            pos += keep
            mask[pos : pos + hide] = True
            pos += hide
        return mask

    def __call__(self, blocks: np.ndarray, rng: np.random.Generator, block_ids=None, epoch=0) -> dict[str, torch.Tensor]:
        inputs, targets = [], []
        for row in blocks:
            mask = self._mask(rng)
            starts = mask & ~np.concatenate([[False], mask[:-1]])
            span_id = np.cumsum(starts) - 1
            inp, tgt = [], []
            for tok, m, s, sid in zip(row, mask, starts, span_id):
                if not m:
                    inp.append(tok)
                elif s:
                    inp.append(self.sentinels[sid])
                    tgt.append(self.sentinels[sid])
                if m:
                    tgt.append(tok)
            inputs.append(inp + [self.eos])
            targets.append(tgt + [self.eos])
        input_ids = _pad(inputs, self.seq_len, self.pad)
        labels = _pad(targets, self.target_len, IGNORE)
        return {"input_ids": input_ids, "attention_mask": (input_ids != self.pad).long(), "labels": labels}


@dataclass
class CausalLM(Objective):
    """Causal language modelling (GPT-2, Llama): predict every next token of a packed block. The
    labels are the input ids (the model shifts them) with padding ignored; packed blocks have none,
    but the rule keeps padded batches right."""

    tokenizer: object
    seq_len: int
    seed: int = 0  # nothing random: every next token is a label
    family: str = "gpt2"

    def __post_init__(self):
        self.raw_len = self.seq_len
        self.pad = self.tokenizer.pad_token_id

    def __call__(self, blocks: np.ndarray, rng: np.random.Generator, block_ids=None, epoch=0) -> dict[str, torch.Tensor]:
        input_ids = torch.from_numpy(np.asarray(blocks, dtype=np.int64))
        keep = input_ids != self.pad if self.pad is not None else torch.ones_like(input_ids, dtype=torch.bool)
        return {"input_ids": input_ids, "attention_mask": keep.long(), "labels": torch.where(keep, input_ids, IGNORE)}


def _pad(rows: list[list[int]], length: int, value: int) -> torch.Tensor:
    out = torch.full((len(rows), length), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r[:length], dtype=torch.long)
    return out


# Recipe argument names that are not Python identifiers (or read better in the recipe).
_RENAMES = {"lambda": "lam"}


def make_objective(name: str, params: dict, tokenizer, seq_len: int, seed: int = 0) -> Objective:
    """The objective `name` (its registry entry's implementation) with the recipe's params and the
    run's seed."""
    from surgery.catalog import OBJECTIVES, resolve

    params = {_RENAMES.get(k, k): v for k, v in params.items()}
    return resolve(OBJECTIVES[name].impl)(tokenizer=tokenizer, seq_len=seq_len, seed=seed, **params)
