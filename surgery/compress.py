"""Compression ops of the chain: ALBERT factorized embeddings (`factorize`), ALBERT cross-layer
sharing (`share`) and the students of distillation (`distil`), on transformers models in memory.

- factorize: BertForMaskedLM -> AlbertForMaskedLM(embedding_size=E). The word embedding W (V x H)
  becomes (W B)(B^T) with B (H x E) the top-E right singular vectors of W, the best rank-E
  approximation of W (Eckart-Young); position and type embeddings are projected on the same basis,
  the E -> H projection is B. ALBERT normalises the embedding sum in E space (BERT in H space), so
  the LayerNorm gains become the diagonal of B^T diag(gamma) B scaled by sqrt(H/E) (vector norms
  in E vs H dimensions); the MLM head's dense/LayerNorm are projected the same way. At E = H the
  basis is the identity (B = I), every tensor is copied and the ALBERT model computes exactly the
  BERT's function; below full rank the change is measured and reported.
- share: AlbertForMaskedLM with num_hidden_groups = 1 (share=all), or the unshared layout whose
  layers hold layer 0's attention (share=attention) or feed-forward (share=ffn) modules, tied in
  memory by surgery.sharing.tie_shared. The shared weights start as the mean of the trained
  layers' (init=mean, the default), layer 0's (first) or the middle layer's; the unshared parts are
  copied. See docs/bert-variants.md for the measurement behind the default.
- distil: a smaller BertForMaskedLM: at the teacher's width its layers are copied from the
  teacher's (every other layer by default, DistilBERT), embeddings and MLM head copied; narrower
  (TinyBERT, Tutor-KD) it starts random. The losses that train it are in surgery.distillation.

Every result is a plain transformers model: save_pretrained / from_pretrained work on it (a
partially shared one loads unshared with the same function; `load_model` ties it again).
"""

from __future__ import annotations

import math

import torch

from surgery.errors import SurgeryError
from surgery.sharing import SHARED_MODULES, shared_kind, tie_shared
from surgery.spec import ModelSpec

_BERT_TO_ALBERT_LAYER = {
    "attention.self.query": "attention.query",
    "attention.self.key": "attention.key",
    "attention.self.value": "attention.value",
    "attention.output.dense": "attention.dense",
    "attention.output.LayerNorm": "attention.LayerNorm",
    "intermediate.dense": "ffn",
    "output.dense": "ffn_output",
    "output.LayerNorm": "full_layer_layer_norm",
}


def _albert(spec: ModelSpec, like_config=None):
    from transformers import AlbertConfig, AlbertForMaskedLM

    cfg = spec.hf_config()
    if like_config is not None:  # keep the source's dropouts and eps
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "layer_norm_eps", "hidden_act",
                    "pad_token_id", "type_vocab_size"):
            if hasattr(like_config, key):
                cfg[key] = getattr(like_config, key)
    return tie_shared(AlbertForMaskedLM(AlbertConfig(**cfg)))


def factorize_basis(word: torch.Tensor, rank: int) -> torch.Tensor:
    """B (H x rank), orthonormal columns: identity at full rank, else the top right singular
    vectors of the word embedding (so word @ B @ B.T is its best rank-`rank` approximation)."""
    h = word.shape[1]
    if rank == h:
        return torch.eye(h, dtype=torch.float64)
    _, _, vt = torch.linalg.svd(word.double(), full_matrices=False)
    return vt[:rank].T.contiguous()


@torch.no_grad()
def factorize(bert, dst: ModelSpec):
    """BertForMaskedLM -> AlbertForMaskedLM with embedding_size dst.embedding_size, unshared."""
    if type(bert).__name__ != "BertForMaskedLM":
        raise SurgeryError(f"factorize reads a BertForMaskedLM, got {type(bert).__name__}")
    if dst.share != "none":
        raise SurgeryError("factorize keeps the layers unshared; share is its own op")
    sd = {k: v.double() for k, v in bert.state_dict().items()}
    h, e = dst.d_model, dst.embedding_size
    word = sd["bert.embeddings.word_embeddings.weight"]
    basis = factorize_basis(word, e)
    scale = math.sqrt(h / e)

    def rot_gain(g):  # diag(B^T diag(g) B) * sqrt(H/E)
        return (basis.pow(2).T @ g) * scale

    new = _albert(dst, bert.config)
    out = {
        "albert.embeddings.word_embeddings.weight": word @ basis,
        "albert.embeddings.position_embeddings.weight": sd["bert.embeddings.position_embeddings.weight"] @ basis,
        "albert.embeddings.token_type_embeddings.weight": sd["bert.embeddings.token_type_embeddings.weight"] @ basis,
        "albert.embeddings.LayerNorm.weight": rot_gain(sd["bert.embeddings.LayerNorm.weight"]) if e < h else sd["bert.embeddings.LayerNorm.weight"],
        "albert.embeddings.LayerNorm.bias": basis.T @ sd["bert.embeddings.LayerNorm.bias"],
        "albert.encoder.embedding_hidden_mapping_in.weight": basis,
        "albert.encoder.embedding_hidden_mapping_in.bias": torch.zeros(h, dtype=torch.float64),
        "predictions.dense.weight": basis.T @ sd["cls.predictions.transform.dense.weight"],
        "predictions.dense.bias": basis.T @ sd["cls.predictions.transform.dense.bias"],
        "predictions.LayerNorm.weight": rot_gain(sd["cls.predictions.transform.LayerNorm.weight"]) if e < h else sd["cls.predictions.transform.LayerNorm.weight"],
        "predictions.LayerNorm.bias": basis.T @ sd["cls.predictions.transform.LayerNorm.bias"],
        "predictions.bias": sd["cls.predictions.bias"],
        "predictions.decoder.bias": sd["cls.predictions.bias"],
    }
    for i in range(dst.layers):
        for b_name, a_name in _BERT_TO_ALBERT_LAYER.items():
            for kind in ("weight", "bias"):
                out[f"albert.encoder.albert_layer_groups.{i}.albert_layers.0.{a_name}.{kind}"] = sd[f"bert.encoder.layer.{i}.{b_name}.{kind}"]
    _load_exact(new, out)
    return new.train(bert.training)


def _load_exact(model, tensors: dict) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in tensors and k != "predictions.decoder.weight"]
    if missing:
        raise SurgeryError(f"internal: no value for {missing[:3]}")
    dtype = next(model.parameters()).dtype
    model.load_state_dict({k: v.to(dtype) for k, v in tensors.items()}, strict=False)
    model.tie_weights()


@torch.no_grad()
def share(model, dst: ModelSpec, init: str = "mean"):
    """(Bert|Albert)ForMaskedLM -> AlbertForMaskedLM with dst.share shared: "all" (one layer group
    for every layer), "attention" or "ffn" (those modules tied across the layers; the rest copied).
    The source is unshared (a partially shared albert may go on to share=all)."""
    what = dst.share
    if what == "none":
        raise SurgeryError("share needs a target with share=all, attention or ffn")
    if type(model).__name__ == "BertForMaskedLM":
        model = factorize(model, dst.model_copy(update={"share": "none"}))
    if type(model).__name__ != "AlbertForMaskedLM" or model.config.num_hidden_groups != model.config.num_hidden_layers:
        raise SurgeryError("share reads an unshared BertForMaskedLM or AlbertForMaskedLM")
    already = shared_kind(model.config)
    if already is not None and what != "all":
        raise SurgeryError(f"share({what}) reads an unshared model; this one shares {already} already")
    sd = model.state_dict()
    n = model.config.num_hidden_layers
    pick = {"mean": list(range(n)), "first": [0], "middle": [n // 2]}[init]
    prefix = "albert.encoder.albert_layer_groups."

    def start(k):  # the shared value of layer 0's tensor k
        rest = k[len(prefix) + 2:]
        return torch.stack([sd[f"{prefix}{i}.{rest}"].double() for i in pick]).mean(0)

    if what == "all":
        out = {k: v for k, v in sd.items() if ".albert_layer_groups." not in k}
        for k in sd:
            if k.startswith(prefix + "0."):
                out[k] = start(k)
    else:
        out = dict(sd)
        modules = tuple(f"albert_layers.0.{m}." for m in SHARED_MODULES[what])
        for k in sd:
            if k.startswith(prefix + "0.") and k[len(prefix) + 2:].startswith(modules):
                value = start(k)
                for i in range(n):
                    out[f"{prefix}{i}.{k[len(prefix) + 2:]}"] = value
    new = _albert(dst, model.config)
    _load_exact(new, out)
    return new.train(model.training)


def student_layers(teacher_layers: int, student_layers: int, select: str = "every-other") -> list[int]:
    if select == "first":
        return list(range(student_layers))
    if select == "last":
        return list(range(teacher_layers - student_layers, teacher_layers))
    return [round(i * teacher_layers / student_layers) for i in range(student_layers)]


@torch.no_grad()
def distil_student(teacher, dst: ModelSpec, select: str = "every-other"):
    """The student BertForMaskedLM: at the teacher's width, a copy of its embeddings, MLM head and
    `select`ed layers (DistilBERT's initialisation); narrower (TinyBERT, Tutor-KD), randomly
    initialised with the teacher's dropouts and eps, learning through the projections."""
    from transformers import BertForMaskedLM

    sizes = {"num_hidden_layers": dst.layers, "hidden_size": dst.d_model, "num_attention_heads": dst.heads,
             "intermediate_size": dst.d_ff}
    cfg = type(teacher.config).from_dict({**teacher.config.to_dict(), **sizes})
    student = BertForMaskedLM(cfg)
    if dst.d_model != teacher.config.hidden_size or dst.d_ff != teacher.config.intermediate_size:
        return student.train(teacher.training)
    keep = student_layers(teacher.config.num_hidden_layers, dst.layers, select)
    sd = teacher.state_dict()
    out = {}
    for k, v in sd.items():
        if ".encoder.layer." in k:
            head, rest = k.split(".encoder.layer.", 1)
            i, tail = rest.split(".", 1)
            if int(i) in keep:
                out[f"{head}.encoder.layer.{keep.index(int(i))}.{tail}"] = v.clone()
        else:
            out[k] = v.clone()
    missing, unexpected = student.load_state_dict(out, strict=False)
    if unexpected or [m for m in missing if "decoder.weight" not in m and "pooler" not in m]:
        raise SurgeryError(f"internal: distil student mismatch {missing[:3]} {unexpected[:3]}")
    student.tie_weights()
    return student


def compress_model(model, src: ModelSpec, dst: ModelSpec, op: str, options: dict, seed: int = 0):
    """Apply a compression op (or moe, which also changes the family) in memory; returns the new
    model (its own class). The op's implementation is the one its registry entry names
    (surgery.catalog.COMPRESS_OPS), called with the model, the target spec and those of the op's
    options (and the seed) that it takes: the rest (loss weights, the target's own sizes) belong
    to training or were checked against dst already."""
    import inspect

    from surgery.catalog import COMPRESS_OPS, resolve

    info = COMPRESS_OPS.get(op)
    if info is None:
        raise SurgeryError(f"unknown compression op {op} (known: {', '.join(COMPRESS_OPS)})")
    fn = resolve(info.impl)
    takes = list(inspect.signature(fn).parameters)[2:]
    given = {**options, "seed": seed}
    return fn(model, dst, **{k: given[k] for k in takes if k in given})


def load_model(path):
    """A checkpoint folder as its transformers class (albert too, which surgery.io does not read;
    a partially shared albert (config `surgery_share`) comes back with its layers tied)."""
    import json
    from pathlib import Path

    import transformers

    from surgery.families import FAMILIES

    cfg = json.loads((Path(path) / "config.json").read_text())
    family = FAMILIES.get(cfg.get("model_type"))
    if family is not None and not family.has_view:  # no neutral view to stream through: transformers loads it
        cls = getattr(transformers, (cfg.get("architectures") or [family.model_class])[0])
        model = cls.from_pretrained(str(path))
        from surgery.families.build import apply_quirks

        return apply_quirks(model, ModelSpec.from_hf_config(cfg))
    from surgery.io import load_checkpoint

    return load_checkpoint(path).model()


class ViewlessCheckpoint:
    """A checkpoint folder of a family without a neutral view (mixtral, qwen2_moe, albert) as the
    loop's first model reads one: its spec (config.json) and its model (transformers'
    from_pretrained, the family's quirks applied: surgery.compress.load_model)."""

    def __init__(self, folder):
        import json
        from pathlib import Path

        from surgery.spec import ModelSpec

        self.folder = Path(folder)
        self.spec = ModelSpec.from_hf_config(json.loads((self.folder / "config.json").read_text()))

    def model(self):
        return load_model(self.folder)
