"""RoBERTa (RobertaForMaskedLM): BERT's post-LayerNorm encoder with RoBERTa's conventions; the
family of the standard Korean baselines (KLUE RoBERTa).

Quirks the view records:
- positions are offset by the padding index: transformers numbers non-pad tokens from
  pad_token_id + 1, so the position table has `max_positions + 2` rows (514 for 512) and the
  tokenizer's <pad> must be id 1 (its special tokens are in RoBERTa's order: <s> <pad> </s> <unk>);
- one token type (`type_vocab_size=1`), no segment ids;
- the MLM head is `lm_head` (dense -> gelu -> layer_norm -> decoder tied to the word embeddings),
  whose layer_norm feeds the tied decoder: HEAD_NORM, as BERT's;
- the blocks are BERT's under the `roberta.` prefix.
"""

from __future__ import annotations

from dataclasses import replace

from surgery.families.base import TokenizerInfo
from surgery.families.bert import BERT, EncoderNames
from surgery.families.bert import hf_config as bert_config
from surgery.families.bert import spec_fields as bert_fields
from surgery.view import Kind

PAD_ID = 1  # RoBERTa's padding index; positions start after it


NAMES = EncoderNames("roberta.", "RobertaModel", "lm_head.dense", "lm_head.layer_norm", "lm_head.bias",
                     "lm_head.decoder")


def hf_config(spec) -> dict:
    return {**bert_config(spec), "max_position_embeddings": spec.max_positions + PAD_ID + 1, "type_vocab_size": 1,
            "pad_token_id": PAD_ID, "bos_token_id": 0, "eos_token_id": 2}


def spec_fields(config: dict) -> dict:
    # the table holds max_positions + padding index + 1 rows
    return {**bert_fields(config), "max_positions": config.get("max_position_embeddings", 514)
            - config.get("pad_token_id", PAD_ID) - 1}


# BERT's descriptor with RoBERTa's names, positions, token types and tokenizer
ROBERTA = replace(
    BERT,
    name="roberta",
    summary="RoBERTa (RobertaForMaskedLM): BERT's encoder with positions offset by the padding index, one token type",
    config_class="RobertaConfig",
    model_class="RobertaForMaskedLM",
    classes={"RobertaForMaskedLM": "mlm", "RobertaModel": ""},
    hf_config=hf_config,
    spec_fields=spec_fields,
    tokenizer=TokenizerInfo(
        specials={"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
                  "mask_token": "<mask>", "cls_token": "<s>", "sep_token": "</s>"},
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        token_type_ids=False,
    ),
    tiny=dict(layers=2, d_model=16, heads=4, d_ff=64, max_positions=32),
    global_templates=NAMES.global_templates,
    extra_dims=lambda config: {Kind.POS: config.get("max_position_embeddings", 514),
                               Kind.TYPE: config.get("type_vocab_size", 1)},
    layout_of=NAMES.layout_of,
    passthrough=(r"^(roberta\.)?embeddings\.(position_ids|token_type_ids)$",),
)
