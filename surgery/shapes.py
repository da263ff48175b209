"""Tensor shapes per group, parameter counts and training cost, computed from specs alone.

Groups follow the architecture-neutral view the ops work on (embedding, attention, feed-forward,
norms, relative bias, head), with shapes as `transformers` stores them ([out, in] for linear
weights), so a plan shows exactly which tensors a growth op resizes. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass

from surgery.spec import T5_BUCKETS, ModelSpec

# AdamW training state per parameter: fp32 weight, gradient and two moments.
TRAIN_BYTES_PER_PARAM = 16


@dataclass(frozen=True)
class Tensor:
    name: str  # a representative name, with {i} for the layer index
    shape: tuple[int, ...]
    count: int  # how many tensors of this shape the group holds

    @property
    def params(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * self.count


@dataclass(frozen=True)
class TensorGroup:
    name: str
    tensors: tuple[Tensor, ...]
    note: str = ""

    @property
    def params(self) -> int:
        return sum(t.params for t in self.tensors)

    def shape_text(self) -> str:
        if not self.tensors:
            return self.note or "-"
        parts = []
        for t in self.tensors:
            shape = "[" + ", ".join(str(s) for s in t.shape) + "]"
            parts.append(f"{shape} x{t.count}" if t.count != 1 else shape)
        # identical shapes read better once: "[512, 512] x72"
        return ", ".join(dict.fromkeys(parts)) + self.note if self.note.startswith(" (shared") else ", ".join(dict.fromkeys(parts))


def tensor_groups(spec: ModelSpec) -> list[TensorGroup]:
    """Every parameter tensor of spec's pretraining model, grouped. Sums to spec.params."""
    d, inner, ff, v, h = spec.d_model, spec.inner_dim, spec.d_ff, spec.vocab, spec.heads
    if spec.family == "t5":
        e, dl = spec.stacks
        attn = e + 2 * dl  # encoder self, decoder self, decoder cross
        wi = [Tensor("block.{i}.layer.*.DenseReluDense.wi", (ff, d), e + dl)]
        if spec.ff == "gated-gelu":
            wi = [
                Tensor("block.{i}.layer.*.DenseReluDense.wi_0", (ff, d), e + dl),
                Tensor("block.{i}.layer.*.DenseReluDense.wi_1", (ff, d), e + dl),
            ]
        head = (
            TensorGroup("lm head", (Tensor("lm_head.weight", (v, d), 1),))
            if spec.head == "untied"
            else TensorGroup("lm head", (), note="tied" + (" (x d_model^-0.5)" if spec.head == "tied" else ", unscaled"))
        )
        return [
            TensorGroup("embedding", (Tensor("shared.weight", (v, d), 1),)),
            TensorGroup("attention q/k/v", (Tensor("block.{i}.layer.*.*Attention.{q,k,v}", (inner, d), 3 * attn),)),
            TensorGroup("attention o", (Tensor("block.{i}.layer.*.*Attention.o", (d, inner), attn),)),
            TensorGroup("feed-forward in", tuple(wi)),
            TensorGroup("feed-forward out", (Tensor("block.{i}.layer.*.DenseReluDense.wo", (d, ff), e + dl),)),
            TensorGroup("norms", (Tensor("*.layer_norm.weight", (d,), 2 * e + 3 * dl + 2),)),
            TensorGroup("relative bias", (Tensor("block.0.layer.0.SelfAttention.relative_attention_bias", (T5_BUCKETS, h), 2),)),
            head,
        ]
    n = spec.layers
    if spec.family == "gpt2":  # Conv1D weights are stored [in, out]
        return [
            TensorGroup("embedding", (Tensor("transformer.wte", (v, d), 1), Tensor("transformer.wpe", (spec.max_positions, d), 1))),
            TensorGroup("attention q/k/v", (Tensor("h.{i}.attn.c_attn.weight", (d, 3 * inner), n), Tensor("....bias", (3 * inner,), n))),
            TensorGroup("attention o", (Tensor("h.{i}.attn.c_proj.weight", (inner, d), n), Tensor("....bias", (d,), n))),
            TensorGroup("feed-forward in", (Tensor("h.{i}.mlp.c_fc.weight", (d, ff), n), Tensor("....bias", (ff,), n))),
            TensorGroup("feed-forward out", (Tensor("h.{i}.mlp.c_proj.weight", (ff, d), n), Tensor("....bias", (d,), n))),
            TensorGroup("norms", (Tensor("*.ln_*.{weight,bias}", (d,), 2 * (2 * n + 1)),)),
            TensorGroup("lm head", (), note="tied"),
        ]
    if spec.family == "llama":
        kv = spec.kv_inner_dim
        head = (TensorGroup("lm head", (Tensor("lm_head.weight", (v, d), 1),)) if spec.head == "untied"
                else TensorGroup("lm head", (), note="tied"))
        return [
            TensorGroup("embedding", (Tensor("model.embed_tokens", (v, d), 1),)),
            TensorGroup("attention q/k/v", (Tensor("layers.{i}.self_attn.q_proj", (inner, d), n),
                                            Tensor("layers.{i}.self_attn.{k,v}_proj", (kv, d), 2 * n))),
            TensorGroup("attention o", (Tensor("layers.{i}.self_attn.o_proj", (d, inner), n),)),
            TensorGroup("feed-forward in", (Tensor("layers.{i}.mlp.{gate,up}_proj", (ff, d), 2 * n),)),
            TensorGroup("feed-forward out", (Tensor("layers.{i}.mlp.down_proj", (d, ff), n),)),
            TensorGroup("norms", (Tensor("*norm*.weight", (d,), 2 * n + 1),)),
            head,
        ]
    if spec.family == "albert":
        e, (ua, uf) = spec.embedding_size, spec.shared_units
        g = "albert_layer_groups.{g}.albert_layers.0"
        many = n > 1
        shared = f" (shared by all {n} layers)" if many else ""
        attn_note = shared if ua == 1 else ""
        ffn_note = shared if uf == 1 else ""
        if ua == uf:  # none or all: every LayerNorm alike
            norms = (Tensor("*.LayerNorm.{weight,bias}", (d,), 2 * 2 * ua),)
            norm_note = attn_note
        else:  # one of the two per-layer LayerNorms is shared
            norms = (Tensor(f"{g}.attention.LayerNorm.{{weight,bias}}", (d,), 2 * ua),
                     Tensor(f"{g}.full_layer_layer_norm.{{weight,bias}}", (d,), 2 * uf))
            which = "attention" if ua == 1 else "feed-forward"
            norm_note = f" (shared by all {n} layers: the {which} LayerNorm)" if many else ""
        return [
            TensorGroup("embedding", (Tensor("embeddings.word_embeddings", (v, e), 1),
                                      Tensor("embeddings.position_embeddings", (spec.max_positions, e), 1),
                                      Tensor("embeddings.token_type_embeddings", (2, e), 1),
                                      Tensor("embeddings.LayerNorm.{weight,bias}", (e,), 2))),
            TensorGroup("embedding projection", (Tensor("encoder.embedding_hidden_mapping_in.weight", (d, e), 1),
                                                 Tensor("....bias", (d,), 1))),
            TensorGroup("attention q/k/v", (Tensor(f"{g}.attention.{{query,key,value}}.weight", (d, d), 3 * ua),
                                            Tensor("....bias", (d,), 3 * ua)), note=attn_note),
            TensorGroup("attention o", (Tensor(f"{g}.attention.dense.weight", (d, d), ua), Tensor("....bias", (d,), ua)), note=attn_note),
            TensorGroup("feed-forward in", (Tensor(f"{g}.ffn.weight", (ff, d), uf), Tensor("....bias", (ff,), uf)), note=ffn_note),
            TensorGroup("feed-forward out", (Tensor(f"{g}.ffn_output.weight", (d, ff), uf), Tensor("....bias", (d,), uf)), note=ffn_note),
            TensorGroup("norms", norms, note=norm_note),
            TensorGroup("lm head", (Tensor("predictions.dense.weight", (e, d), 1), Tensor("predictions.dense.bias", (e,), 1),
                                    Tensor("predictions.LayerNorm.{weight,bias}", (e,), 2), Tensor("predictions.bias", (v,), 1)),
                        note="decoder tied"),
        ]
    return [
        TensorGroup(
            "embedding",
            (
                Tensor("embeddings.word_embeddings", (v, d), 1),
                Tensor("embeddings.position_embeddings", (spec.max_positions, d), 1),
                Tensor("embeddings.token_type_embeddings", (2, d), 1),
            ),
        ),
        TensorGroup(
            "attention q/k/v",
            (Tensor("layer.{i}.attention.self.{query,key,value}.weight", (d, d), 3 * n), Tensor("....bias", (d,), 3 * n)),
        ),
        TensorGroup("attention o", (Tensor("layer.{i}.attention.output.dense.weight", (d, d), n), Tensor("....bias", (d,), n))),
        TensorGroup("feed-forward in", (Tensor("layer.{i}.intermediate.dense.weight", (ff, d), n), Tensor("....bias", (ff,), n))),
        TensorGroup("feed-forward out", (Tensor("layer.{i}.output.dense.weight", (d, ff), n), Tensor("....bias", (d,), n))),
        TensorGroup("norms", (Tensor("*.LayerNorm.{weight,bias}", (d,), 2 * (2 * n + 1)),)),
        TensorGroup(
            "lm head",
            (
                Tensor("cls.predictions.transform.dense.weight", (d, d), 1),
                Tensor("cls.predictions.transform.dense.bias", (d,), 1),
                Tensor("cls.predictions.transform.LayerNorm.{weight,bias}", (d,), 2),
                Tensor("cls.predictions.bias", (v,), 1),
            ),
            note="decoder tied",
        ),
    ]


@dataclass(frozen=True)
class GroupChange:
    name: str
    before: str
    after: str
    params_before: int
    params_after: int

    @property
    def changed(self) -> bool:
        return self.before != self.after


def shape_changes(src: ModelSpec, dst: ModelSpec) -> list[GroupChange]:
    """Per tensor group: shapes and parameter counts before and after a growth."""
    before = {g.name: g for g in tensor_groups(src)}
    after = {g.name: g for g in tensor_groups(dst)}
    names = list(dict.fromkeys([*before, *after]))  # a group one side lacks shows as "-" with 0
    empty = TensorGroup("", (), note="-")
    return [
        GroupChange(name, before.get(name, empty).shape_text(), after.get(name, empty).shape_text(),
                    before.get(name, empty).params, after.get(name, empty).params)
        for name in names
    ]


def flops_per_token(spec: ModelSpec) -> int:
    """Training FLOPs per token, the usual 6 * N estimate (forward 2N + backward 4N).

    For t5 this counts every parameter against every token of the sequence, an upper estimate:
    encoder and decoder actually see the corrupted input and the shorter target respectively.
    ALBERT's shared weights count once per layer that uses them: sharing saves parameters, not
    compute, so a shared ALBERT costs what the unshared one does.
    """
    if spec.family == "albert":
        return 6 * spec.model_copy(update={"share": "none"}).params
    return 6 * spec.params


def train_memory_bytes(spec: ModelSpec) -> int:
    """Weights, gradients and AdamW moments in fp32; activations not included."""
    return TRAIN_BYTES_PER_PARAM * spec.params


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M'."""
    for size, suffix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.3g}{suffix}{unit}"
    return f"{n:.3g}{unit}" if isinstance(n, float) else f"{n}{unit}"


def human_bytes(n: float) -> str:
    for size, suffix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= size:
            return f"{n / size:.3g} {suffix}"
    return f"{int(n)} B"
