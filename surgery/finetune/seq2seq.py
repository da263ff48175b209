"""What the generative tasks share: text-to-text features, teacher-forced training, `generate`."""

from __future__ import annotations

import torch

from surgery.finetune.base import Task
from surgery.finetune.loop import autocast, batches


class TextToText(Task):
    head = "seq2seq"
    needs_encoder_decoder = True

    def source_text(self, example) -> str:
        raise NotImplementedError

    def target_text(self, example) -> str:
        raise NotImplementedError

    def encode(self, examples, tokenizer, config):
        enc = tokenizer([self.source_text(e) for e in examples], truncation=True, max_length=self.max_length)
        labels = tokenizer(
            text_target=[self.target_text(e) for e in examples], truncation=True, max_length=self.max_target_length
        )["input_ids"]
        return [
            {"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": labels[i]}
            for i in range(len(examples))
        ]

    def collator(self, tokenizer, model):
        from transformers import DataCollatorForSeq2Seq

        # With the model given, the collator also builds decoder_input_ids (labels shifted right).
        return DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)

    @torch.no_grad()
    def generate(self, model, tokenizer, examples, device) -> list[str]:
        out = []
        for chunk in batches(list(examples), self.params.eval_batch_size):
            enc = tokenizer(
                [self.source_text(e) for e in chunk],
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            )
            with autocast(device, self.params.bf16):
                ids = model.generate(
                    input_ids=enc["input_ids"].to(device),
                    attention_mask=enc["attention_mask"].to(device),
                    max_new_tokens=self.max_target_length,
                    num_beams=self.params.num_beams,
                    do_sample=False,
                )
            out.extend(t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True))
        return out
