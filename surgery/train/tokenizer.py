"""One SentencePiece (unigram) tokenizer per corpus, family and vocabulary size, trained once and
cached, then saved next to every checkpoint so each stage folder loads with AutoTokenizer."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

from surgery.families import FAMILIES
from surgery.train.corpus import Corpus

# T5 needs sentinels for span corruption; a tiny vocabulary cannot spare T5's usual 100.
MAX_SENTINELS = 100



def n_sentinels(vocab: int) -> int:
    return min(MAX_SENTINELS, max(8, vocab // 40))


def cache_dir() -> Path:
    return Path(os.environ.get("SURGERY_CACHE", Path.home() / ".cache" / "surgery"))


def _sample(docs: list[str], max_chars: int, seed: int) -> list[str]:
    """Enough documents for the tokenizer to see ~max_chars of text, drawn evenly from the corpus."""
    total = sum(len(d) for d in docs)
    if total <= max_chars:
        return docs
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    out, n = [], 0
    for i in order:
        out.append(docs[i])
        n += len(docs[i])
        if n >= max_chars:
            break
    return out


def get_tokenizer(corpus: Corpus, docs: list[str], family: str, vocab: int, max_chars: int = 20_000_000):
    """The cached tokenizer for (corpus, family, vocab), training it on first use."""
    from transformers import AutoTokenizer

    # The documents themselves are part of the key: `corpus(..., docs=N)` trains on fewer of them.
    seen = f"{len(docs)}:{sum(map(len, docs))}"
    # the family's tokenizer description, not its name: ALBERT shares BERT's tokenizer
    info = FAMILIES[family].tokenizer
    key = hashlib.sha256(f"{corpus.fingerprint()}:{seen}:{info!r}:{vocab}:{max_chars}:v1".encode()).hexdigest()[:16]
    folder = cache_dir() / "tokenizers" / f"{corpus.name}-{family}-{vocab}-{key}"
    if not (folder / "tokenizer.json").exists():
        tok = train_tokenizer(_sample(docs, max_chars, seed=0), family, vocab)
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        tok.save_pretrained(tmp)
        tmp.replace(folder) if not folder.exists() else None
    return AutoTokenizer.from_pretrained(folder)


def train_tokenizer(docs: list[str], family: str, vocab: int):
    """A fast tokenizer with the family's special tokens and post-processing (T5 appends </s>,
    BERT wraps in [CLS] ... [SEP]), so fine-tuning code can call it like a stock tokenizer."""
    from tokenizers import SentencePieceUnigramTokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    info = FAMILIES[family].tokenizer
    specials = info.specials
    extra = [f"<extra_id_{i}>" for i in range(n_sentinels(vocab))] if info.sentinels else []
    ordered = list(dict.fromkeys(specials.values())) + extra
    sp = SentencePieceUnigramTokenizer()
    sp.train_from_iterator(
        docs,
        vocab_size=vocab,
        special_tokens=ordered,
        unk_token=specials["unk_token"],
        show_progress=False,
    )
    backend = sp._tokenizer
    template = set(info.single.split() + info.pair.replace(":1", "").split())
    backend.post_processor = TemplateProcessing(single=info.single, pair=info.pair,
                                                special_tokens=[(t, backend.token_to_id(t)) for t in ordered if t in template])
    inputs = ["input_ids", "token_type_ids", "attention_mask"] if info.token_type_ids else ["input_ids", "attention_mask"]
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, additional_special_tokens=extra or None, model_input_names=inputs, **specials
    )
