"""Task heads on a pretrained checkpoint, and how each task picks its model class.

Encoder tasks on BERT-like checkpoints use transformers' own heads (`AutoModelForSequenceClassification`,
`AutoModelForQuestionAnswering`). For T5 the paper fine-tunes NLI and extractive QA on the encoder,
and transformers 5.x has no encoder-only T5 head for either: its `T5ForSequenceClassification` runs
the whole encoder-decoder and classifies the decoder state at the last </s>, and
`T5ForQuestionAnswering` puts its span head on the decoder's states over the shifted input. So the
two classes below are `T5EncoderModel` plus a head: mean-pooled encoder states and a linear layer
for classification; a linear start/end layer on every encoder state for spans. They subclass
`T5EncoderModel`, so a T5 checkpoint's `shared.*` / `encoder.*` weights load by name (its decoder and
LM head are left out) and `save_pretrained` / `from_pretrained` work on the fine-tuned model.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import T5EncoderModel
from transformers.modeling_outputs import (
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
)

from surgery.errors import SurgeryError


class T5EncoderForSequenceClassification(T5EncoderModel):
    def __init__(self, config):
        super().__init__(config)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.classifier = nn.Linear(config.d_model, config.num_labels)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, T5EncoderForSequenceClassification):
            # T5's default for unknown linears is std 1.0: far too large a start for a head.
            nn.init.normal_(module.classifier.weight, std=self.config.d_model**-0.5)
            nn.init.zeros_(module.classifier.bias)

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        logits = self.classifier(self.dropout(pooled))
        loss = nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


class T5EncoderForQuestionAnswering(T5EncoderModel):
    def __init__(self, config):
        config.num_labels = 2
        super().__init__(config)
        # Named like T5ForQuestionAnswering's head so T5's own init gives it a d_model^-0.5 scale.
        self.qa_outputs = nn.Linear(config.d_model, 2)
        self.post_init()

    def forward(
        self, input_ids=None, attention_mask=None, start_positions=None, end_positions=None, **kwargs
    ) -> QuestionAnsweringModelOutput:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        start_logits, end_logits = self.qa_outputs(states).float().unbind(-1)
        loss = None
        if start_positions is not None and end_positions is not None:
            # As BertForQuestionAnswering: positions outside the window are clamped and ignored.
            ignored = start_logits.size(1)
            start = start_positions.clamp(0, ignored)
            end = end_positions.clamp(0, ignored)
            loss = (
                nn.functional.cross_entropy(start_logits, start, ignore_index=ignored)
                + nn.functional.cross_entropy(end_logits, end, ignore_index=ignored)
            ) / 2
        return QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits)


def load_head(checkpoint, head: str, config, **config_overrides):
    """The model for `head` ('classification', 'span' or 'seq2seq') from a checkpoint folder."""
    from transformers import (
        AutoModelForQuestionAnswering,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
    )

    is_t5 = config.is_encoder_decoder  # the encoder-only heads below are T5's
    if head == "seq2seq":
        cls = AutoModelForSeq2SeqLM
    elif head == "classification":
        cls = T5EncoderForSequenceClassification if is_t5 else AutoModelForSequenceClassification
    elif head == "span":
        cls = T5EncoderForQuestionAnswering if is_t5 else AutoModelForQuestionAnswering
    else:
        raise ValueError(head)
    for key, value in config_overrides.items():
        setattr(config, key, value)
    from transformers.utils import logging

    # transformers' load report lists the new head as "missing" on every run; it is checked here
    # instead, and anything missing beyond the head (a body weight) is an error, not a warning.
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        model, info = cls.from_pretrained(checkpoint, config=config, output_loading_info=True)
    finally:
        logging.set_verbosity(level)
    missing = sorted(k for k in info["missing_keys"] if not any(part in k for part in NEW_HEAD_PARTS))
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise SurgeryError(f"{checkpoint}: the checkpoint lacks weights the {head} model needs: {shown}")
    from surgery.sharing import tie_shared

    return tie_shared(model)  # albert share=attention|ffn (config surgery_share): fine-tuned shared, as pretrained


# Parameter names a fine-tuning head may add to a pretrained body (BERT's pooler is not trained by
# MLM-only pretraining, so it starts fresh too).
NEW_HEAD_PARTS = ("classifier", "qa_outputs", "pooler")
