"""What every fine-tuning task provides (each task is a subclass in its own module)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from surgery.finetune.params import FinetuneParams


class Task:
    """One downstream task: its data, how examples become features, its head and its scores."""

    name: ClassVar[str]
    head: ClassVar[str]  # 'classification', 'span' or 'seq2seq' (see heads.load_head)
    metrics: ClassVar[tuple[str, ...]]
    needs_encoder_decoder: ClassVar[bool] = False
    max_length: ClassVar[int] = 512
    max_target_length: ClassVar[int] = 64
    data_note: ClassVar[str] = ""

    def __init__(self, params: FinetuneParams):
        self.params = params
        self.max_length = params.max_length or type(self).max_length
        self.max_target_length = params.max_target_length or type(self).max_target_length

    def load(self) -> tuple[list, dict[str, list]]:
        """(training examples, {eval set name: examples}); the first eval set is the task's score."""
        raise NotImplementedError

    def head_config(self) -> dict[str, Any]:
        return {}

    def encode(self, examples: Sequence, tokenizer, config) -> list[dict]:
        raise NotImplementedError

    def collator(self, tokenizer, model) -> Callable:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def evaluate(self, model, tokenizer, examples: Sequence, device) -> dict[str, float]:
        raise NotImplementedError


def cap(examples: list, n: int | None, seed: int) -> list:
    """At most n examples: a seeded sample kept in file order, so a `--limit` run is not one genre
    or a few articles (KLUE-NLI's train file runs genre by genre)."""
    if n is None or len(examples) <= n:
        return examples
    import random

    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def input_keys(config) -> tuple[str, ...]:
    # Segment ids only for models that have a segment embedding (BERT); T5 has none.
    if getattr(config, "type_vocab_size", 0) > 1:
        return ("input_ids", "attention_mask", "token_type_ids")
    return ("input_ids", "attention_mask")
