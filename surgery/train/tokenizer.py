"""One SentencePiece (unigram) tokenizer per corpus, family and vocabulary size, trained once and
cached, then saved next to every checkpoint so each stage folder loads with AutoTokenizer."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

from surgery.errors import SurgeryError
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
    import sentencepiece
    from transformers import AutoTokenizer

    # Everything the trained model depends on is in the key: the text it reads (hashed, not just
    # counted, so `corpus(..., docs=N)` or an edited file trains anew), the family's tokenizer
    # description (specials and wrapping: ALBERT shares BERT's), the vocabulary, the sample size
    # and the trainer (algorithm revision, sentencepiece version).
    info = FAMILIES[family].tokenizer
    sample = _sample(docs, max_chars, seed=0)
    text = hashlib.sha256()
    for d in sample:
        text.update(d.encode("utf-8", "surrogatepass") + b"\0")
    key = hashlib.sha256(f"{corpus.fingerprint()}:{text.hexdigest()}:{info!r}:{vocab}:{max_chars}:"
                         f"spm{sentencepiece.__version__}:{TRAINER_REVISION}".encode()).hexdigest()[:16]
    folder = cache_dir() / "tokenizers" / f"{corpus.name}-{family}-{vocab}-{key}"
    if not (folder / "tokenizer.json").exists():
        tok = train_tokenizer(sample, family, vocab)
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        tok.save_pretrained(tmp)
        tmp.replace(folder) if not folder.exists() else None
    return AutoTokenizer.from_pretrained(folder)


# Bump when the training procedure changes, so cached tokenizers of the old one are not reused.
TRAINER_REVISION = "spm-1"
# sentencepiece skips longer "sentences"; documents are cut at spaces below this (unigram pieces
# never cross a space, so the cut changes nothing the trainer sees).
_CHUNK = 2000


def _chunks(docs: list[str], normalize):
    for doc in docs:
        text = normalize(doc)
        while len(text) > _CHUNK:
            cut = text.rfind(" ", 0, _CHUNK)
            cut = cut if cut > 0 else _CHUNK
            yield text[:cut]
            text = text[cut:].lstrip(" ")
        if text:
            yield text


def _unigram(docs: list[str], vocab: int, specials: list[str], unk: str):
    """A SentencePiece unigram model trained by Google's sentencepiece, as a `tokenizers` Unigram.

    Not `tokenizers`' own UnigramTrainer: that one iterates Rust hash maps whose order is random
    per process, so the same corpus gave a different vocabulary in every process (measured: four
    processes, four vocabularies, with or without TOKENIZERS_PARALLELISM). sentencepiece with one
    thread, no input shuffling and a fixed seed gives byte-identical models.
    """
    import io

    import sentencepiece as spm
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import Unigram

    # The same text normalization at training and at use: the tokenizer's own normalizer runs
    # first and sentencepiece's is off.
    normalizer = normalizers.Sequence([normalizers.Nmt(), normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    model = io.BytesIO()
    spm.set_random_generator_seed(0)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_chunks(docs, normalizer.normalize_str), model_writer=model, model_type="unigram",
            vocab_size=max(8, vocab - len(specials) + 1), hard_vocab_limit=False, num_threads=1,
            shuffle_input_sentence=False, normalization_rule_name="identity", max_sentence_length=4 * _CHUNK + 16,
            unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, minloglevel=2,
        )
    except RuntimeError as err:  # e.g. a vocabulary smaller than the corpus's alphabet
        raise SurgeryError(f"cannot train a {vocab}-token tokenizer on this corpus: {str(err).strip()}") from None
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size()) if i != sp.unk_id()]
    pieces = [(p, s) for p, s in pieces if p not in specials][: vocab - len(specials)]
    tok = Tokenizer(Unigram([(t, 0.0) for t in specials] + pieces, unk_id=specials.index(unk), byte_fallback=False))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.add_special_tokens(specials)
    return tok


def train_tokenizer(docs: list[str], family: str, vocab: int):
    """A fast tokenizer with the family's special tokens and post-processing (T5 appends </s>,
    BERT wraps in [CLS] ... [SEP]), so fine-tuning code can call it like a stock tokenizer."""
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    info = FAMILIES[family].tokenizer
    specials = info.specials
    extra = [f"<extra_id_{i}>" for i in range(n_sentinels(vocab))] if info.sentinels else []
    ordered = list(dict.fromkeys(specials.values())) + extra
    backend = _unigram(docs, vocab, ordered, specials["unk_token"])
    template = set(info.single.split() + info.pair.replace(":1", "").split())
    backend.post_processor = TemplateProcessing(single=info.single, pair=info.pair,
                                                special_tokens=[(t, backend.token_to_id(t)) for t in ordered if t in template])
    inputs = ["input_ids", "token_type_ids", "attention_mask"] if info.token_type_ids else ["input_ids", "attention_mask"]
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, additional_special_tokens=extra or None, model_input_names=inputs, **specials
    )
