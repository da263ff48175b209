"""Sparse upcycling (`moe`): a dense llama/qwen2 as a mixtral/qwen2_moe with the same function,
through transformers' own forward pass; from_pretrained; the plan's checks; a run that upcycles
mid-run and resumes to the same weights."""

import json
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from surgery.cli import app
from surgery.errors import RecipeError
from surgery.moe import upcycle, upcycle_optimizer_state
from surgery.plan import build_plan
from surgery.recipe import parse_recipe
from tests import resume
from tests.fixtures_text import documents
from tests.tiny import batch, logits, model, spec

PAIRS = [("llama", "mixtral"), ("qwen2", "qwen2_moe")]


def _upcycled(dense: str, moe: str, head: str = "tied", **routing):
    src = model(spec(dense, head=head))
    dst = spec(moe, head=head, **routing)
    return src, upcycle(src, dst, seed=3).eval(), dst


@pytest.mark.parametrize("dense, moe", PAIRS)
@pytest.mark.parametrize("head", ["tied", "untied"])
def test_upcycled_model_computes_the_dense_function(dense, moe, head):
    src, new, dst = _upcycled(dense, moe, head)
    assert type(new).__name__ == dst.hf_model_class
    assert new.num_parameters() == dst.params
    ids = batch(b=4, n=16)
    assert (logits(new, ids) - logits(src, ids)).abs().max().item() < 1e-5


@pytest.mark.parametrize("top_k", [1, 2, 3, 4])
def test_exact_for_every_top_k(top_k):
    src, new, _ = _upcycled("llama", "mixtral", experts=4, top_k=top_k)
    ids = batch(b=4, n=16)
    assert (logits(new, ids) - logits(src, ids)).abs().max().item() < 1e-5


def test_perturbed_experts_change_the_function():
    """The check can fail: experts that are not copies route to different functions."""
    src, new, _ = _upcycled("llama", "mixtral")
    ids = batch(b=4, n=16)
    with torch.no_grad():
        new.model.layers[0].mlp.experts.down_proj[1].add_(0.5)
    assert (logits(new, ids) - logits(src, ids)).abs().max().item() > 1e-3


def test_router_is_random_so_tokens_spread_over_experts():
    _, new, dst = _upcycled("llama", "mixtral", experts=4, top_k=1)
    seen = set()
    hook = new.model.layers[0].mlp.gate.register_forward_hook(lambda m, i, o: seen.update(o[2].flatten().tolist()))
    logits(new, batch(b=4, n=16))
    hook.remove()
    assert len(seen) > 1  # a zero router would send every token to expert 0


@pytest.mark.parametrize("dense, moe", PAIRS)
def test_saves_and_loads_with_from_pretrained(dense, moe, tmp_path):
    import transformers

    src, new, dst = _upcycled(dense, moe, "untied")
    new.save_pretrained(tmp_path / "m")
    back = getattr(transformers, dst.hf_model_class).from_pretrained(tmp_path / "m").eval()
    ids = batch(b=2, n=12)
    assert (logits(back, ids) - logits(src, ids)).abs().max().item() < 1e-5
    from surgery.compress import load_model

    assert type(load_model(tmp_path / "m")).__name__ == dst.hf_model_class


def test_optimizer_state_is_copied_into_every_expert():
    src, new, dst = _upcycled("llama", "mixtral")
    opt = torch.optim.AdamW(src.parameters(), lr=1e-3)
    src.train()
    src(input_ids=batch(), labels=batch()).loss.backward()
    opt.step()
    from surgery.ops.optim import optimizer_state_by_name

    state = upcycle_optimizer_state(optimizer_state_by_name(opt, src), dst)
    gu = state["model.layers.1.mlp.experts.gate_up_proj"]["exp_avg"]
    dense = optimizer_state_by_name(opt, src)
    assert gu.shape == new.model.layers[1].mlp.experts.gate_up_proj.shape
    assert torch.equal(gu[3, :dst.d_ff], dense["model.layers.1.mlp.gate_proj.weight"]["exp_avg"])
    assert "model.layers.1.mlp.gate.weight" not in state  # the router starts fresh


# ---- the plan --------------------------------------------------------------------------------
def _plan(models: str, chain: str):
    text = textwrap.dedent(models) + chain + '\ntrain 10steps on corpus("demo")\n'
    return build_plan(parse_recipe(text, "x.grow"))


LM = """\
model L = llama(layers=2, d_model=32, heads=4, kv_heads=2, d_ff=64, vocab=300)
model M = mixtral(layers=2, d_model=32, heads=4, kv_heads=2, d_ff=64, vocab=300, experts=4, top_k=2)
"""


def test_plan_accepts_moe_and_counts_active_parameters():
    from surgery.plan.export import plan_json
    from surgery.shapes import flops_per_token

    plan = _plan(LM, "grow L moe(experts=4, top_k=2)@5steps M")
    m = plan.models["M"]
    assert m.params > m.active_params > plan.models["L"].params
    # per token: the dense model plus one more expert and the router per layer
    assert m.active_params == plan.models["L"].params + 2 * (3 * 32 * 64 + 4 * 32)
    assert flops_per_token(m) == 6 * m.active_params
    out = plan_json(plan)
    assert out["models"]["M"]["active_params"] == m.active_params
    assert [s["op"] for s in out["stages"] if s["kind"] == "grow"] == ["moe"]


@pytest.mark.parametrize("models, chain, message", [
    ("model B = bert(layers=2, d_model=32, heads=4, d_ff=64, vocab=300)\n" + LM.splitlines()[1] + "\n",
     "grow B moe@5steps M", "bert cannot be upcycled: transformers has no mixture-of-experts BERT class"),
    ("model G = gpt2(layers=2, d_model=32, heads=4, d_ff=64, vocab=300)\n" + LM.splitlines()[1] + "\n",
     "grow G moe@5steps M", "transformers has no mixture-of-experts GPT-2 class"),
    (LM.replace("d_ff=64, vocab=300, experts", "d_ff=128, vocab=300, experts"), "grow L moe@5steps M",
     "moe keeps d_ff (64 -> 128)"),
    (LM, "grow L moe(experts=8)@5steps M", "moe(experts=8) but the target has experts=4"),
    (LM.replace("mixtral(", "qwen2_moe("), "grow L moe@5steps M", "moe turns a llama model into a mixtral model"),
])
def test_plan_refuses_with_the_reason(models, chain, message):
    with pytest.raises(RecipeError) as info:
        _plan(models, chain)
    assert message in info.value.message


def test_growth_ops_refuse_a_mixture_of_experts():
    text = LM + "model N = mixtral(layers=4, d_model=32, heads=4, kv_heads=2, d_ff=64, vocab=300, experts=4, top_k=2)\n"
    with pytest.raises(RecipeError) as info:
        _plan(text, "grow L moe@3steps M d(identity)@6steps N")
    assert "growing mixtral models is not supported yet" in info.value.message


# ---- surgery run -----------------------------------------------------------------------------
RUN = """
model L = {dense}(layers=2, d_model=32, heads=4, kv_heads=2, d_ff=64, vocab=300)
model M = {moe}(layers=2, d_model=32, heads=4, kv_heads=2, d_ff=64, vocab=300, experts=4, top_k=2)
grow L moe(experts=4, top_k=2)@4steps M
train 8steps on "corpus.txt"
    optimizer adamw(lr=3e-3, warmup=2steps)
    batch_size=4 seq_len=32 val_every=2steps {extra}
"""


def _recipe(folder: Path, extra: str = "", dense: str = "llama", moe: str = "mixtral") -> Path:
    (folder / "corpus.txt").write_text("\n".join(documents(200)) + "\n")
    recipe = folder / "moe.grow"
    recipe.write_text(RUN.format(extra=extra, dense=dense, moe=moe))
    return recipe


@pytest.mark.parametrize("dense, moe", PAIRS)
def test_run_upcycles_mid_run_keeps_the_loss_and_trains(tmp_path, dense, moe):
    recipe = _recipe(tmp_path, dense=dense, moe=moe)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(recipe), "--out", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["op"] for r in rows if r.get("event") == "grow"] == ["moe"]
    vals = [r for r in rows if r.get("val_loss") is not None]
    at4 = [r["val_loss"] for r in vals if r["step"] == 4]
    assert len(at4) == 2 and abs(at4[0] - at4[1]) < 1e-5  # before and after the upcycling
    assert rows[-1]["step"] == 8 and vals[-1]["val_loss"] < vals[0]["val_loss"]
    import transformers

    final = getattr(transformers, spec(moe).hf_model_class).from_pretrained(run / "final")
    experts = final.model.layers[0].mlp.experts.gate_up_proj
    assert not torch.equal(experts[0], experts[1])  # trained apart


def test_run_with_moe_resumes_to_the_same_weights(tmp_path):
    from surgery.plan import plan_file
    from surgery.train.schedule import compile_plan

    recipe = _recipe(tmp_path, "optimizer_on_grow=grow")
    segments, settings = compile_plan(plan_file(recipe))
    full, cut = tmp_path / "full", tmp_path / "cut"
    resume.run(segments, settings, full, tmp_path)
    resume.stop_and_resume(segments, settings, cut, tmp_path, stop=6)
    assert resume.same_final_weights(full, cut)


def test_init_moe_upcycles_a_pretrained_checkpoint(tmp_path):
    src = model(spec("llama", d_model=32, heads=4, kv_heads=2, d_ff=64, vocab=300, layers=2, max_positions=512))
    src.save_pretrained(tmp_path / "dense")
    (tmp_path / "corpus.txt").write_text("\n".join(documents(200)) + "\n")
    recipe = tmp_path / "init.grow"
    recipe.write_text(RUN.replace("@4steps M", " M").replace("grow L moe", 'pretrained L = "dense"\ngrow L init-moe')
                      .format(extra="", dense="llama", moe="mixtral"))
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(recipe), "--out", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    from transformers import MixtralForCausalLM

    assert MixtralForCausalLM.from_pretrained(run / "final").config.num_local_experts == 4


def test_grow_cli_upcycles_a_checkpoint(tmp_path):
    src = model(spec("llama"))
    src.save_pretrained(tmp_path / "dense")
    out = tmp_path / "moe"
    result = CliRunner().invoke(app, ["grow", str(tmp_path / "dense"), "--op", "moe(experts=4, top_k=1)", "--to", "",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "function moved: max relative logit change" in result.output
    from transformers import MixtralForCausalLM

    back = MixtralForCausalLM.from_pretrained(out).eval()
    assert back.config.num_local_experts == 4 and back.config.num_experts_per_tok == 1
    ids = batch()
    assert (logits(back, ids) - logits(src, ids)).abs().max().item() < 1e-5
    bert = model(spec("bert"))
    bert.save_pretrained(tmp_path / "bert")
    bad = CliRunner().invoke(app, ["grow", str(tmp_path / "bert"), "--op", "moe", "--to", "", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "no mixture-of-experts BERT class" in bad.output


def test_plan_accepts_qwen2_to_qwen2_moe_and_prints_active_parameters(tmp_path):
    text = LM.replace("llama(", "qwen2(").replace("mixtral(", "qwen2_moe(")
    plan = _plan(text, "grow L init-moe M".replace("init-moe", "moe@5steps"))
    m = plan.models["M"]
    assert m.family == "qwen2_moe" and m.hf_model_class == "Qwen2MoeForCausalLM" and m.active_params < m.params
    (tmp_path / "r.grow").write_text(textwrap.dedent(LM) + "grow L moe@5steps M\ntrain 10steps\n")
    result = CliRunner().invoke(app, ["plan", str(tmp_path / "r.grow")])
    assert result.exit_code == 0, result.output
    assert "active per token" in result.output and "router" in result.output


def test_run_continues_a_pretrained_mixtral(tmp_path):
    """A family without a neutral view is read by transformers as the run's first model."""
    m = model(spec("mixtral", vocab=300, max_positions=512, head="untied"))
    with torch.no_grad():
        m.lm_head.weight.mul_(200)  # a checkpoint no fresh model resembles: a very confident head
    m.save_pretrained(tmp_path / "m")
    (tmp_path / "corpus.txt").write_text("\n".join(documents(100)) + "\n")
    (tmp_path / "r.grow").write_text(
        'model M = mixtral(layers=2, d_model=16, heads=4, kv_heads=2, d_ff=32, vocab=300, experts=4, top_k=2, tie=false)\n'
        'pretrained M = "m"\ntrain M 4steps on "corpus.txt"\n    batch_size=2 seq_len=32 val_every=2steps\n')
    result = CliRunner().invoke(app, ["run", str(tmp_path / "r.grow"), "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and rows[0]["val_loss"] > 10  # the checkpoint's (a fresh model: ~ln 300 = 5.7)
    assert rows[-1]["step"] == 4
