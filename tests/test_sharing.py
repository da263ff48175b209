"""ALBERT's partial cross-layer sharing (share=attention|ffn): parameter counts, the tied model in
memory, checkpoints that plain from_pretrained reads, the share op, the plan, the CLI and a run."""

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from surgery.cli import app
from surgery.compress import load_model, share
from surgery.errors import RecipeError
from surgery.families import build_model
from surgery.plan import build_plan
from surgery.recipe import parse_recipe
from surgery.shapes import tensor_groups
from surgery.sharing import SHARED_MODULES, albert_layers, is_tied, tie_shared
from surgery.spec import ModelSpec
from tests import resume
from tests.fixtures_text import documents
from tests.tiny import VOCAB, batch, logits, model, rel_change, spec

SHARES = ("none", "all", "attention", "ffn")
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def albert(share: str, layers: int = 3, embedding: int | None = 8) -> ModelSpec:
    return ModelSpec(family="albert", layers=layers, d_model=16, heads=4, d_ff=32, vocab=VOCAB, embedding=embedding,
                     share=share)


def random_albert(s: ModelSpec, seed: int = 0):
    """A tiny ALBERT with every tensor moved off its init (norm gains and biases matter), tied."""
    m = build_model(s, seed=seed, **NO_DROPOUT).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in m.parameters():  # unique parameters: a shared one moves once
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return m


def unique_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


# ---- parameter counts ------------------------------------------------------------------------
@pytest.mark.parametrize("share_", SHARES)
def test_planned_count_is_the_unique_parameters_of_the_built_model(share_):
    s = albert(share_)
    m = build_model(s)
    assert unique_params(m) == m.num_parameters() == s.params == sum(g.params for g in tensor_groups(s))
    # the same at ALBERT-base size, built on the meta device (no memory)
    base = ModelSpec(family="albert", layers=12, d_model=768, heads=12, d_ff=3072, vocab=30000, embedding=128, share=share_)
    with torch.device("meta"):
        big = build_model(base)
    assert unique_params(big) == base.params == sum(g.params for g in tensor_groups(base))


def test_partial_sharing_counts_the_shared_blocks_once():
    n, d, ff = 3, 16, 32
    attention = 4 * (d * d + d) + 2 * d  # q/k/v/o and the attention LayerNorm
    ffn = 2 * d * ff + ff + d + 2 * d  # ffn, ffn_output and full_layer_layer_norm
    none = albert("none").params
    assert none - albert("attention").params == (n - 1) * attention
    assert none - albert("ffn").params == (n - 1) * ffn
    assert none - albert("all").params == (n - 1) * (attention + ffn)
    groups = {g.name: g for g in tensor_groups(albert("attention"))}
    assert "shared by all 3 layers" in groups["attention q/k/v"].shape_text()
    assert "shared" not in groups["feed-forward in"].shape_text()
    assert "attention LayerNorm" in groups["norms"].shape_text()


def test_sharing_saves_parameters_not_compute():
    from surgery.shapes import flops_per_token, train_memory_bytes

    assert {flops_per_token(albert(x)) for x in SHARES} == {6 * albert("none").params}
    assert train_memory_bytes(albert("attention")) < train_memory_bytes(albert("none"))


# The ALBERT paper's table (seeds/003): ALBERT-base E=128 all-shared 12M, shared-attention 64M,
# shared-FFN 38M, not-shared 89M; BERT-base 108M. The table counts the encoder with the pooler and
# without the MLM head, and gives millions to the unit.
PAPER = {"all": 12, "attention": 64, "ffn": 38, "none": 89}


@pytest.mark.parametrize("share_", SHARES)
def test_albert_paper_table(share_):
    a = ModelSpec(family="albert", layers=12, d_model=768, heads=12, d_ff=3072, vocab=30000, embedding=128, share=share_)
    pooler = 768 * 768 + 768
    body = a.params - a.param_groups()["lm head"] + pooler
    assert abs(body / 1e6 - PAPER[share_]) < 0.7, body  # measured: 11.68M, 63.65M, 37.69M, 89.65M
    bert = ModelSpec(family="bert", layers=12, d_model=768, heads=12, d_ff=3072, vocab=30000)
    assert round((bert.params - bert.param_groups()["lm head"]) / 1e6) == 108


# ---- the tied model, its checkpoints ---------------------------------------------------------
@pytest.mark.parametrize("share_", ["attention", "ffn"])
def test_tied_in_memory_and_trained_as_one_copy(share_):
    s = albert(share_)
    m = random_albert(s).train()
    assert is_tied(m, share_) and m.config.surgery_share == share_
    other = "ffn" if share_ == "attention" else "attention"
    assert not is_tied(m, other)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == s.params
    ids = batch()
    m(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    layers = albert_layers(m)
    name = SHARED_MODULES[share_][0]
    first = getattr(layers[0], name)
    weight = first.query.weight if share_ == "attention" else first.weight
    for layer in layers[1:]:
        w = getattr(layer, name).query.weight if share_ == "attention" else getattr(layer, name).weight
        assert w is weight  # one tensor, updated once


@pytest.mark.parametrize("share_", ["attention", "ffn"])
def test_checkpoint_loads_unshared_with_from_pretrained_and_tied_with_load_model(share_, tmp_path):
    from transformers import AlbertForMaskedLM

    s = albert(share_)
    m = random_albert(s)
    ids = batch()
    base = logits(m, ids)
    m.save_pretrained(tmp_path / "m")
    stored = load_file(tmp_path / "m" / "model.safetensors")
    key = "albert.encoder.albert_layer_groups.{}.albert_layers.0." + ("attention.query.weight" if share_ == "attention" else "ffn.weight")
    assert torch.equal(stored[key.format(0)], stored[key.format(2)])  # every layer's tensors, equal values
    assert json.loads((tmp_path / "m" / "config.json").read_text())["surgery_share"] == share_

    plain = AlbertForMaskedLM.from_pretrained(tmp_path / "m").eval()  # unshared, same function
    assert unique_params(plain) == albert("none").params
    assert torch.equal(logits(plain, ids), base)

    again = load_model(tmp_path / "m").eval()
    assert is_tied(again, share_) and unique_params(again) == s.params
    a, b = albert_layers(again)[0], albert_layers(again)[2]
    wa = a.attention.query.weight if share_ == "attention" else a.ffn.weight
    wb = b.attention.query.weight if share_ == "attention" else b.ffn.weight
    assert wa is wb and wa.data_ptr() == wb.data_ptr()
    assert torch.equal(logits(again, ids), base)
    # a saved-and-reloaded model saves again (the hook survives the reload)
    again.save_pretrained(tmp_path / "n")
    assert torch.equal(logits(load_model(tmp_path / "n").eval(), ids), base)


def test_sentence_order_model_keeps_the_sharing():
    from surgery.train.bert_objectives import as_model_kind

    m = random_albert(albert("ffn"))
    pre = as_model_kind(m, "pretraining")
    assert type(pre).__name__ == "AlbertForPreTraining" and is_tied(pre, "ffn")
    assert torch.equal(pre.albert.encoder.albert_layer_groups[2].albert_layers[0].ffn.weight,
                       m.albert.encoder.albert_layer_groups[0].albert_layers[0].ffn.weight)


def test_fine_tuning_head_loads_tied(tmp_path):
    from transformers import AutoConfig

    from surgery.finetune.heads import load_head

    m = random_albert(albert("attention"))
    m.save_pretrained(tmp_path / "m")
    head = load_head(tmp_path / "m", "classification", AutoConfig.from_pretrained(tmp_path / "m"), num_labels=3)
    assert type(head).__name__ == "AlbertForSequenceClassification" and is_tied(head, "attention")
    torch.testing.assert_close(head.albert.encoder.albert_layer_groups[1].albert_layers[0].attention.key.weight,
                               m.albert.encoder.albert_layer_groups[0].albert_layers[0].attention.key.weight)


def test_tie_shared_refuses_the_whole_layer_layout():
    with pytest.raises(ValueError, match="one layer group per layer"):
        tie_shared(build_model(albert("all")), "attention")


# ---- the share op ----------------------------------------------------------------------------
@pytest.mark.parametrize("share_", ["attention", "ffn"])
def test_share_op_starts_from_the_mean_and_copies_the_rest(share_):
    s = spec("bert", layers=3)
    bert = model(s)
    dst = s.model_copy(update={"family": "albert", "share": share_})
    new = share(bert, dst, "mean")
    assert unique_params(new) == dst.params < s.model_copy(update={"family": "albert"}).params
    assert is_tied(new, share_) and new.config.surgery_share == share_
    layers = bert.bert.encoder.layer
    got = albert_layers(new)
    if share_ == "attention":
        mean = torch.stack([l.attention.self.value.weight for l in layers]).mean(0)
        torch.testing.assert_close(got[1].attention.value.weight, mean)
        for i in range(3):  # unshared: copied
            assert torch.equal(got[i].ffn_output.weight, layers[i].output.dense.weight)
    else:
        mean = torch.stack([l.output.LayerNorm.weight for l in layers]).mean(0)
        torch.testing.assert_close(got[2].full_layer_layer_norm.weight, mean)
        for i in range(3):
            assert torch.equal(got[i].attention.dense.weight, layers[i].attention.output.dense.weight)


@pytest.mark.parametrize("share_", ["attention", "ffn"])
def test_share_first_preserves_a_model_whose_layers_already_agree(share_):
    """init=first on a BERT whose layers hold identical attention (or FFN) weights computes exactly
    what the BERT did (full-rank factorization is exact, and the shared block is layer 0's)."""
    s = spec("bert", layers=3)
    bert = model(s)
    with torch.no_grad():
        for layer in bert.bert.encoder.layer[1:]:
            if share_ == "attention":
                layer.attention.load_state_dict(bert.bert.encoder.layer[0].attention.state_dict())
            else:
                layer.intermediate.load_state_dict(bert.bert.encoder.layer[0].intermediate.state_dict())
                layer.output.load_state_dict(bert.bert.encoder.layer[0].output.state_dict())
    ids = batch()
    base = logits(bert, ids)
    dst = s.model_copy(update={"family": "albert", "share": share_})
    new = share(bert, dst, "first").eval()
    assert unique_params(new) == dst.params
    assert rel_change(logits(new, ids), base) < 1e-5
    # and on a plain random BERT the function moves (the layers differ): the op's cost, measured
    plain = model(s, seed=1)
    moved = rel_change(logits(share(plain, dst, "mean").eval(), ids), logits(plain, ids))
    assert moved > 1e-3


def test_partially_shared_can_go_on_to_share_all():
    s = albert("attention", embedding=None)
    m = random_albert(s)
    whole = share(m, s.model_copy(update={"share": "all"}), "first")
    assert whole.config.num_hidden_groups == 1 and unique_params(whole) == albert("all", embedding=None).params
    with pytest.raises(Exception, match="shares attention already"):
        share(m, s.model_copy(update={"share": "ffn"}))


# ---- plan ------------------------------------------------------------------------------------
BASE = """model B = bert(layers=3, d_model=32, heads=4, d_ff=64, vocab=300)
model N = albert(layers=3, d_model=32, heads=4, d_ff=64, vocab=300)
model A = albert(layers=3, d_model=32, heads=4, d_ff=64, vocab=300, share=attention)
model F = albert(layers=3, d_model=32, heads=4, d_ff=64, vocab=300, share=ffn)
model W = albert(layers=3, d_model=32, heads=4, d_ff=64, vocab=300, share=all)
"""


def _plan(chain: str):
    from surgery.plan.export import plan_json

    return plan_json(build_plan(parse_recipe(BASE + chain + "\ntrain 10steps\n", file="x.grow")))


@pytest.mark.parametrize("chain, target", [("grow B share(attention)@5steps A", "A"), ("grow B share@5steps F", "F"),
                                           ("grow N share(ffn, init=first)@5steps F", "F"),
                                           ("grow B share@5steps A share(all)@8steps W", "W")])
def test_plan_accepts_partial_sharing(chain, target):
    out = _plan(chain)
    stage = [s for s in out["stages"] if s["kind"] == "grow"][-1]
    assert stage["params_after"] == out["models"][target]["params"] < stage["params_before"]
    assert out["models"]["A"]["hf_config"]["surgery_share"] == "attention"


@pytest.mark.parametrize("chain, message", [
    ("grow B share(ffn)@5steps A", r"share\(ffn\) needs a target with share=ffn; A has share=attention"),
    ("grow B share(all)@5steps A", r"share\(all\) needs a target with share=all"),
    ("grow A share@5steps F", r"needs an unshared source \(A has share=attention\)"),
])
def test_plan_rejects_mismatched_sharing(chain, message):
    with pytest.raises(RecipeError, match=message):
        _plan(chain)


def test_plan_rejects_unknown_share_value():
    with pytest.raises(RecipeError, match=r"share must be one of none, all, attention, ffn"):
        _plan("model X = albert(layers=3, d_model=32, heads=4, d_ff=64, vocab=300, share=layers)\n")


# ---- surgery grow --op share -----------------------------------------------------------------
@pytest.mark.parametrize("share_", ["attention", "ffn"])
def test_grow_cli_shares_a_checkpoint(share_, tmp_path):
    s = ModelSpec(family="bert", layers=3, d_model=32, heads=4, d_ff=64, vocab=100, max_positions=64)
    build_model(s, seed=0).save_pretrained(tmp_path / "bert")
    result = CliRunner().invoke(app, ["grow", str(tmp_path / "bert"), "--op", "share", "--to", f"share={share_}",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    dst = s.model_copy(update={"family": "albert", "share": share_})
    assert f"-> {dst.params:,}" in result.output
    assert float(re.search(r"max relative logit change (\S+)", result.output).group(1)) > 0
    loaded = load_model(tmp_path / "out")
    assert is_tied(loaded, share_) and unique_params(loaded) == dst.params
    assert ModelSpec.from_hf_config(loaded.config.to_dict()) == dst


def test_grow_cli_takes_the_share_options(tmp_path):
    from transformers import BertForMaskedLM

    s = ModelSpec(family="bert", layers=3, d_model=32, heads=4, d_ff=64, vocab=100, max_positions=64)
    build_model(s, seed=0).save_pretrained(tmp_path / "bert")
    result = CliRunner().invoke(app, ["grow", str(tmp_path / "bert"), "--op", "share(ffn, init=first)", "--to", "",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    expected = share(BertForMaskedLM.from_pretrained(tmp_path / "bert"), s.model_copy(update={"family": "albert", "share": "ffn"}), "first")
    got = load_model(tmp_path / "out")
    assert is_tied(got, "ffn")
    assert all(torch.equal(a, b) for a, b in zip(expected.state_dict().values(), got.state_dict().values()))
    for op, to, message in (("share(ffn)", "share=attention", "--op share(ffn) but --to share=attention"),
                            ("share(heads)", "", "unknown argument 'heads'")):
        bad = CliRunner().invoke(app, ["grow", str(tmp_path / "bert"), "--op", op, "--to", to, "--out", str(tmp_path / "x")])
        assert bad.exit_code == 2 and message in bad.output and not (tmp_path / "x").exists()


def test_recipe_share_options_reach_the_op():
    from surgery.train.schedule import compile_plan

    segments, _ = compile_plan(build_plan(parse_recipe(BASE + "grow B share(init=first)@5steps A\ntrain 10steps\n", file="x.grow")))
    assert segments[1].grow.op == "share" and segments[1].grow.options["init"] == "first"
    assert segments[1].grow.options["what"] == "attention"


# ---- surgery run -----------------------------------------------------------------------------
RUN = """
model B = bert(layers=2, d_model=32, heads=4, d_ff=64, vocab=300)
model A = albert(layers=2, d_model=32, heads=4, d_ff=64, vocab=300, share={share})
{chain}
train {train}8steps on "corpus.txt"
    objective mlm
    optimizer adamw(lr=3e-3, warmup=2steps)
    batch_size=4 seq_len=32 val_every=2steps
"""


def _recipe(folder: Path, share_: str, chain: str) -> Path:
    (folder / "corpus.txt").write_text("\n".join(documents(200)) + "\n")
    recipe = folder / "share.grow"
    recipe.write_text(RUN.format(share=share_, chain=chain, train="" if chain else "A "))
    return recipe


def test_run_trains_a_partially_shared_albert_from_scratch(tmp_path):
    recipe = _recipe(tmp_path, "ffn", "")
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(recipe), "--out", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 8 and rows[-1]["val_loss"] > 0
    final = load_model(run / "final")
    assert is_tied(final, "ffn") and unique_params(final) == build_plan(parse_recipe(recipe.read_text(), file="x")).models["A"].params


def test_run_shares_mid_run_and_resumes_to_the_same_weights(tmp_path):
    from surgery.plan import plan_file
    from surgery.train.schedule import compile_plan

    recipe = _recipe(tmp_path, "attention", "grow B share(attention)@4steps A")
    segments, settings = compile_plan(plan_file(recipe))
    full, cut = tmp_path / "full", tmp_path / "cut"
    resume.run(segments, settings, full, tmp_path)
    resume.stop_and_resume(segments, settings, cut, tmp_path, stop=6)
    assert resume.same_final_weights(full, cut)
    final = load_model(full / "final")
    assert is_tied(final, "attention") and unique_params(final) == segments[-1].spec.params
    rows = [json.loads(l) for l in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["op"] for r in rows if r.get("event") == "grow"] == ["share"]
