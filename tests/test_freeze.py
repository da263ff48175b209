"""freeze=old(N steps): after a growth only the new parameters train for N steps (LLaMA Pro's block
expansion); the old ones stay bit-equal through AdamW's weight decay and grown moments, then train;
a run resumed inside the window ends with the same weights; the plan shows and checks it."""

import json
import textwrap
from pathlib import Path

import pytest
import torch

from surgery.compress import load_model
from surgery.errors import RecipeError
from surgery.plan import build_plan, plan_file
from surgery.recipe import parse_recipe
from surgery.train.loop import Trainer
from surgery.train.schedule import compile_plan
from tests.fixtures_text import documents

RUN = """
model S = llama(layers=2, d_model=32, heads=4, kv_heads=2, d_ff=64, vocab=300, max_positions=64)
model B = llama(layers={layers}, d_model={width}, heads={heads}, kv_heads={kv}, d_ff={ff}, vocab=300, max_positions=64)
grow S {op}@4steps B
train 12steps on "corpus.txt"
    optimizer adamw(lr=3e-3, warmup=2steps, weight_decay=0.1)
    batch_size=4 seq_len=32 val_every=2steps optimizer_on_grow=grow freeze=old(4steps)
"""
DEPTH = dict(op="d(identity)", layers=4, width=32, heads=4, kv=2, ff=64)
# kv heads and query heads grow alike (2x), so the old heads keep their place (the first rows)
WIDTH = dict(op="f", layers=2, width=64, heads=8, kv=4, ff=128)


def _setup(folder: Path, case: dict):
    (folder / "corpus.txt").write_text("\n".join(documents(200)) + "\n")
    recipe = folder / "freeze.grow"
    recipe.write_text(RUN.format(**case))
    return compile_plan(plan_file(recipe))


def _train(folder: Path, segments, settings, name: str, stop: int | None = None, resume: bool = False) -> Path:
    out = folder / name
    Trainer(segments, settings, out, run_name="t", quiet=True, corpus_base=folder, stop_after_step=stop,
            resume=resume).run()
    return out


def _weights(out: Path, step: int | None = None) -> dict[str, torch.Tensor]:
    folder = out / "final" if step is None else out / "checkpoints" / f"ckpt-{step:08d}" / "model"
    return {k: v.detach().clone() for k, v in load_model(folder).state_dict().items()}


def _grown(out: Path, segments, settings) -> dict[str, torch.Tensor]:
    """The model right after the growth: the small model's stage, grown as the run grew it."""
    from surgery.ops import grow_model

    small = load_model(out / "stages" / "0-S")
    seg = segments[1]
    grown = grow_model(small, segments[0].spec, seg.spec, seg.grow.op, seed=settings.seed + 1,
                       options=seg.grow.options).model
    return {k: v.detach().clone() for k, v in grown.state_dict().items()}


def test_depth_growth_trains_only_the_new_blocks_for_n_steps(tmp_path):
    segments, settings = _setup(tmp_path, DEPTH)
    assert settings.freeze_steps == 4
    full = _train(tmp_path, segments, settings, "full")
    at8 = _train(tmp_path, segments, settings, "at8", stop=8)
    grown = _grown(full, segments, settings)
    frozen_end = _weights(at8, 8)
    old = [k for k in grown if ".layers.2." not in k and ".layers.3." not in k and "rotary" not in k]
    new = [k for k in grown if ".layers.2." in k or ".layers.3." in k]
    assert old and new
    for k in old:  # bit-equal through 4 steps of AdamW with weight decay 0.1 and grown moments
        assert torch.equal(frozen_end[k], grown[k]), k
    for k in new:
        assert not torch.equal(frozen_end[k], grown[k]), k
    final = _weights(full)
    moved = [k for k in old if not torch.equal(final[k], grown[k])]
    assert set(moved) == set(old)  # after the window everything trains
    rows = [json.loads(l) for l in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["op"] for r in rows if r.get("event") == "grow"] == ["d"]


def test_width_growth_freezes_the_old_rows_and_columns(tmp_path):
    segments, settings = _setup(tmp_path, WIDTH)
    full = _train(tmp_path, segments, settings, "full")
    at8 = _train(tmp_path, segments, settings, "at8", stop=8)
    grown, end = _grown(full, segments, settings), _weights(at8, 8)
    q = "model.layers.0.self_attn.q_proj.weight"  # [inner, d_model]: old = first 32 rows x first 32 cols
    assert torch.equal(end[q][:32, :32], grown[q][:32, :32])
    assert not torch.equal(end[q][32:], grown[q][32:]) and not torch.equal(end[q][:32, 32:], grown[q][:32, 32:])
    emb = "model.embed_tokens.weight"  # [vocab, d_model]: the old columns stay
    assert torch.equal(end[emb][:, :32], grown[emb][:, :32]) and not torch.equal(end[emb][:, 32:], grown[emb][:, 32:])
    final = _weights(full)
    assert not torch.equal(final[q][:32, :32], grown[q][:32, :32])


def test_resume_inside_the_window_gives_the_same_weights(tmp_path):
    segments, settings = _setup(tmp_path, DEPTH)
    full = _train(tmp_path, segments, settings, "full")
    _train(tmp_path, segments, settings, "cut", stop=6)
    cut = _train(tmp_path, segments, settings, "cut", resume=True)
    a, b = _weights(full), _weights(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- the plan --------------------------------------------------------------------------------
def _plan(chain: str, setting: str = "freeze=old(200steps)"):
    text = textwrap.dedent(f"""\
        model S = llama(layers=2, d_model=32, heads=4, d_ff=64, vocab=300)
        model B = llama(layers=4, d_model=32, heads=4, d_ff=64, vocab=300)
        model M = mixtral(layers=2, d_model=32, heads=4, d_ff=64, vocab=300, experts=4, top_k=2)
        {chain}
        train {"" if chain else "S "}1000steps on corpus("demo")
            {setting}
        """)
    return build_plan(parse_recipe(text, "x.grow"))


def test_plan_reads_and_shows_freeze():
    from surgery.plan.export import plan_json

    plan = _plan("grow S d(identity)@100steps B")
    assert plan.train.freeze.steps == 200
    assert plan_json(plan)["train"]["freeze"] == {"steps": 200}
    assert _plan("grow S d(identity)@100steps B", "freeze=old(50)").train.freeze.steps == 50
    assert _plan("grow S d(identity)@100steps B", "freeze=none").train.freeze is None


@pytest.mark.parametrize("chain, setting, message", [
    ("grow S d@100steps B", "freeze=old(2ep)", "freeze=old(N) counts optimizer steps"),
    ("grow S d@100steps B", "freeze=all", "freeze is old(N steps)"),
    ("grow S moe@100steps M", "freeze=old(10steps)", "moe makes a new model class"),
    ("", "freeze=old(10steps)", "the recipe grows nothing"),
    ("grow S msg(ramp=10)@100steps B", "freeze=old(10steps)", "msg grows its own way"),
    ("grow S ligo(steps=10)@100steps B", "freeze=old(10steps)", "ligo grows its own way"),
])
def test_plan_refuses_what_freeze_cannot_follow(chain, setting, message):
    with pytest.raises(RecipeError) as info:
        _plan(chain, setting)
    assert message in info.value.message


def test_llama_pro_init_expansion_of_a_pretrained_model(tmp_path):
    """LLaMA Pro: a pretrained llama expanded before training by init-d(identity); for the window
    only the added blocks train."""
    from surgery.ops import grow_model
    from tests.tiny import model, spec

    small = spec("llama", layers=2, d_model=32, heads=4, kv_heads=2, d_ff=64, vocab=300, max_positions=64)
    model(small).save_pretrained(tmp_path / "pre")
    (tmp_path / "corpus.txt").write_text("\n".join(documents(200)) + "\n")
    recipe = tmp_path / "pro.grow"
    recipe.write_text(RUN.format(**DEPTH).replace("grow S d(identity)@4steps B", 'pretrained S = "pre"\ngrow S init-d(identity) B'))
    segments, settings = compile_plan(plan_file(recipe))
    at4 = _train(tmp_path, segments, settings, "at4", stop=4)
    seg = segments[0]
    grown = grow_model(load_model(tmp_path / "pre"), small, seg.spec, seg.grow.op, seed=settings.seed,
                       options=seg.grow.options).model.state_dict()
    end = _weights(at4, 4)
    for k, v in grown.items():
        if "rotary" in k:
            continue
        added = ".layers.2." in k or ".layers.3." in k
        assert torch.equal(end[k], v) != added, k


@pytest.mark.parametrize("family", ["llama", "bert", "t5", "gpt2"])
@pytest.mark.parametrize("op", ["d(identity)", "d", "f", "a", "l", "dl"])
def test_old_elements_are_the_sources_count(family, op):
    """Every source element has one old place in the grown model, as the plan says."""
    from surgery.families import layout_of_model
    from surgery.ops import grow_model
    from surgery.ops.growth import plan_growth
    from surgery.train.freeze import new_masks, window_text
    from tests.tiny import model, spec

    src = spec(family)
    deeper = {"layers": src.layers + 2} | ({"decoder_layers": src.decoder_layers + 1} if src.decoder_layers else {})
    wider = {"d_model": src.d_model * 2, "heads": src.heads * 2, "d_ff": src.d_ff * 2} | (
        {"kv_heads": src.kv_heads * 2} if src.kv_heads else {})
    dims = {"d": deeper, "f": wider, "a": wider, "l": wider, "dl": {**deeper, **wider}}[op.split("(")[0]]
    dst = spec(family, **dims)
    grown = grow_model(model(src), src, dst, op.split("(")[0], seed=1,
                       options={"depth": "identity"} if "identity" in op or op == "dl" else {}).model
    family_, layout = layout_of_model(grown)
    options = {"depth": "identity"} if "identity" in op or op == "dl" else {}
    masks = new_masks(plan_growth(family_, src, dst, op.split("(")[0], layout, grown.config.to_dict(), seed=1,
                                  options=options))
    new = 0
    for name, p in grown.named_parameters():
        m = masks.get(name, False)
        new += p.numel() if m is True else 0 if m is False else int(m.sum())
    assert new == dst.params - src.params
    assert f"{dst.params - src.params:,} new parameters train" in window_text(5, src, dst)
