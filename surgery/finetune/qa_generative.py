"""KorQuAD 1.0 generative QA: the encoder-decoder writes the answer; EM and char F1 on its text."""

from __future__ import annotations

from surgery.finetune.base import cap
from surgery.finetune.data import load_korquad
from surgery.finetune.qa_extractive import KorquadExtractive
from surgery.finetune.seq2seq import TextToText
from surgery.metrics import korquad_scores


class KorquadGenerative(TextToText):
    name = "korquad-gen"
    metrics = ("exact_match", "f1")
    max_length = 512
    max_target_length = 32
    data_note = KorquadExtractive.data_note

    def load(self):
        p = self.params
        train, dev = load_korquad(p.train_data, p.eval_data, p.split_seed)
        return cap(train, p.limit, p.seed), {"dev": cap(dev, p.eval_cap, p.split_seed)}

    def source_text(self, example):
        # Question first, so truncating a long input cuts the context's end, never the question.
        return f"question: {example.question} context: {example.context}"

    def target_text(self, example):
        return example.answers[0]

    def evaluate(self, model, tokenizer, examples, device):
        predictions = self.generate(model, tokenizer, examples, device)
        return korquad_scores(predictions, [e.answers for e in examples])
