"""distil(style=distilbert|tinybert|tutor): the internals the losses read, the losses themselves
on tiny models, and whole `surgery run` stages (with resume inside a distillation stage)."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from surgery.compress import distil_student, load_model
from surgery.distillation import (
    TinyBertLoss,
    TutorKDLoss,
    attention_scores,
    layer_map,
    pairwise_logit,
    reinforce,
)
from surgery.spec import ModelSpec
from surgery.train.objectives import IGNORE, make_objective
from surgery.train.tokenizer import train_tokenizer
from tests.fixtures_text import documents
from tests.tiny import model


def bspec(**dims) -> ModelSpec:
    return ModelSpec(family="bert", vocab=300, **dims)


@pytest.fixture(scope="module")
def tok():
    t = train_tokenizer(documents(), "bert", 300)
    assert len(t) <= 300
    return t


@pytest.fixture(scope="module")
def blocks(tok):
    stream = np.concatenate([tok(d, add_special_tokens=False)["input_ids"] + [tok.sep_token_id] for d in documents(300)])
    return stream[: len(stream) // 30 * 30].reshape(-1, 30)


def mlm_batch(tok, blocks, step, n=8):
    obj = make_objective("mlm", {}, tok, 32)
    idx = np.random.default_rng(step).choice(len(blocks), n)
    b = obj(blocks[idx], np.random.default_rng([1, step]))
    b["attention_mask"][0, -5:] = 0  # some padding, which every loss must ignore
    return b


def test_layer_map_is_tinybert_g():
    assert layer_map(12, 4) == [2, 5, 8, 11]
    assert layer_map(4, 2) == [1, 3]
    assert layer_map(4, 4) == [0, 1, 2, 3]
    assert layer_map(6, 4) == [1, 2, 4, 5]  # uneven: rounded, still increasing and ending on the last


def test_hooked_scores_are_what_transformers_softmaxes():
    """softmax(scores + mask) from the hooks equals the attention probabilities transformers returns."""
    m = model(bspec(layers=2, d_model=16, heads=4, d_ff=32))
    m.config._attn_implementation = "eager"
    ids = torch.randint(5, 101, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, -2:] = 0
    with attention_scores(m) as scores:
        out = m(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert len(scores) == 2 and scores[0].shape == (2, 4, 7, 7)
    for s, probs in zip(scores, out.attentions):
        masked = s.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
        assert torch.allclose(torch.softmax(masked, -1), probs, atol=1e-6)


def test_intermediate_loss_is_zero_for_the_teacher_itself_and_positive_for_a_student(tok, blocks):
    t = model(bspec(layers=4, d_model=16, heads=4, d_ff=32))
    b = mlm_batch(tok, blocks, 0)
    same = TinyBertLoss(t, t)
    loss, count = same(t, b)
    assert abs(float(loss.detach())) < 1e-6 and count == int((b["labels"] != IGNORE).sum())
    s = distil_student(t, bspec(layers=2, d_model=8, heads=4, d_ff=16))
    assert float(TinyBertLoss(t, s)(s, b)[0].detach()) > 0.1


def test_padding_does_not_count(tok, blocks):
    """Changing what sits at padded positions changes nothing the intermediate loss sees."""
    t = model(bspec(layers=2, d_model=16, heads=4, d_ff=32))
    s = distil_student(t, bspec(layers=1, d_model=8, heads=4, d_ff=16))
    loss = TinyBertLoss(t, s)
    b = mlm_batch(tok, blocks, 0)
    b2 = {k: v.clone() for k, v in b.items()}
    b2["input_ids"][0, -5:] = 7
    assert torch.allclose(loss(s, b)[0], loss(s, b2)[0], atol=1e-6)


def _train(loss_fn, student, tok, blocks, steps, lr=3e-3):
    params = list(student.parameters()) + (list(loss_fn.trainable.parameters()) if loss_fn.trainable is not None else [])
    opt = torch.optim.AdamW(params, lr=lr)
    student.train()
    for step in range(steps):
        loss, _ = loss_fn(student, mlm_batch(tok, blocks, step))
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_tinybert_general_distillation_into_a_narrower_student(tok, blocks):
    torch.manual_seed(0)
    t = model(bspec(layers=4, d_model=32, heads=4, d_ff=64))
    s = distil_student(t, bspec(layers=2, d_model=16, heads=4, d_ff=32))
    assert tuple(s.config.to_dict()[k] for k in ("num_hidden_layers", "hidden_size", "intermediate_size")) == (2, 16, 32)
    fn = TinyBertLoss(t, s)  # general distillation: the intermediate losses, whose floor is 0
    fixed = mlm_batch(tok, blocks, 999)
    with torch.no_grad():
        before = float(fn(s.eval(), fixed)[0])
    _train(fn, s, tok, blocks, 40)
    with torch.no_grad():
        after = float(fn(s.eval(), fixed)[0])
    assert after < 0.5 * before, (before, after)


def test_tutor_kd_samples_rewards_and_learning(tok, blocks):
    torch.manual_seed(0)
    t = model(bspec(layers=2, d_model=32, heads=4, d_ff=64))
    s = distil_student(t, bspec(layers=1, d_model=32, heads=4, d_ff=64))
    fn = TutorKDLoss(t, s, tok.mask_token_id, tutor=0.25)
    assert fn.trainable.generator.config.hidden_size == 8  # a quarter of the teacher's width
    rows = []
    params = list(s.parameters()) + list(fn.trainable.parameters())
    opt = torch.optim.AdamW(params, lr=3e-3)
    for step in range(30):
        loss, count = fn(s, mlm_batch(tok, blocks, step))
        assert torch.isfinite(loss) and count > 0
        rows.append(dict(fn.last))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(0 < r["replaced"] <= 1 for r in rows)  # the tutor's samples replace chosen tokens
    early = {k: np.mean([r[k] for r in rows[:5]]) for k in rows[0]}
    late = {k: np.mean([r[k] for r in rows[-5:]]) for k in rows[0]}
    assert late["intermediate"] < 0.5 * early["intermediate"]  # the student follows the teacher's internals
    assert late["tutor_kd"] < 0.8 * early["tutor_kd"]  # the tutor learns the teacher's MLM


def test_reinforce_raises_the_rewarded_sample():
    torch.manual_seed(0)
    logits = torch.zeros(5, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=1.0)
    for _ in range(50):
        dist = torch.distributions.Categorical(logits=logits)
        actions = dist.sample((256,))
        loss = reinforce(dist.log_prob(actions), (actions == 2).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.softmax(logits, 0)[2] > 0.8


def test_pairwise_logit_is_a_ratio_bounded_by_one():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.6, 0.3]]))
    orig, repl = torch.tensor([0, 0]), torch.tensor([1, 1])
    p = torch.sigmoid(pairwise_logit(logits, orig, repl))
    # p(x') / (p(x) + p(x')): 0.25 / 0.75 and 0.6 / 0.7
    assert torch.allclose(p, torch.tensor([1 / 3, 6 / 7]))


# ---- surgery run -----------------------------------------------------------------------------
RECIPE = """
model B = bert(layers=2, d_model=32, heads=4, d_ff=64, vocab=300)
model S = bert(layers=1, d_model={width}, heads=4, d_ff={ff}, vocab=300)
grow B {op}@10steps S
train 16steps on "corpus.txt"
    objective mlm
    optimizer adamw(lr=3e-3, warmup=2steps)
    batch_size=4 seq_len=32 val_every=4steps
"""


@pytest.mark.parametrize("op, width, ff", [("distil", 32, 64), ("distil(style=tinybert)", 16, 32),
                                           ("distil(style=tutor, tutor=0.5)", 16, 32)])
def test_distil_stage_runs_resumes_and_saves_the_planned_student(tmp_path, op, width, ff):
    from surgery.plan import plan_file
    from surgery.train.loop import Trainer
    from surgery.train.schedule import compile_plan

    (tmp_path / "corpus.txt").write_text("\n".join(documents(200)) + "\n")
    recipe = tmp_path / "d.grow"
    recipe.write_text(RECIPE.format(op=op, width=width, ff=ff))
    plan = plan_file(recipe)
    segments, settings = compile_plan(plan)
    full, cut = tmp_path / "full", tmp_path / "cut"
    kw = dict(run_name="d", quiet=True, corpus_base=tmp_path)
    Trainer(segments, settings, full, **kw).run()
    Trainer(segments, settings, cut, stop_after_step=12, **kw).run()
    Trainer(segments, settings, cut, resume=True, **kw).run()
    a, b = load_file(full / "final" / "model.safetensors"), load_file(cut / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # resumed inside the distillation: same student
    student = load_model(full / "final")
    assert student.num_parameters() == plan.models["S"].params
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in rows if r.get("val_loss") is not None and r["step"] >= 10]
    assert all(np.isfinite(val)) and len(val) >= 3
    style = "distilbert" if op == "distil" else op.split("=")[1].split(",")[0].rstrip(")")
    heads = full / "final" / "objective" / f"distil-{style}_heads.safetensors"
    assert heads.exists() == (style != "distilbert")


# ---- task-specific distillation (TinyBERT's second stage) ---------------------------------------
def test_task_specific_distillation_from_a_fine_tuned_teacher(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    from surgery.errors import SurgeryError
    from surgery.finetune import finetune
    from tests.finetune_fixtures import (
        tiny_checkpoint,
        tiny_tokenizer,
        write_own_task_files,
    )

    own = write_own_task_files(tmp_path / "own")
    data = dict(train_data=own["nli"], eval_data=own["nli"], batch_size=4, max_length=96, progress=False,
                warmup_ratio=0.0, lr=3e-3)
    from transformers import AutoTokenizer

    teacher = finetune(tiny_checkpoint(tmp_path / "t", "bert"), "klue-nli", tmp_path / "tft", epochs=60,
                       save_model=True, **data)
    assert teacher["accuracy"] >= 90  # it fits its 16 examples (chance: 33, three labels in turn)
    tok = AutoTokenizer.from_pretrained(tmp_path / "t")  # the teacher's: both read the same ids
    torch.manual_seed(1)
    student = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
                                         intermediate_size=32, max_position_embeddings=512, pad_token_id=tok.pad_token_id))
    student.save_pretrained(tmp_path / "s")
    tok.save_pretrained(tmp_path / "s")
    scores = finetune(tmp_path / "s", "klue-nli", tmp_path / "sft", epochs=40, distil_epochs=20,
                      teacher=tmp_path / "tft", **data)  # the folder --save-model wrote: <task>/model is found
    record = json.loads((tmp_path / "sft" / "scores.json").read_text())
    phases = record["distillation"]["phases"]
    assert [p["epochs"] for p in phases] == [20, 40] and all(p["steps"] > 0 for p in phases)
    # Neither phase reads the labels, so this is learnt from the teacher alone (chance: 33; measured
    # 68.75, as the same student fine-tuned on the labels for 40 epochs). The tokenizer is the same in
    # every process, so this number is too (it once varied with tokenizers' per-process vocabulary).
    assert scores["accuracy"] >= 60, (teacher, scores)
    other = tmp_path / "other"  # a student with its own tokenizer cannot be distilled
    student.save_pretrained(other)
    tiny_tokenizer("bert", vocab_size=180).save_pretrained(other)  # fewer pieces: other ids
    with pytest.raises(SurgeryError, match="different tokenizers"):
        finetune(other, "klue-nli", tmp_path / "x", epochs=1, teacher=tmp_path / "tft", **data)
    with pytest.raises(SurgeryError, match="implemented for bert checkpoints on classification"):
        finetune(tmp_path / "s", "korquad-ext", tmp_path / "x", epochs=1, teacher=tmp_path / "tft" / "model",
                 train_data=own["squad"], eval_data=own["squad"], progress=False)


def test_plan_counts_the_teachers_forward_passes():
    from surgery.plan import build_plan
    from surgery.plan.export import plan_json
    from surgery.recipe import parse_recipe

    per_token = {}
    for op in ("distil", "distil(style=tutor)"):
        text = RECIPE.format(op=op, width=32, ff=64).replace('"corpus.txt"', '"c.txt"')
        out = plan_json(build_plan(parse_recipe(text, file="x.grow")))
        b, s = out["models"]["B"]["params"], out["models"]["S"]["params"]
        per_token[op] = [st for st in out["stages"] if st["kind"] == "train"][-1]["flops_per_token"] - 6 * s
        assert per_token[op] >= 2 * b
    assert per_token["distil"] == 2 * b  # one teacher forward per token
    assert per_token["distil(style=tutor)"] > 4 * b  # two teacher forwards and the tutor's training
