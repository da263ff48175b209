"""Task data: where it lives, how it is read, and the substitutes for what is missing.

Default files come from the shared data folder (`$SURGERY_DATA`, else `<repo>/../shared/data`);
see its README. Every loader also takes a local file in the same format as the shared one, or a
`datasets` hub name (`hf:NAME` or `hf:NAME:CONFIG`, or a bare `owner/name` that is not a path) for
users with a network. Two substitutes are built in memory at load time and never written to disk:

- KorQuAD 1.0 has no train set here: the official dev set is split by article (seeded, 80/20).
- News summarization has no training set here: lead-sentence generation from ko-pretrain (the
  article's first sentence is the target, the rest the source); kowiki.valid is its eval split.
  sci-news-sum-kr-50 (50 real news articles, gold extractive summaries) is a second eval set.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from surgery.errors import SurgeryError

NLI_LABELS = ("entailment", "neutral", "contradiction")  # KLUE's label order

SHARED_FILES = {
    "klue-nli/train": "klue-nli/klue-nli-v1.1_train.json.gz",
    "klue-nli/dev": "klue-nli/klue-nli-v1.1_dev.json.gz",
    "korquad/dev": "korquad-v1/KorQuAD_v1.0_dev.json.gz",
    "kowiki/train": "ko-pretrain/kowiki.train.txt.gz",
    "kowiki/valid": "ko-pretrain/kowiki.valid.txt.gz",
    "sci-news": "sci-news-sum-kr-50/sci-news-sum-kr-50.jsonl",
}


def data_root() -> Path:
    env = os.environ.get("SURGERY_DATA")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def shared_file(key: str) -> Path:
    return data_root() / SHARED_FILES[key]


@dataclass(frozen=True)
class NliExample:
    premise: str
    hypothesis: str
    label: int


@dataclass(frozen=True)
class QaExample:
    id: str
    article: str
    context: str
    question: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...] = field(default=())


@dataclass(frozen=True)
class SummExample:
    id: str
    source: str
    target: str


# ---------------------------------------------------------------- reading files and hub sets


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _check_exists(path: Path, what: str) -> None:
    if not path.is_file():
        raise SurgeryError(
            f"{what}: {path} not found (set SURGERY_DATA to the shared data folder, or pass a file; see docs/finetune.md)"
        )


def read_json(path: Path, what: str):
    """A .json / .json.gz document, or a .jsonl(.gz) file as a list of its lines' objects."""
    _check_exists(path, what)
    try:
        with _open_text(path) as f:
            if ".jsonl" in path.name:
                return [json.loads(line) for line in f if line.strip()]
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError) as err:
        raise SurgeryError(f"{what}: {path} is not valid JSON ({err})") from None


def iter_lines(path: Path, what: str) -> Iterator[str]:
    _check_exists(path, what)
    try:
        with _open_text(path) as f:
            for line in f:
                if line.strip():
                    yield line.rstrip("\n")
    except (UnicodeDecodeError, OSError, EOFError) as err:
        raise SurgeryError(f"{what}: {path} cannot be read as UTF-8 text ({err})") from None


_FILE_SUFFIXES = (".json", ".jsonl", ".gz", ".txt")
_HUB_NAME = re.compile(r"^[\w.-]+(/[\w.-]+)?(:[\w.-]+)?$")


def hub_name(source: str | Path) -> tuple[str, str | None] | None:
    """(name, config) when `source` names a `datasets` hub set rather than a local file."""
    text = str(source)
    if text.startswith("hf:"):
        text = text[3:]
    elif Path(text).exists() or "/" not in text or not _HUB_NAME.match(text) or text.endswith(_FILE_SUFFIXES):
        return None
    name, _, config = text.partition(":")
    return name, config or None


def load_hub_split(name: str, config: str | None, split: str, what: str) -> list[dict]:
    try:
        import datasets

        return list(datasets.load_dataset(name, config, split=split))
    except Exception as err:  # network, unknown name, missing split: all the user's to fix
        raise SurgeryError(f"{what}: cannot load hub data set {name!r} split {split!r} ({err})") from None


def _records(source: str | Path, split: str, what: str):
    hub = hub_name(source)
    if hub:
        return load_hub_split(*hub, split, what)
    return read_json(Path(source), what)


def _field(record: dict, keys: tuple[str, ...], what: str, where: str):
    for key in keys:
        if key in record:
            return record[key]
    raise SurgeryError(f"{what}: {where} has none of the fields {', '.join(keys)}")


# ---------------------------------------------------------------- KLUE-NLI


def load_nli(source: str | Path | None, split: str) -> list[NliExample]:
    """KLUE-NLI: a JSON array of {premise, hypothesis, gold_label} (or a hub set with `label`)."""
    what = f"klue-nli {split} data"
    path = source or shared_file("klue-nli/train" if split == "train" else "klue-nli/dev")
    records = _records(path, "train" if split == "train" else "validation", what)
    if not isinstance(records, list):
        raise SurgeryError(f"{what}: {path} must hold a list of examples")
    out = []
    for i, r in enumerate(records):
        label = _field(r, ("gold_label", "label"), what, f"example {i}")
        if isinstance(label, str):
            if label not in NLI_LABELS:
                raise SurgeryError(f"{what}: example {i} has label {label!r}, not one of {', '.join(NLI_LABELS)}")
            label = NLI_LABELS.index(label)
        if label not in (0, 1, 2):
            continue  # hub copies mark unlabeled examples with -1
        out.append(NliExample(str(r["premise"]), str(r["hypothesis"]), int(label)))
    return out


# ---------------------------------------------------------------- KorQuAD 1.0


def _squad_examples(document: dict, what: str) -> list[list[QaExample]]:
    """SQuAD v1.1 JSON as one list of QAs per article."""
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise SurgeryError(f"{what}: expected SQuAD v1.1 JSON, an object with a 'data' list of articles")
    articles = []
    try:
        for a, article in enumerate(document["data"]):
            title = str(article.get("title", a))
            qas = []
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    answers = qa["answers"]
                    qas.append(
                        QaExample(
                            id=str(qa["id"]),
                            article=title,
                            context=paragraph["context"],
                            question=qa["question"],
                            answers=tuple(x["text"] for x in answers),
                            answer_starts=tuple(int(x["answer_start"]) for x in answers),
                        )
                    )
            articles.append(qas)
    except (KeyError, TypeError) as err:
        raise SurgeryError(f"{what}: not SQuAD v1.1 format (missing {err})") from None
    return articles


def _hub_squad(records: list[dict]) -> list[list[QaExample]]:
    by_title: dict[str, list[QaExample]] = {}
    for r in records:
        ans = r["answers"]
        by_title.setdefault(r.get("title", ""), []).append(
            QaExample(str(r["id"]), r.get("title", ""), r["context"], r["question"], tuple(ans["text"]), tuple(ans["answer_start"]))
        )
    return list(by_title.values())


def split_articles(n_articles: int, seed: int, train_fraction: float = 0.8) -> tuple[list[int], list[int]]:
    """Article indices for training and for evaluation: a seeded shuffle, the first 80% train."""
    order = list(range(n_articles))
    random.Random(seed).shuffle(order)
    n_train = round(train_fraction * n_articles)
    return sorted(order[:n_train]), sorted(order[n_train:])


def load_korquad(
    train_source: str | Path | None, eval_source: str | Path | None, split_seed: int
) -> tuple[list[QaExample], list[QaExample]]:
    """(train, eval) QAs. With no separate train source, the eval set is split by article."""
    what = "korquad data"

    def articles(source, hub_split):
        hub = hub_name(source)
        if hub:
            return _hub_squad(load_hub_split(*hub, hub_split, what))
        return _squad_examples(read_json(Path(source), what), f"{what} {source}")

    eval_articles = articles(eval_source or shared_file("korquad/dev"), "validation")
    if train_source:
        train = [qa for art in articles(train_source, "train") for qa in art]
        return train, [qa for art in eval_articles for qa in art]
    train_idx, eval_idx = split_articles(len(eval_articles), split_seed)
    return (
        [qa for i in train_idx for qa in eval_articles[i]],
        [qa for i in eval_idx for qa in eval_articles[i]],
    )


# ---------------------------------------------------------------- summarization

# The first sentence ends at ., ! or ? right after a Hangul syllable and before a space: Korean
# declaratives end so ("...이다."), while initials ("J. R.") and decimals ("3.5") do not.
_LEAD_END = re.compile(r"(?<=[가-힣])[.!?](?=\s|$)")


def lead_split(article: str, min_lead: int = 10, min_rest: int = 50) -> tuple[str, str] | None:
    """(first sentence, rest of the article), or None when the article has no usable lead."""
    m = _LEAD_END.search(article)
    if not m:
        return None
    lead, rest = article[: m.end()].strip(), article[m.end() :].strip()
    if len(lead) < min_lead or len(rest) < min_rest:
        return None
    return lead, rest


def load_lead_summ(source: str | Path, limit: int | None, what: str) -> list[SummExample]:
    """Lead-sentence examples from a one-article-per-line text file (.txt or .txt.gz)."""
    out = []
    for n, line in enumerate(iter_lines(Path(source), what)):
        pair = lead_split(line)
        if pair:
            out.append(SummExample(id=f"{Path(source).name}:{n}", source=pair[1], target=pair[0]))
            if limit is not None and len(out) >= limit:
                break
    return out


def load_summ_jsonl(source: str | Path, what: str) -> list[SummExample]:
    """sci-news-sum-kr-50 lines ({sentences, summaries}) or generic {document|source, summary|target}."""
    hub = hub_name(source)
    records = load_hub_split(*hub, "test", what) if hub else read_json(Path(source), what)
    out = []
    for i, r in enumerate(records):
        if "sentences" in r and "summaries" in r:
            sentences = r["sentences"]
            source_text = " ".join(sentences)
            target = " ".join(sentences[j] for j in sorted(r["summaries"]))
        else:
            source_text = _field(r, ("document", "source", "text", "article"), what, f"example {i}")
            target = _field(r, ("summary", "target", "abstract"), what, f"example {i}")
        out.append(SummExample(id=str(r.get("slug", r.get("id", i))), source=source_text, target=target))
    return out


def load_summ(source: str | Path | None, default_key: str, limit: int | None, what: str) -> list[SummExample]:
    path = source or shared_file(default_key)
    text_file = hub_name(path) is None and ".txt" in Path(path).name
    if text_file:
        return load_lead_summ(path, limit, what)
    examples = load_summ_jsonl(path, what)
    return examples[:limit] if limit is not None else examples
