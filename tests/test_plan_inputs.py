"""What a run reads is checked before it runs: `surgery plan` warns about missing inputs at their
recipe place, `surgery run` refuses them (exit 2) before writing anything; pretrained checkpoints
are compared with their declaration; hf("org/name") resolves from the local Hugging Face cache."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from surgery.cli import app
from surgery.errors import RecipeError
from surgery.plan import plan_and_missing, plan_file
from surgery.recipe import load_recipe

SMALL = "model T = bert(layers=2, d_model=32, heads=2, d_ff=64{vocab})\n"
BIG = "model B = bert(layers=4, d_model=32, heads=2, d_ff=64)\n"


def _checkpoint(folder: Path, vocab: int = 120, tokenizer_ids: int | None = None) -> Path:
    """A real BertForMaskedLM folder saved by transformers, with a WordPiece vocab.txt."""
    from transformers import BertConfig, BertForMaskedLM

    folder.mkdir(parents=True, exist_ok=True)
    BertForMaskedLM(BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64)).save_pretrained(folder)
    n = vocab if tokenizer_ids is None else tokenizer_ids
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                                                + [f"w{i}" for i in range(n - 5)]) + "\n")
    return folder


def _recipe(tmp_path: Path, body: str) -> Path:
    (tmp_path / "corpus.txt").write_text("한 문장.\n다른 문장.\n" * 50)
    p = tmp_path / "r.grow"
    p.write_text(textwrap.dedent(body))
    return p


def test_missing_inputs_warn_at_plan_and_stop_the_run_before_it_writes(tmp_path):
    recipe = _recipe(tmp_path, SMALL.format(vocab="") + BIG + 'pretrained T = "ckpt/T"\ngrow T init-d B\n'
                     'train 4steps on "data/missing.txt"\n')
    res = CliRunner().invoke(app, ["plan", str(recipe)])
    assert res.exit_code == 0
    assert f"warning: {recipe}:3:16: {tmp_path}/ckpt/T does not exist" in res.stderr
    assert f"warning: {recipe}:5:17: corpus 'data/missing.txt' not found" in res.stderr
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", str(recipe), "--out", str(run)])
    assert res.exit_code == 2 and f"{recipe}:3:16: error:" in res.stderr
    assert not run.exists()


def test_an_unknown_corpus_name_is_a_recipe_error(tmp_path):
    recipe = _recipe(tmp_path, SMALL.format(vocab="") + 'train T 4steps on corpus("wikitext")\n')
    with pytest.raises(RecipeError, match="unknown corpus 'wikitext'") as info:
        plan_file(recipe)
    assert (info.value.line, info.value.column) == (2, 26)


def test_vocab_left_out_is_the_checkpoint_s_for_every_model(tmp_path):
    _checkpoint(tmp_path / "ckpt", vocab=120)
    recipe = _recipe(tmp_path, SMALL.format(vocab="") + BIG + 'pretrained T = "ckpt"\ngrow T init-d B\n'
                     'train 4steps on "corpus.txt"\n')
    plan, missing = plan_and_missing(load_recipe(recipe))
    assert not missing
    assert plan.models["T"].vocab == plan.models["B"].vocab == 120


@pytest.mark.parametrize("decl, where, message", [
    (SMALL.format(vocab=", vocab=500"), "1:56", "model T says vocab=500, but its checkpoint has 120"),
    ("model T = bert(layers=3, d_model=32, heads=2, d_ff=64)\n", "1:16", "model T says layers=3, but its checkpoint has 2"),
    ("model T = roberta(layers=2, d_model=32, heads=2, d_ff=64)\n", "1:7", "model T is roberta, but its checkpoint is bert"),
])
def test_a_checkpoint_that_is_not_the_declared_model_is_refused(tmp_path, decl, where, message):
    _checkpoint(tmp_path / "ckpt", vocab=120)
    recipe = _recipe(tmp_path, decl + 'pretrained T = "ckpt"\ntrain T 4steps on "corpus.txt"\n')
    with pytest.raises(RecipeError) as info:
        plan_file(recipe)
    assert message in info.value.message and f"{info.value.line}:{info.value.column}" == where


def test_a_tokenizer_larger_than_the_embeddings_is_refused(tmp_path):
    _checkpoint(tmp_path / "ckpt", vocab=120, tokenizer_ids=150)
    recipe = _recipe(tmp_path, SMALL.format(vocab="") + 'pretrained T = "ckpt"\ntrain T 4steps on "corpus.txt"\n')
    with pytest.raises(RecipeError, match="makes 150 token ids but the checkpoint embeds 120"):
        plan_file(recipe)


def test_a_folder_without_config_or_safetensors_is_a_missing_input(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    for folder, why in (("empty", "has no config.json"), ("pickled", "has no *.safetensors weights")):
        recipe = _recipe(tmp_path, SMALL.format(vocab="") + f'pretrained T = "{folder}"\ntrain T 4steps on "corpus.txt"\n')
        _, missing = plan_and_missing(load_recipe(recipe))
        assert [k for k, _ in missing] == ["checkpoint"] and why in missing[0][1].message


def _hub_cache(home: Path, repo: str, folder: Path) -> None:
    """A Hugging Face cache holding `repo` as huggingface_hub lays it out (refs/main -> snapshot)."""
    base = home / "hub" / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text("0" * 40)


def test_hf_names_resolve_from_the_local_cache_offline(tmp_path, monkeypatch):
    home = tmp_path / "hf"
    _hub_cache(home, "someorg/tiny-bert", _checkpoint(tmp_path / "src", vocab=120))
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(home / "hub"))
    recipe = _recipe(tmp_path, SMALL.format(vocab="") + 'pretrained T = hf("someorg/tiny-bert")\n'
                     'train T 4steps on "corpus.txt"\n')
    plan = plan_file(recipe, require_inputs={"checkpoint"})
    assert Path(plan.checkpoints["T"]).name == "0" * 40 and plan.models["T"].vocab == 120
    recipe.write_text(recipe.read_text().replace("tiny-bert", "not-there"))
    _, missing = plan_and_missing(load_recipe(recipe))
    assert "'someorg/not-there' is not in the local Hugging Face cache" in missing[0][1].message
    assert "download it first" in missing[0][1].message
