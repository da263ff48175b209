"""News summarization, with the lead-sentence substitute for the missing training set; ROUGE-L F1."""

from __future__ import annotations

from surgery.finetune.data import load_summ
from surgery.finetune.seq2seq import TextToText
from surgery.metrics import rouge_l_corpus


class NewsSummarization(TextToText):
    name = "news-summ"
    metrics = ("rouge_l",)
    max_length = 512
    max_target_length = 64
    data_note = (
        "no Korean news summarization training set available: trained on lead-sentence generation from "
        "ko-pretrain kowiki.train (first sentence = summary), rouge_l scored on kowiki.valid; rouge_l_news "
        "on sci-news-sum-kr-50 (50 real news articles, gold extractive summaries)"
    )

    def load(self):
        p = self.params
        train = load_summ(p.train_data, "kowiki/train", p.limit, "news-summ train data")
        valid = load_summ(p.eval_data, "kowiki/valid", p.eval_cap, "news-summ eval data")
        news = load_summ(p.news_data, "sci-news", p.eval_cap, "news-summ news eval data")
        return train, {"valid": valid, "news": news}

    def source_text(self, example):
        return f"summarize: {example.source}"

    def target_text(self, example):
        return example.target

    def evaluate(self, model, tokenizer, examples, device):
        predictions = self.generate(model, tokenizer, examples, device)
        return {"rouge_l": rouge_l_corpus(predictions, [e.target for e in examples])}
