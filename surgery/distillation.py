"""The losses of the `distil` op: DistilBERT, TinyBERT and Tutor-KD, on transformers BERT-body
models (masked-LM heads in pretraining, classification heads in task-specific distillation).

Every loss object is called as `loss(student, batch, train) -> (loss, count)`, where `count` is
the number of positions the student's own MLM loss averages over; validation (`train=False`)
returns the student's own loss on the batch, so a distilled student's validation loss compares
with its teacher's. `trainable` is the module of extra parameters the loss trains beside the
student (TinyBERT's projections, Tutor-KD's tutor), or None; the training loop gives it to AdamW
and to the checkpoints like an objective's heads.

Internals come from transformers' own forward pass: hidden states from `output_hidden_states`,
attention *scores* (QK^T / sqrt(d_head), before the mask and softmax, as TinyBERT distils them)
from forward hooks on the query and key projections, so any attention implementation works.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100


def layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """TinyBERT's g(m) = m * N / M (1-based): the teacher layer (0-based) each student layer learns
    from. 12 -> 4 gives 2, 5, 8, 11; uneven ratios round."""
    return [max(0, int((m + 1) * teacher_layers / student_layers + 0.5) - 1) for m in range(student_layers)]


def _frozen(teacher):
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@contextmanager
def attention_scores(model):
    """Collect every layer's attention scores (batch, heads, query, key) during one forward pass,
    in call order (so layers shared ALBERT-style appear once per use)."""
    heads = model.config.num_attention_heads
    queries: list[torch.Tensor] = []
    keys: list[torch.Tensor] = []
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.endswith((".query", ".key")):
            store = queries if name.endswith(".query") else keys
            hooks.append(module.register_forward_hook(lambda _m, _i, out, store=store: store.append(out)))
    scores: list[torch.Tensor] = []
    try:
        yield scores
    finally:
        for h in hooks:
            h.remove()
    for q, k in zip(queries, keys):
        b, s, width = q.shape
        q = q.view(b, s, heads, width // heads).transpose(1, 2)
        k = k.view(b, s, heads, width // heads).transpose(1, 2)
        scores.append(q @ k.transpose(-1, -2) / math.sqrt(width // heads))


def _inputs(batch) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


def run_with_internals(model, inputs: dict, want_scores: bool = True):
    """(output with hidden_states, [scores per layer]) from one forward pass of `model`."""
    if not want_scores:
        return model(**inputs, output_hidden_states=True), []
    with attention_scores(model) as scores:
        out = model(**inputs, output_hidden_states=True)
    return out, scores


def count_of(batch) -> int:
    """What the student's own loss averages over: MLM positions, or examples of a task batch."""
    labels = batch.get("labels")
    if labels is not None and labels.dim() > 1:
        return max(1, int((labels != IGNORE).sum()))
    return int(batch["input_ids"].shape[0])


def own_loss(student, batch):
    """The student's own loss on the batch (MLM, or the task's), with its count."""
    return student(**batch).loss, count_of(batch)


class Distiller:
    """A frozen teacher, the extra trainable module (or None), and `to(device)` for both."""

    trainable: nn.Module | None = None

    def __init__(self, teacher):
        self.teacher = _frozen(teacher)

    def to(self, device):
        self.teacher.to(device)
        if self.trainable is not None:
            self.trainable.to(device)
        return self


def soft_cross_entropy(student_logits, teacher_logits, T: float) -> torch.Tensor:
    """Mean over rows of CE(softmax(teacher/T), softmax(student/T)) (TinyBERT's prediction loss)."""
    target = F.softmax(teacher_logits.float() / T, dim=-1)
    return -(target * F.log_softmax(student_logits.float() / T, dim=-1)).sum(-1).mean()


class DistilBertLoss(Distiller):
    """DistilBERT's loss: soft * T^2 * KL(teacher_T || student_T) over the vocabulary axis on every
    non-pad position + hard * student MLM + cos * (1 - cos(h_student, h_teacher)) on the last
    hidden states."""

    def __init__(self, teacher, T: float = 2.0, soft: float = 5.0, hard: float = 2.0, cos: float = 1.0, **_):
        super().__init__(teacher)
        self.T, self.soft, self.hard, self.cos = float(T), float(soft), float(hard), float(cos)

    def __call__(self, student, batch, train: bool = True):
        if not train:
            return own_loss(student, batch)
        out = student(**batch, output_hidden_states=True)
        count = int((batch["labels"] != IGNORE).sum())
        with torch.no_grad():
            t = self.teacher(**_inputs(batch), output_hidden_states=True)
        keep = batch["attention_mask"].bool()
        s_logits, t_logits = out.logits[keep].float(), t.logits[keep].float()
        soft = F.kl_div(F.log_softmax(s_logits / self.T, dim=-1), F.softmax(t_logits / self.T, dim=-1),
                        reduction="batchmean") * self.T**2
        hs, ht = out.hidden_states[-1][keep].float(), t.hidden_states[-1][keep].float()
        cos = (1 - F.cosine_similarity(hs, ht, dim=-1)).mean()
        return self.soft * soft + self.hard * out.loss + self.cos * cos, count


class Projections(nn.Module):
    """TinyBERT's learned maps from the student's width to the teacher's: W_e for the embedding
    output, W_h for every hidden state. Identity where the widths match (a start, still learned)."""

    def __init__(self, student_width: int, teacher_width: int):
        super().__init__()
        self.embedding = nn.Linear(student_width, teacher_width, bias=False)
        self.hidden = nn.Linear(student_width, teacher_width, bias=False)
        for lin in (self.embedding, self.hidden):
            if student_width == teacher_width:
                nn.init.eye_(lin.weight)
            else:
                nn.init.normal_(lin.weight, std=student_width**-0.5)


class IntermediateLoss(nn.Module):
    """TinyBERT's Transformer-layer distillation: emb * MSE(E_s W_e, E_t) + hid * sum_m
    MSE(H_s[m] W_h, H_t[g(m)]) + att * sum_m mean_heads MSE(A_s[m], A_t[g(m)]), over the non-pad
    positions (scores: non-pad query and key), g = layer_map. Also used by Tutor-KD."""

    def __init__(self, student_config, teacher_config, emb: float = 1.0, att: float = 1.0, hid: float = 1.0):
        super().__init__()
        self.project = Projections(student_config.hidden_size, teacher_config.hidden_size)
        self.map = layer_map(teacher_config.num_hidden_layers, student_config.num_hidden_layers)
        self.emb, self.att, self.hid = float(emb), float(att), float(hid)

    def forward(self, s_out, s_scores, t_out, t_scores, attention_mask) -> torch.Tensor:
        keep = attention_mask.bool()
        hs, ht = s_out.hidden_states, t_out.hidden_states
        loss = hs[0].new_zeros((), dtype=torch.float32)
        if self.emb:
            loss = loss + self.emb * F.mse_loss(self.project.embedding(hs[0][keep]).float(), ht[0][keep].float())
        if self.hid:
            for m, g in enumerate(self.map):
                loss = loss + self.hid * F.mse_loss(self.project.hidden(hs[m + 1][keep]).float(), ht[g + 1][keep].float())
        if self.att:
            pair = (keep[:, None, :, None] & keep[:, None, None, :]).expand_as(t_scores[0])
            for m, g in enumerate(self.map):
                loss = loss + self.att * F.mse_loss(s_scores[m].float()[pair], t_scores[g].float()[pair])
        return loss


class TinyBertLoss(Distiller):
    """TinyBERT: the intermediate-layer loss (`IntermediateLoss`) + pred * soft CE of the logits at
    temperature T (every non-pad position of an MLM batch; every example of a classification one).
    General distillation (pretraining) uses pred=0; task-specific distillation runs the
    intermediate loss first, then the prediction loss alone (surgery.finetune)."""

    def __init__(self, teacher, student, emb: float = 1.0, att: float = 1.0, hid: float = 1.0,
                 pred: float = 0.0, T: float = 1.0, **_):
        super().__init__(teacher)
        self.trainable = IntermediateLoss(student.config, teacher.config, emb, att, hid)
        self.pred, self.T = float(pred), float(T)
        self.intermediate = bool(emb or att or hid)

    def __call__(self, student, batch, train: bool = True):
        if not train:
            return own_loss(student, batch)
        inputs = _inputs(batch)
        count = count_of(batch)
        want_scores = bool(self.trainable.att)
        s_out, s_scores = run_with_internals(student, inputs, want_scores)
        with torch.no_grad():
            t_out, t_scores = run_with_internals(self.teacher, inputs, want_scores)
        loss = self.trainable(s_out, s_scores, t_out, t_scores, batch["attention_mask"]) if self.intermediate else 0.0
        if self.pred:
            s_logits, t_logits = s_out.logits, t_out.logits
            if s_logits.dim() == 3:  # token logits: the non-pad positions
                keep = batch["attention_mask"].bool()
                s_logits, t_logits = s_logits[keep], t_logits[keep]
            loss = loss + self.pred * soft_cross_entropy(s_logits, t_logits, self.T)
        return loss, count


def pairwise_logit(logits: torch.Tensor, original: torch.Tensor, replaced: torch.Tensor) -> torch.Tensor:
    """Tutor-KD's modified logit at each position: z[replaced] - z[original], whose sigmoid
    p(replaced) / (p(replaced) + p(original)) is the replaced token's probability relative to the
    original's, never above 1 (0.5 where the token was kept)."""
    z = logits.float()
    return z.gather(-1, replaced[:, None]).squeeze(-1) - z.gather(-1, original[:, None]).squeeze(-1)


def binary_kl(student_logit: torch.Tensor, teacher_p: torch.Tensor) -> torch.Tensor:
    """KL(Bernoulli(teacher_p) || Bernoulli(sigmoid(student_logit))) per element."""
    eps = 1e-7
    t = teacher_p.clamp(eps, 1 - eps)
    entropy = -(t * t.log() + (1 - t) * (1 - t).log())
    return F.binary_cross_entropy_with_logits(student_logit, teacher_p, reduction="none") - entropy


def reinforce(log_prob_of_sample: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
    """REINFORCE with the batch-mean baseline: minimising it raises the probability of samples
    whose reward is above the batch's mean."""
    advantage = (reward - reward.mean()).detach()
    return -(advantage * log_prob_of_sample).mean()


class Tutor(nn.Module):
    """Tutor-KD's tutor: a small masked LM (its own embeddings, `width` times the teacher's d_model,
    d_ff and heads, the student's depth) with the student's intermediate-layer loss beside it."""

    def __init__(self, teacher_config, student_config, width: float, emb: float, att: float, hid: float):
        super().__init__()
        from transformers import BertConfig, BertForMaskedLM

        h, heads = teacher_config.hidden_size, teacher_config.num_attention_heads
        head_dim = h // heads
        g = max(head_dim, int(round(h * width / head_dim)) * head_dim)
        cfg = BertConfig(vocab_size=teacher_config.vocab_size, hidden_size=g, num_attention_heads=g // head_dim,
                         intermediate_size=max(1, int(round(teacher_config.intermediate_size * g / h))),
                         num_hidden_layers=student_config.num_hidden_layers,
                         max_position_embeddings=teacher_config.max_position_embeddings,
                         type_vocab_size=teacher_config.type_vocab_size,
                         pad_token_id=teacher_config.pad_token_id)
        self.generator = BertForMaskedLM(cfg)
        self.intermediate = IntermediateLoss(student_config, teacher_config, emb, att, hid)


class TutorKDLoss(Distiller):
    """Tutor-KD. For a batch of text X with the MLM objective's chosen positions:

    1. the tutor fills those positions, [MASK]ed, with samples x' of its MLM -> pseudo sample X';
    2. teacher and student read X'; the student learns from the teacher by the modified-logit loss
       (binary KL between sigmoid(a_teacher) and sigmoid(a_student), a = `pairwise_logit`, at the
       chosen positions that were replaced) + the intermediate-layer losses (hidden with a learned projection, attention);
    3. the tutor is trained by policy gradient (REINFORCE with the batch-mean baseline) to maximise
       R = R_teacher + R_student per chosen position: R_teacher = p_T(x | X') - max_{v != x}
       p_T(v | X'), the teacher's margin for the original token (negative where the teacher is
       wrong: an implausible or truly ambiguous sample), R_student = the student's modified-logit
       loss there (high = hard for the student); and by KL(teacher || tutor) on the [MASK]ed input,
       the teacher's MLM knowledge that keeps its samples plausible.

    The seed notes (seeds/002) give the structure; the formulas above are this project's reading
    of it (docs/bert-variants.md)."""

    def __init__(self, teacher, student, mask_id: int, tutor: float = 0.25, logit: float = 1.0,
                 emb: float = 0.0, att: float = 1.0, hid: float = 1.0, **_):
        super().__init__(teacher)
        self.trainable = Tutor(teacher.config, student.config, float(tutor), emb, att, hid)
        self.mask_id, self.logit = int(mask_id), float(logit)
        self.last: dict[str, float] = {}

    def __call__(self, student, batch, train: bool = True):
        if not train:
            return own_loss(student, batch)
        labels = batch["labels"]
        chosen = labels != IGNORE
        count = max(1, int(chosen.sum()))
        original = torch.where(chosen, labels, batch["input_ids"])
        masked = original.masked_fill(chosen, self.mask_id)
        inputs = _inputs(batch)
        gen = self.trainable.generator
        g_logits = gen(**{**inputs, "input_ids": masked}).logits[chosen].float()
        with torch.no_grad():
            sampled = torch.multinomial(F.softmax(g_logits, dim=-1), 1).squeeze(-1)
            t_masked = self.teacher(**{**inputs, "input_ids": masked}).logits[chosen].float()
        pseudo = original.clone()
        pseudo[chosen] = sampled
        pseudo_inputs = {**inputs, "input_ids": pseudo}
        want_scores = bool(self.trainable.intermediate.att)
        s_out, s_scores = run_with_internals(student, pseudo_inputs, want_scores)
        with torch.no_grad():
            t_out, t_scores = run_with_internals(self.teacher, pseudo_inputs, want_scores)
        orig, repl = original[chosen], sampled
        p_t = torch.sigmoid(pairwise_logit(t_out.logits[chosen], orig, repl))
        per_pos = binary_kl(pairwise_logit(s_out.logits[chosen], orig, repl), p_t)
        per_pos = torch.where(repl == orig, torch.zeros_like(per_pos), per_pos)
        logit_loss = per_pos.mean()
        inter = self.trainable.intermediate(s_out, s_scores, t_out, t_scores, batch["attention_mask"])
        with torch.no_grad():
            probs = F.softmax(t_out.logits[chosen].float(), dim=-1)
            p_orig = probs.gather(-1, orig[:, None]).squeeze(-1)
            rival = probs.scatter(-1, orig[:, None], 0.0).max(-1).values
            reward = (p_orig - rival) + per_pos.detach()
        policy = reinforce(F.log_softmax(g_logits, dim=-1).gather(-1, sampled[:, None]).squeeze(-1), reward)
        tutor_kd = F.kl_div(F.log_softmax(g_logits, dim=-1), F.softmax(t_masked, dim=-1), reduction="batchmean")
        self.last = {"replaced": float((repl != orig).float().mean()), "reward": float(reward.mean()),
                     "modified_logit": float(logit_loss.detach()), "intermediate": float(inter.detach()),
                     "tutor_kd": float(tutor_kd.detach())}
        return self.logit * logit_loss + inter + policy + tutor_kd, count


def build(style: str, teacher, student, options: dict, mask_id: int | None = None):
    """The loss object of `distil(style=...)` with the recipe's resolved options."""
    if style == "tinybert":
        return TinyBertLoss(teacher, student, **options)
    if style == "tutor":
        if mask_id is None:
            raise ValueError("Tutor-KD needs the tokenizer's [MASK] id")
        return TutorKDLoss(teacher, student, mask_id, **options)
    return DistilBertLoss(teacher, **options)
