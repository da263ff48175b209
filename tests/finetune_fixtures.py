"""Tiny tokenizers and random checkpoints for the fine-tuning tests, built offline in seconds.

The sentences below were written for these tests (not taken from any data set). The tokenizer is
a small Unigram model, wrapped the way pretraining saves its tokenizer: a fast tokenizer in the
checkpoint folder that `AutoTokenizer.from_pretrained(ckpt)` loads.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import processors
from transformers import (
    BertConfig,
    BertForMaskedLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from surgery.train.tokenizer import _unigram

SENTENCES = [
    "오늘은 날씨가 맑고 바람이 시원하다.",
    "서울은 대한민국의 수도이며 인구가 가장 많은 도시이다.",
    "그는 1990년 3월 5일에 부산에서 태어났다.",
    "이 영화는 배우들의 연기가 훌륭하지만 이야기는 지루하다.",
    "학생들은 도서관에서 시험 공부를 하고 있었다.",
    "새로운 연구에 따르면 커피는 건강에 좋을 수도 있다.",
    "한강 공원에는 주말마다 많은 사람들이 모인다.",
    "그 회사는 작년에 신제품을 발표하였다.",
    "우리는 내일 아침 일찍 기차를 타고 여행을 떠난다.",
    "세종대왕은 조선의 네 번째 왕으로 훈민정음을 만들었다.",
    "질문: 누가 훈민정음을 만들었는가? 문맥: 세종대왕이 만들었다.",
    "요약: 연구진은 실험 결과를 학술지에 발표했다.",
    "고양이는 창가에 앉아 햇볕을 쬐고 있다.",
    "경제 성장률이 지난해보다 조금 낮아졌다.",
    "축구 대표팀은 어제 경기에서 2대 1로 이겼다.",
    "The model reads Korean text and answers questions (1999).",
]

T5_SPECIAL = ["<pad>", "</s>", "<unk>"]
BERT_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_tokenizer(family: str, vocab_size: int = 400) -> PreTrainedTokenizerFast:
    special = T5_SPECIAL if family == "t5" else BERT_SPECIAL
    unk = "<unk>" if family == "t5" else "[UNK]"
    # surgery's own unigram training: the same vocabulary in every process (tokenizers' trainer
    # gave a different one per process, so tests that fit a few examples passed or failed by chance).
    tok = _unigram(SENTENCES * 4, vocab_size, special, unk)
    if family == "t5":
        eos = tok.token_to_id("</s>")
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
        )
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"
    )


def tiny_checkpoint(folder: Path, family: str) -> Path:
    """A random tiny model plus its tokenizer, saved as safetensors the way pretraining saves one."""
    torch.manual_seed(0)
    tok = tiny_tokenizer(family)
    if family == "t5":
        config = T5Config(
            vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id,
        )
        model = T5ForConditionalGeneration(config)
    else:
        config = BertConfig(
            vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=512, pad_token_id=tok.pad_token_id,
        )
        model = BertForMaskedLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_own_task_files(folder: Path) -> dict[str, Path]:
    """Small task files in the shared data's formats, made from SENTENCES (no shared data needed)."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    labels = ("entailment", "neutral", "contradiction")
    nli = [
        {"premise": SENTENCES[i], "hypothesis": SENTENCES[(i + 1) % len(SENTENCES)], "gold_label": labels[i % 3]}
        for i in range(len(SENTENCES))
    ]
    (folder / "nli.json").write_text(json.dumps(nli, ensure_ascii=False), encoding="utf-8")
    questions = [("누가 훈민정음을 만들었는가?", "세종대왕"), ("그는 어디에서 태어났는가?", "부산"), ("수도는 어디인가?", "서울")]
    articles = []
    for a in range(5):
        context = " ".join(SENTENCES[a : a + 10])
        qas = []
        for q, (question, answer) in enumerate(questions):
            start = context.find(answer)
            if start >= 0:
                qas.append({"id": f"{a}-{q}", "question": question, "answers": [{"text": answer, "answer_start": start}]})
        articles.append({"title": f"문서_{a}", "paragraphs": [{"context": context, "qas": qas}]})
    (folder / "squad.json").write_text(json.dumps({"version": "own", "data": articles}, ensure_ascii=False), encoding="utf-8")
    lines = [" ".join(SENTENCES[i : i + 6]) for i in range(8)]
    (folder / "wiki.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    news = [{"slug": f"n{i}", "sentences": [s.rstrip(".") for s in SENTENCES[i : i + 5]], "summaries": [0, 2]} for i in range(4)]
    (folder / "news.jsonl").write_text("\n".join(json.dumps(n, ensure_ascii=False) for n in news) + "\n", encoding="utf-8")
    return {"nli": folder / "nli.json", "squad": folder / "squad.json", "wiki": folder / "wiki.txt", "news": folder / "news.jsonl"}
