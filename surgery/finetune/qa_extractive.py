"""KorQuAD 1.0 extractive QA: a start/end span head over the context; scored by EM and char F1.

Long contexts are cut into overlapping windows (`stride`); a window that does not hold the whole
answer is trained to point at position 0, as in SQuAD v1.1 fine-tuning. At evaluation each window
proposes its best spans (start and end in the context, end not before start, at most
`max_answer_tokens` long) and the question takes the best-scoring one, mapped back to the
context's characters through the fast tokenizer's offsets.
"""

from __future__ import annotations

import numpy as np
import torch

from surgery.errors import SurgeryError
from surgery.finetune.base import Task, cap, input_keys
from surgery.finetune.data import load_korquad
from surgery.finetune.loop import autocast, batches
from surgery.metrics import korquad_scores

N_BEST = 20


class KorquadExtractive(Task):
    name = "korquad-ext"
    head = "span"
    metrics = ("exact_match", "f1")
    max_length = 384
    data_note = (
        "KorQuAD 1.0 train set unavailable: trained and scored on a seeded 80/20 by-article split of the "
        "official dev set (not comparable in absolute terms with the paper)"
    )

    def load(self):
        p = self.params
        train, dev = load_korquad(p.train_data, p.eval_data, p.split_seed)
        return cap(train, p.limit, p.seed), {"dev": cap(dev, p.eval_cap, p.split_seed)}

    def _windows(self, examples, tokenizer):
        if not tokenizer.is_fast:
            raise SurgeryError("extractive QA needs a fast tokenizer (character offsets): save tokenizer.json with the checkpoint")
        # Questions are cut to a quarter of the window so every window keeps room for context and
        # the stride always fits (the tokenizer refuses a stride as long as the context room).
        room = self.max_length // 4
        cut = tokenizer([e.question for e in examples], add_special_tokens=False, truncation=True,
                        max_length=room, return_offsets_mapping=True)["offset_mapping"]
        questions = [e.question[: offsets[-1][1]] if offsets else e.question for e, offsets in zip(examples, cut)]
        stride = min(self.params.stride, (self.max_length - room - 4) // 2)
        return tokenizer(
            questions,
            [e.context for e in examples],
            truncation="only_second",
            max_length=self.max_length,
            stride=stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )

    def encode(self, examples, tokenizer, config):
        enc = self._windows(examples, tokenizer)
        keys = [k for k in input_keys(config) if k in enc]
        features = []
        for i, example_index in enumerate(enc["overflow_to_sample_mapping"]):
            example = examples[example_index]
            start_char = example.answer_starts[0]
            end_char = start_char + len(example.answers[0])
            offsets, seq = enc["offset_mapping"][i], enc.sequence_ids(i)
            context = [t for t, s in enumerate(seq) if s == 1]
            start = end = 0
            if context and offsets[context[0]][0] <= start_char and offsets[context[-1]][1] >= end_char:
                start = max(t for t in context if offsets[t][0] <= start_char)
                end = min(t for t in context if offsets[t][1] >= end_char)
            features.append({**{k: enc[k][i] for k in keys}, "start_positions": start, "end_positions": end})
        return features

    @torch.no_grad()
    def evaluate(self, model, tokenizer, examples, device):
        enc = self._windows(examples, tokenizer)
        keys = [k for k in input_keys(model.config) if k in enc]
        collate = self.collator(tokenizer, model)
        best: dict[int, tuple[float, str]] = {}
        windows = list(range(len(enc["input_ids"])))
        for chunk in batches(windows, self.params.eval_batch_size):
            batch = collate([{k: enc[k][i] for k in keys} for i in chunk])
            with autocast(device, self.params.bf16):
                out = model(**{k: v.to(device) for k, v in batch.items()})
            starts, ends = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
            for row, i in enumerate(chunk):
                example_index = enc["overflow_to_sample_mapping"][i]
                span = self._best_span(starts[row], ends[row], enc["offset_mapping"][i], enc.sequence_ids(i))
                if span and span[0] > best.get(example_index, (-np.inf, ""))[0]:
                    context = examples[example_index].context
                    best[example_index] = (span[0], context[span[1] : span[2]])
        predictions = [best.get(j, (0.0, ""))[1] for j in range(len(examples))]
        return korquad_scores(predictions, [e.answers for e in examples])

    def _best_span(self, start_logits, end_logits, offsets, seq):
        """(score, start char, end char) of the window's best valid span, or None."""
        n = len(seq)
        is_context = np.array([s == 1 for s in seq])
        top_starts = np.argsort(start_logits[:n])[::-1][:N_BEST]
        top_ends = np.argsort(end_logits[:n])[::-1][:N_BEST]
        found = None
        for s in top_starts:
            if not is_context[s]:
                continue
            for e in top_ends:
                if not is_context[e] or e < s or e - s + 1 > self.params.max_answer_tokens:
                    continue
                score = float(start_logits[s] + end_logits[e])
                if found is None or score > found[0]:
                    found = (score, offsets[s][0], offsets[e][1])
        return found
