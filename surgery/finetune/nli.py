"""KLUE-NLI: premise and hypothesis in, one of three labels out; scored by accuracy."""

from __future__ import annotations

import torch

from surgery.finetune.base import Task, cap, input_keys
from surgery.finetune.data import NLI_LABELS, load_nli
from surgery.finetune.loop import autocast, batches


class KlueNli(Task):
    name = "klue-nli"
    head = "classification"
    metrics = ("accuracy",)
    max_length = 128
    data_note = "KLUE-NLI v1.1: train on train, score on dev (the test set is not public)"

    def load(self):
        p = self.params
        train = cap(load_nli(p.train_data, "train"), p.limit, p.seed)
        dev = cap(load_nli(p.eval_data, "dev"), p.eval_cap, p.split_seed)
        return train, {"dev": dev}

    def head_config(self):
        return {
            "num_labels": len(NLI_LABELS),
            "id2label": dict(enumerate(NLI_LABELS)),
            "label2id": {name: i for i, name in enumerate(NLI_LABELS)},
        }

    def encode(self, examples, tokenizer, config):
        enc = tokenizer(
            [e.premise for e in examples], [e.hypothesis for e in examples], truncation=True, max_length=self.max_length
        )
        keys = [k for k in input_keys(config) if k in enc]
        return [{**{k: enc[k][i] for k in keys}, "labels": e.label} for i, e in enumerate(examples)]

    @torch.no_grad()
    def evaluate(self, model, tokenizer, examples, device):
        features = self.encode(examples, tokenizer, model.config)
        collate = self.collator(tokenizer, model)
        correct = 0
        for chunk in batches(features, self.params.eval_batch_size):
            batch = {k: v.to(device) for k, v in collate(chunk).items()}
            labels = batch.pop("labels")
            with autocast(device, self.params.bf16):
                logits = model(**batch).logits
            correct += (logits.argmax(-1) == labels).sum().item()
        return {"accuracy": 100.0 * correct / max(1, len(features))}
