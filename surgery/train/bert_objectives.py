"""BERT-variant pretraining objectives: RoBERTa static/dynamic masking, SpanBERT span masking
(+ span-boundary objective), ELECTRA replaced-token detection, ALBERT sentence-order prediction.

An objective turns a batch of token blocks into model inputs (`__call__`) and, where the model's
own `loss` is not the whole story, computes the loss itself (`loss(model, aux, batch)`). Extra
trainable modules that are not part of the kept checkpoint (SBO head, ELECTRA generator and RTD
head) are built by `build_aux(model)`; the loop trains and checkpoints them beside the model.

Randomness: dynamic masking draws from the step's generator (new masks every time a block is
seen); static masking draws from a generator seeded by (seed, block index, epoch % masks), i.e.
the same `masks` mask copies of each block for the whole run, as RoBERTa's static baseline.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from surgery.train.objectives import IGNORE, Objective


def word_starts(tokenizer) -> np.ndarray:
    """Per vocabulary id: does the piece start a word (SentencePiece `▁`, or a special token)?"""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special = set(tokenizer.all_special_ids)
    return np.array([i in special or (p or "").startswith("▁") for i, p in enumerate(pieces)], dtype=bool)


def truncated_geometric(p: float, max_len: int) -> np.ndarray:
    """P(len = 1..max_len): geometric(p) truncated at max_len and renormalised (SpanBERT)."""
    lens = np.arange(1, max_len + 1)
    probs = p * (1 - p) ** (lens - 1)
    return probs / probs.sum()


class _Base(Objective):
    """Shared BERT input plumbing: [CLS] block [SEP], pad-aware attention mask, 80/10/10."""

    family = "bert"
    packing_required: str | None = None
    model_kind = "mlm"  # "mlm": *ForMaskedLM, "pretraining": *ForPreTraining (SOP head)

    def _setup(self, tokenizer, seq_len, specials_in_block=2):
        self.tokenizer = tokenizer
        self.raw_len = seq_len - specials_in_block
        self.cls, self.sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.mask_id, self.pad = tokenizer.mask_token_id, tokenizer.pad_token_id
        self.vocab = len(tokenizer)
        self.special = np.array(sorted(set(tokenizer.all_special_ids)))
        # random replacements are ordinary tokens (never [MASK], [SEP], [PAD], ...)
        self.ordinary = np.setdiff1d(np.arange(self.vocab), self.special)

    def _wrap(self, blocks: np.ndarray) -> np.ndarray:
        b = blocks.shape[0]
        return np.concatenate([np.full((b, 1), self.cls), blocks, np.full((b, 1), self.sep)], axis=1).astype(np.int64)

    def _replace(self, ids, chosen, groups, rng, mask_fraction=0.8, random_fraction=0.1):
        """80/10/10 per group (a token, or a whole span): [MASK] / random token / kept."""
        roll_per_group = rng.random(int(groups.max()) + 1 if groups.size and groups.max() >= 0 else 1)
        roll = np.where(chosen, roll_per_group[np.maximum(groups, 0)], 1.0)
        to_mask = chosen & (roll < mask_fraction)
        to_random = chosen & (roll >= mask_fraction) & (roll < mask_fraction + random_fraction)
        out = np.where(to_mask, self.mask_id, ids)
        return np.where(to_random, self.ordinary[rng.integers(0, len(self.ordinary), ids.shape)], out)

    def _tensors(self, ids, labels, token_types=None, **extra):
        input_ids = torch.from_numpy(ids.astype(np.int64))
        out = {
            "input_ids": input_ids,
            "attention_mask": (input_ids != self.pad).long(),
            "token_type_ids": torch.zeros_like(input_ids) if token_types is None else torch.from_numpy(token_types.astype(np.int64)),
            "labels": torch.from_numpy(labels.astype(np.int64)),
        }
        out.update({k: torch.as_tensor(v) for k, v in extra.items()})
        return out

    # Static masking: one generator per (block, mask copy).
    def _row_rngs(self, rng, n, block_ids, epoch):
        if getattr(self, "masking", "dynamic") == "static" and block_ids is not None:
            copy = epoch % max(1, int(self.masks))
            return [np.random.default_rng([self.seed, 31337, int(b), copy]) for b in block_ids]
        return [rng] * n

@dataclass
class MaskedLMPlus(_Base):
    """BERT/RoBERTa MLM: `rate` of the tokens chosen, 80% [MASK] / 10% random / 10% kept; masks
    dynamic (new each time, default) or static (`masks` fixed copies per block)."""

    tokenizer: object
    seq_len: int
    rate: float = 0.15
    masking: str = "dynamic"
    masks: int = 1
    seed: int = 0

    def __post_init__(self):
        self._setup(self.tokenizer, self.seq_len)

    def _mask_rows(self, ids, rng):
        candidates = ~np.isin(ids, self.special)
        chosen = (rng.random(ids.shape) < self.rate) & candidates
        labels = np.where(chosen, ids, IGNORE)
        groups = np.arange(ids.size).reshape(ids.shape)
        return self._replace(ids, chosen, groups, rng), labels

    def __call__(self, blocks, rng, block_ids=None, epoch=0):
        ids = self._wrap(blocks)
        if self.masking == "static" and block_ids is not None:
            rows = [self._mask_rows(ids[i : i + 1], r) for i, r in enumerate(self._row_rngs(rng, len(ids), block_ids, epoch))]
            new, labels = np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])
        else:
            new, labels = self._mask_rows(ids, rng)
        return self._tensors(new, labels)


# ---- SpanBERT -------------------------------------------------------------------------------
def span_mask_row(ids, maskable, starts, budget, probs, rng, whole_words=True, max_tries=200):
    """Choose spans until `budget` tokens are masked. Span lengths (in words when whole_words,
    else tokens) follow `probs` (P(len=1..)); a span never crosses an unmaskable token; a span
    that would pass the budget is cut to the words that fit. Returns (span id per position, -1
    where unmasked; list of (start, end) token ranges, end exclusive)."""
    n = len(ids)
    unit_start = (starts | ~maskable) if whole_words else np.ones(n, dtype=bool)
    # units: maximal pieces [s, e) of maskable tokens starting at a word start
    unit_bounds = []
    i = 0
    while i < n:
        if not maskable[i]:
            i += 1
            continue
        j = i + 1
        while j < n and maskable[j] and not unit_start[j]:
            j += 1
        unit_bounds.append((i, j))
        i = j
    span_of = np.full(n, -1, dtype=np.int64)
    spans = []
    if not unit_bounds or budget <= 0:
        return span_of, spans
    # unit k's run: units are contiguous when one ends where the next starts
    masked, tries = 0, 0
    lens = np.arange(1, len(probs) + 1)
    while masked < budget and tries < max_tries:
        tries += 1
        length = int(rng.choice(lens, p=probs))
        k = int(rng.integers(len(unit_bounds)))
        chosen = [k]
        while len(chosen) < length and chosen[-1] + 1 < len(unit_bounds) and unit_bounds[chosen[-1] + 1][0] == unit_bounds[chosen[-1]][1]:
            chosen.append(chosen[-1] + 1)
        s, e = unit_bounds[chosen[0]][0], unit_bounds[chosen[-1]][1]
        if (span_of[max(0, s - 1) : min(n, e + 1)] >= 0).any():
            continue  # overlaps or touches an earlier span: boundaries must stay visible
        while chosen and masked + (e - s) > budget:
            chosen.pop()
            e = unit_bounds[chosen[-1]][1] if chosen else s
        if not chosen:
            continue
        span_of[s:e] = len(spans)
        spans.append((s, e))
        masked += e - s
    return span_of, spans


@dataclass
class SpanMasking(_Base):
    """SpanBERT: spans of whole words, lengths ~ Geometric(p) clipped at max_span (words),
    until `rate` of the tokens are masked; 80/10/10 decided per span. `sbo=1` adds the
    span-boundary objective (predict each span token from the two boundary states + its
    position in the span)."""

    tokenizer: object
    seq_len: int
    rate: float = 0.15
    p: float = 0.2
    max_span: int = 10
    whole_words: bool = True
    sbo: bool = False
    masking: str = "dynamic"
    masks: int = 1
    seed: int = 0
    sbo_max_positions: int = 64

    def __post_init__(self):
        self._setup(self.tokenizer, self.seq_len)
        self.probs = truncated_geometric(self.p, int(self.max_span))
        self.starts = word_starts(self.tokenizer)

    def _row(self, row, rng):
        maskable = ~np.isin(row, self.special)
        budget = int(round(self.rate * maskable.sum()))
        span_of, spans = span_mask_row(row, maskable, self.starts[row], budget, self.probs, rng, bool(self.whole_words))
        chosen = span_of >= 0
        labels = np.where(chosen, row, IGNORE)
        new = self._replace(row[None], chosen[None], span_of[None], rng)[0]
        left = np.full(len(row), -1)
        right = np.full(len(row), -1)
        pos = np.full(len(row), -1)
        for s, e in spans:
            left[s:e], right[s:e] = s - 1, e
            pos[s:e] = np.minimum(np.arange(e - s), self.sbo_max_positions - 1)
        return new, labels, left, right, pos

    def __call__(self, blocks, rng, block_ids=None, epoch=0):
        ids = self._wrap(blocks)
        rows = [self._row(ids[i], r) for i, r in enumerate(self._row_rngs(rng, len(ids), block_ids, epoch))]
        new, labels, left, right, pos = (np.stack(x) for x in zip(*rows))
        extra = {"span_left": left, "span_right": right, "span_pos": pos} if self.sbo else {}
        return self._tensors(new, labels, **extra)

    def build_aux(self, model):
        if not self.sbo:
            return None
        return SpanBoundaryHead(model.config.hidden_size, self.sbo_max_positions, model.config.vocab_size)

    def loss(self, model, aux, batch):
        if not self.sbo:
            return super().loss(model, aux, batch)
        left, right, pos = batch.pop("span_left"), batch.pop("span_right"), batch.pop("span_pos")
        out = model(**batch, output_hidden_states=True)
        labels = batch["labels"]
        sel = labels != IGNORE
        count = int(sel.sum())
        if count == 0:
            return out.loss, 0
        h = out.hidden_states[-1]
        b_idx = torch.nonzero(sel, as_tuple=True)[0]
        hl = h[b_idx, left[sel]]
        hr = h[b_idx, right[sel]]
        logits = aux(hl, hr, pos[sel], model.get_input_embeddings().weight)
        sbo = F.cross_entropy(logits.float(), labels[sel])
        return out.loss + sbo, count


class SpanBoundaryHead(nn.Module):
    """SpanBERT's SBO head: y = LN(GeLU(W2 LN(GeLU(W1 [x_left; x_right; p_i])))), logits through
    the (tied) word embeddings plus a bias."""

    def __init__(self, hidden: int, max_positions: int, vocab: int):
        super().__init__()
        self.position = nn.Embedding(max_positions, hidden)
        self.dense1 = nn.Linear(3 * hidden, hidden)
        self.norm1 = nn.LayerNorm(hidden)
        self.dense2 = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.bias = nn.Parameter(torch.zeros(vocab))
        nn.init.normal_(self.position.weight, std=0.02)

    def forward(self, left, right, pos, word_embeddings):
        x = torch.cat([left, right, self.position(pos)], dim=-1)
        x = self.norm1(F.gelu(self.dense1(x)))
        x = self.norm2(F.gelu(self.dense2(x)))
        return x @ word_embeddings.t() + self.bias


# ---- ELECTRA --------------------------------------------------------------------------------
class ElectraAux(nn.Module):
    """ELECTRA's generator and the discriminator's RTD head.

    The generator reads the discriminator's embedding output (token, position and type embeddings
    shared, as in the paper), projects it to its own width `g`, runs its own BERT layers, and
    predicts tokens through the shared word embeddings (tied output). The RTD head is ELECTRA's
    dense -> GeLU -> dense(1) on the discriminator's last hidden states.
    """

    def __init__(self, config, g_model: int, g_heads: int, g_ff: int, g_layers: int):
        super().__init__()
        from transformers import BertConfig
        from transformers.models.bert.modeling_bert import BertEncoder

        h = config.hidden_size
        gcfg = BertConfig(hidden_size=g_model, num_attention_heads=g_heads, intermediate_size=g_ff,
                          num_hidden_layers=g_layers, vocab_size=config.vocab_size,
                          hidden_dropout_prob=config.hidden_dropout_prob,
                          attention_probs_dropout_prob=config.attention_probs_dropout_prob)
        gcfg._attn_implementation = "eager"
        self.project = nn.Linear(h, g_model)
        self.encoder = BertEncoder(gcfg)
        self.gen_dense = nn.Linear(g_model, h)
        self.gen_norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.gen_bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.rtd_dense = nn.Linear(h, h)
        self.rtd_out = nn.Linear(h, 1)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def generate_logits(self, embedded, attention_mask, word_embeddings):
        x = self.project(embedded)
        ext = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        x = self.encoder(x, attention_mask=ext).last_hidden_state
        x = self.gen_norm(F.gelu(self.gen_dense(x)))
        return x @ word_embeddings.t() + self.gen_bias

    def rtd_logits(self, hidden):
        return self.rtd_out(F.gelu(self.rtd_dense(hidden))).squeeze(-1)


@dataclass
class ReplacedTokenDetection(_Base):
    """ELECTRA: a small generator fills `rate` [MASK]ed positions with samples of its MLM; the
    discriminator (the kept model) tells original from replaced at every position.
    loss = MLM(generator) + lambda * RTD(discriminator). The generator's width is `generator`
    times the discriminator's (d_model, heads, d_ff; same depth) or `generator_d_model`."""

    tokenizer: object
    seq_len: int
    rate: float = 0.15
    generator: float = 0.25
    generator_d_model: int = 0
    lam: float = 50.0
    masking: str = "dynamic"
    masks: int = 1
    seed: int = 0

    def __post_init__(self):
        self._setup(self.tokenizer, self.seq_len)

    def __call__(self, blocks, rng, block_ids=None, epoch=0):
        ids = self._wrap(blocks)
        if self.masking == "static" and block_ids is not None:
            rngs = self._row_rngs(rng, len(ids), block_ids, epoch)
            chosen = np.stack([r.random(ids.shape[1]) < self.rate for r in rngs])
        else:
            chosen = rng.random(ids.shape) < self.rate
        chosen &= ~np.isin(ids, self.special)
        labels = np.where(chosen, ids, IGNORE)
        masked = np.where(chosen, self.mask_id, ids)
        out = self._tensors(masked, labels, original_ids=ids)
        out["sample_seed"] = torch.tensor(int(rng.integers(2**62)))
        return out

    def generator_dims(self, config) -> tuple[int, int, int]:
        h, heads, ff = config.hidden_size, config.num_attention_heads, config.intermediate_size
        head_dim = h // heads
        g = int(self.generator_d_model) or max(head_dim, int(round(h * float(self.generator))))
        g_heads = max(1, g // head_dim) if g % head_dim == 0 else 1
        return g, g_heads, max(1, int(round(ff * g / h)))

    def build_aux(self, model):
        cfg = model.config
        g, g_heads, g_ff = self.generator_dims(cfg)
        return ElectraAux(cfg, g, g_heads, g_ff, cfg.num_hidden_layers)

    def loss(self, model, aux, batch):
        original = batch.pop("original_ids")
        seed = int(batch.pop("sample_seed"))
        labels = batch.pop("labels")
        mask, types = batch["attention_mask"], batch["token_type_ids"]
        body = model.base_model
        sel = labels != IGNORE
        embedded = body.embeddings(input_ids=batch["input_ids"], token_type_ids=types)
        word = model.get_input_embeddings().weight
        gen_logits = aux.generate_logits(embedded, mask, word)
        count = int(sel.sum())
        mlm = F.cross_entropy(gen_logits[sel].float(), labels[sel]) if count else gen_logits.sum() * 0
        with torch.no_grad():
            g = torch.Generator(device=gen_logits.device).manual_seed(seed % (2**63))
            probs = torch.softmax(gen_logits[sel].float(), dim=-1)
            sampled = torch.multinomial(probs, 1, generator=g).squeeze(-1) if count else labels[sel]
        disc_in = original.clone()
        disc_in[sel] = sampled
        replaced = (disc_in != original).float()
        hidden = body(input_ids=disc_in, attention_mask=mask, token_type_ids=types).last_hidden_state
        logits = aux.rtd_logits(hidden).float()
        m = mask.bool()
        rtd = F.binary_cross_entropy_with_logits(logits[m], replaced[m])
        return mlm + float(self.lam) * rtd, max(count, 1)


# ---- ALBERT SOP ---------------------------------------------------------------------------
@dataclass
class SentenceOrder(_Base):
    """ALBERT: MLM plus sentence-order prediction. A block is consecutive text of one document
    (doc-sentences packing) cut at a word start into segments A and B; half the pairs are swapped.
    Input [CLS] A [SEP] B [SEP]; the *ForPreTraining two-way head (BERT's NSP head reused)
    predicts 0 = in order, 1 = swapped."""

    tokenizer: object
    seq_len: int
    rate: float = 0.15
    masking: str = "dynamic"
    masks: int = 1
    seed: int = 0
    packing_required = "doc-sentences"
    model_kind = "pretraining"

    def __post_init__(self):
        self._setup(self.tokenizer, self.seq_len, specials_in_block=3)
        self.starts = word_starts(self.tokenizer)

    def _row(self, row, rng):
        real = row[row != self.pad]
        n = len(real)
        cands = [i for i in range(1, n) if self.starts[real[i]]] or list(range(1, max(2, n)))
        cut = int(rng.choice(cands)) if n > 1 else 1
        a, b = real[:cut], real[cut:]
        swap = int(rng.random() < 0.5)
        if swap:
            a, b = b, a
        ids = np.concatenate([[self.cls], a, [self.sep], b, [self.sep]]).astype(np.int64)
        types = np.concatenate([np.zeros(len(a) + 2), np.ones(len(b) + 1)]).astype(np.int64)
        width = self.raw_len + 3
        ids = np.pad(ids, (0, width - len(ids)), constant_values=self.pad)
        types = np.pad(types, (0, width - len(types)))
        candidates = ~np.isin(ids, self.special)
        chosen = (rng.random(width) < self.rate) & candidates
        labels = np.where(chosen, ids, IGNORE)
        new = self._replace(ids[None], chosen[None], np.arange(width)[None], rng)[0]
        return new, labels, types, swap

    def __call__(self, blocks, rng, block_ids=None, epoch=0):
        rows = [self._row(blocks[i], r) for i, r in enumerate(self._row_rngs(rng, len(blocks), block_ids, epoch))]
        ids, labels, types, swaps = (np.stack(x) for x in zip(*rows))
        return self._tensors(ids, labels, types, order_label=swaps)

    def loss(self, model, aux, batch):
        order = batch.pop("order_label")
        # ALBERT's pretraining class names its label for sentence order, BERT's for next sentence
        key = "sentence_order_label" if "sentence_order_label" in inspect.signature(model.forward).parameters \
            else "next_sentence_label"
        out = model(**batch, **{key: order})
        return out.loss, (batch["labels"] != IGNORE).sum()


def _pretraining_class(model_type: str) -> str | None:
    """The family's class with the sentence-order/next-sentence head (its descriptor's "pretraining")."""
    from surgery.families import FAMILIES

    family = FAMILIES.get(model_type)
    return next((c for c, head in family.classes.items() if head == "pretraining"), None) if family else None


def as_model_kind(model, kind: str):
    """`model` as the class its objective trains: unchanged for "mlm"; for "pretraining" (sop) the
    family's *ForPreTraining with the same weights and a fresh two-way head (and pooler)."""
    import transformers

    target = _pretraining_class(model.config.model_type)
    if kind != "pretraining" or target is None or type(model).__name__ == target:
        return model
    new = getattr(transformers, target)(model.config)
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    bad = [k for k in missing if not any(t in k for t in ("pooler", "seq_relationship", "sop_classifier"))]
    if bad or unexpected:
        raise ValueError(f"cannot turn {type(model).__name__} into {type(new).__name__}: {bad or unexpected}")
    new.tie_weights()
    from surgery.sharing import tie_shared

    return tie_shared(new)  # albert share=attention|ffn: the shared blocks tied again
