"""Checkpoint folders as a recipe or a command names them, looked at without loading weights:
a local folder or a model id in the local Hugging Face cache, its config, its tokenizer's size.
No torch here: `surgery plan` checks pretrained checkpoints with these.
"""

from __future__ import annotations

import json
from pathlib import Path

from surgery.errors import SurgeryError

WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json")


def resolve_hub(name: str) -> Path:
    """The local snapshot of hub model `name` (org/name) from the Hugging Face cache, offline."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        raise SurgeryError(
            f"{name!r} is not in the local Hugging Face cache ({_cache_dir()}); download it first, e.g. "
            f"`huggingface-cli download {name}` on a machine with a network (HF_HOME sets where the cache is)"
        ) from None


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def resolve_source(path: Path) -> Path:
    """A checkpoint a command names: a folder, or `org/name` from the local Hugging Face cache."""
    if not path.exists() and looks_like_hub_id(str(path)):
        return resolve_hub(str(path))
    return path


def looks_like_hub_id(text: str) -> bool:
    """`org/name` that is not an existing path: what `surgery grow org/name` means by a hub id."""
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~")) and not Path(text).exists()


def folder_problem(folder: Path) -> str | None:
    """Why `folder` is not a checkpoint transformers can load (None when it is one)."""
    if not folder.is_dir():
        return f"{folder} does not exist"
    if not (folder / "config.json").is_file():
        return f"{folder} has no config.json (not a transformers checkpoint folder)"
    if not any(next(folder.glob(p), None) for p in WEIGHT_PATTERNS):
        return f"{folder} has no *.safetensors weights (pickled .bin weights are not read)"
    return None


def read_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SurgeryError(f"{folder}/config.json cannot be read: {err}") from None


def has_tokenizer(folder: Path) -> bool:
    return any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model"))


def tokenizer_size(folder: Path) -> int | None:
    """How many token ids the folder's tokenizer produces (its vocabulary and added tokens), from
    tokenizer.json or vocab.txt; None when the folder has no tokenizer of either kind."""
    tj = folder / "tokenizer.json"
    if tj.is_file():
        data = json.loads(tj.read_text(encoding="utf-8"))
        vocab = data.get("model", {}).get("vocab", {})
        ids = set(vocab.values()) if isinstance(vocab, dict) else set(range(len(vocab)))
        ids |= {t["id"] for t in data.get("added_tokens", [])}
        return max(ids) + 1 if ids else 0
    vt = folder / "vocab.txt"
    if vt.is_file():
        return sum(1 for _ in vt.open(encoding="utf-8"))
    return None


# The files of a tokenizer (and generation settings): copied as they are wherever the weights go.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "spiece.model", "sentencepiece.bpe.model", "merges.txt", "vocab.json", "added_tokens.json",
                   "chat_template.jinja", "generation_config.json")
# Files surgery writes itself (weights, config, tokenizer); every other file of a checkpoint folder
# (sentence-transformers' modules.json and pooling config, a README, ...) is carried along.
OWNED = ("config.json", "model.safetensors", "model.safetensors.index.json") + TOKENIZER_FILES
# weights in other formats would no longer match the grown model: not carried
STALE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".ckpt", ".gguf")
STALE_DIRS = ("onnx", "openvino", "checkpoints")


def carry_files(src: Path, dst: Path, d_model: int) -> list[str]:
    """Copy the files of checkpoint folder `src` that surgery does not write into `dst` (never over a
    file already there), with the dimensions that depend on the width updated: a
    sentence-transformers pooling config's `word_embedding_dimension`. Returns what was copied."""
    import shutil

    copied = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_dir() or rel.parts[0] in STALE_DIRS or path.name in OWNED and len(rel.parts) == 1:
            continue
        if path.suffix in STALE_SUFFIXES or rel.parts[0].startswith("."):
            continue
        target = dst / rel
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.name == "config.json" and len(rel.parts) > 1 and rel.parts[0].endswith("_Pooling"):
            cfg = json.loads(path.read_text())
            cfg["word_embedding_dimension"] = d_model
            target.write_text(json.dumps(cfg, indent=2) + "\n")
        else:
            shutil.copy2(path, target)
        copied.append(str(rel))
    return copied
