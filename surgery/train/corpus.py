"""Where a recipe's `corpus(...)` comes from, and its train/validation split by document.

A corpus is a list of documents (one string each). Names resolve to known sources; anything
else is a local path to plain text (one document per line, `.gz` allowed) or JSONL (`text`
field). Reading goes through `datasets` so big files stream and cache like any HF dataset.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from surgery.errors import SurgeryError

REPO_ROOT = Path(__file__).resolve().parents[2]
KNOWN_CORPORA = ("demo", "ko-pretrain")  # names resolve_corpus knows; anything else is a path


def shared_data_dir() -> Path:
    """`$SURGERY_DATA`, else the `shared/data` folder beside the checkout."""
    return Path(os.environ.get("SURGERY_DATA", REPO_ROOT.parent / "shared" / "data"))


@dataclass(frozen=True)
class Corpus:
    name: str
    train_files: tuple[Path, ...]
    valid_files: tuple[Path, ...] = ()
    # Lines that belong together (demo's law texts are one paragraph a line) still split by line.
    min_chars: int = 1

    def fingerprint(self) -> str:
        """Cheap identity of the files (path, size, mtime) for caches keyed on the corpus."""
        h = hashlib.sha256(self.name.encode())
        for f in (*self.train_files, *self.valid_files):
            st = f.stat()
            h.update(f"{f.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode())
        return h.hexdigest()[:16]


def _demo_corpus() -> Corpus:
    # konlpy ships real Korean text (the constitution and ten National Assembly bills) inside its
    # wheel; reading the files needs no JVM, so the package is never imported.
    spec = importlib.util.find_spec("konlpy")
    if spec is None or not spec.submodule_search_locations:
        raise SurgeryError("the demo corpus comes with the `konlpy` package: pip install konlpy")
    root = Path(list(spec.submodule_search_locations)[0]) / "data" / "corpus"
    files = sorted((root / "kolaw").glob("*.txt")) + sorted((root / "kobill").glob("*.txt"))
    if not files:
        raise SurgeryError(f"no demo text found under {root}")
    return Corpus("demo", tuple(files), min_chars=20)


def resolve_corpus(name_or_path: str, base_dir: Path | None = None) -> Corpus:
    """A corpus by name (`demo`, `ko-pretrain`) or by path (file or folder of .txt/.jsonl)."""
    if name_or_path == "demo":
        return _demo_corpus()
    if name_or_path == "ko-pretrain":
        root = shared_data_dir() / "ko-pretrain"
        train, valid = root / "kowiki.train.txt.gz", root / "kowiki.valid.txt.gz"
        if not train.exists():
            raise SurgeryError(
                f"corpus 'ko-pretrain' not found at {root} (set SURGERY_DATA to the folder holding ko-pretrain/)"
            )
        return Corpus("ko-pretrain", (train,), (valid,) if valid.exists() else (), min_chars=1)
    path = Path(name_or_path)
    if not path.is_absolute() and base_dir is not None and not path.exists():
        path = base_dir / path
    if path.is_dir():
        files = tuple(sorted(p for p in path.iterdir() if _is_text_file(p)))
        if not files:
            raise SurgeryError(f"corpus folder {path} holds no .txt, .txt.gz or .jsonl files")
        return Corpus(path.name, files)
    if path.is_file():
        if not _is_text_file(path):
            raise SurgeryError(f"corpus {path}: expected .txt, .txt.gz, .jsonl or .jsonl.gz")
        return Corpus(path.stem, (path,))
    raise SurgeryError(f"corpus {name_or_path!r} not found: not {', '.join(map(repr, KNOWN_CORPORA))}, or an existing path"
                       + (f" (looked in {base_dir})" if base_dir is not None and not Path(name_or_path).is_absolute() else ""))


def _is_text_file(p: Path) -> bool:
    return p.is_file() and any(p.name.endswith(s) for s in (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".json"))


def _read_files(files: tuple[Path, ...], min_chars: int) -> list[str]:
    import datasets

    datasets.disable_progress_bars()
    for f in files:
        if f.stat().st_size == 0:
            raise SurgeryError(f"corpus file {f} is empty or too small to split into train and validation")
    jsonl = [str(f) for f in files if ".json" in f.name]
    text = [str(f) for f in files if ".json" not in f.name]
    docs: list[str] = []
    try:
        if text:
            ds = datasets.load_dataset("text", data_files=text, split="train")
            docs += ds["text"]
        if jsonl:
            ds = datasets.load_dataset("json", data_files=jsonl, split="train")
            if "text" not in ds.column_names:
                raise SurgeryError(f"JSONL corpus needs a 'text' field; found {ds.column_names}")
            docs += ds["text"]
    except SurgeryError:
        raise
    except (OSError, ValueError, gzip.BadGzipFile, UnicodeDecodeError, EOFError) as err:
        raise SurgeryError(f"cannot read corpus files {', '.join(map(str, files))}: {err}") from None
    except Exception as err:  # datasets wraps parse failures in its own exception types
        if type(err).__module__.startswith(("datasets", "pyarrow")):
            raise SurgeryError(f"cannot read corpus files {', '.join(map(str, files))}: {err}") from None
        raise
    return [d.strip() for d in docs if d and len(d.strip()) >= min_chars]


def load_documents(corpus: Corpus, seed: int = 0, val_fraction: float = 0.005,
                   max_docs: int | None = None) -> tuple[list[str], list[str]]:
    """Train and validation documents. Without a validation file, split by document (the seed's
    199:1 by default), keeping at least a few validation documents so small corpora still
    validate. `max_docs` keeps the first N training documents (mini-scale runs)."""
    import random

    train = _read_files(corpus.train_files, corpus.min_chars)
    if max_docs is not None:
        train = train[:max_docs]
    if corpus.valid_files:
        valid = _read_files(corpus.valid_files, corpus.min_chars)
    else:
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        n_valid = max(round(len(train) * val_fraction), min(32, len(train) // 10), 1)
        held = set(order[:n_valid])
        valid = [d for i, d in enumerate(train) if i in held]
        train = [d for i, d in enumerate(train) if i not in held]
    if not train or not valid:
        raise SurgeryError(f"corpus {corpus.name!r} is empty or too small to split into train and validation")
    return train, valid
