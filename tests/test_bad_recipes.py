"""Each mistake gets its own message at its own line and column, and exit status 2."""

import re

import pytest
from typer.testing import CliRunner

from surgery.cli import app
from surgery.errors import RecipeError
from surgery.plan import build_plan
from surgery.recipe import parse_recipe

HEAD = """\
model T = t5(layers=2+2, d_model=32, heads=4, d_ff=64, vocab=100)
model S = t5(layers=4+4, d_model=32, heads=4, d_ff=64, vocab=100)
model B = t5(layers=4+4, d_model=48, heads=6, d_ff=128, vocab=100)
"""
TRAIN = 'train 5ep on corpus("demo")\n'
GOOD = HEAD + "grow T d@1ep S a@2ep B\n" + TRAIN

# (name, recipe text, "line:col", message regex)
CASES = [
    # syntax
    ("point without unit", HEAD + "grow T d@1 S a@2ep B\n" + TRAIN, "4:10", r"point needs a unit"),
    ("budget without unit", HEAD + "grow T d@1ep S a@2ep B\ntrain 5 on corpus(\"demo\")\n", "5:7", r"budget needs a unit"),
    ("missing comma in model", "model T = t5(layers=2+2 d_model=32, heads=4, d_ff=64)\n" + TRAIN, "1:25", r"name=value, separated by commas"),
    ("colon instead of =", "model T = t5(layers: 2+2)\n", "1:20", r"name=value"),
    ("chain ends with an op", HEAD + "grow T d@1ep S a@2ep\n" + TRAIN, "5:1", r"chain must end with a model"),
    ("unquoted checkpoint", HEAD + "pretrained T = runs/T\n", "4:20", r"quoted string"),
    ("stop rule without <=", HEAD + GOOD.split(HEAD)[1].rstrip() + " until val_loss 1.5\n", "5:44", r"until val_loss <= NUMBER"),
    ("stray character", HEAD.replace("d_ff=64, vocab=100)\nmodel S", "d_ff=64; vocab=100)\nmodel S"), "1:54", r"unexpected character ';'"),
    ("x instead of + in t5 depth", "model T = t5(layers=6x6)\n", "1:22", r"encoder\+decoder"),
    ("tasks without commas", GOOD + "finetune klue-nli korquad-ext\n", "6:19", r"separated by commas"),
    # names
    ("unknown family", "model T = t6(layers=2+2, d_model=32, heads=4, d_ff=64)\n" + TRAIN, "1:11", r"unknown model family 't6'; did you mean 't5'"),
    ("kv heads not dividing heads", "model T = llama(layers=2, d_model=32, heads=4, kv_heads=3, d_ff=64)\n" + TRAIN, "1:48", r"kv_heads=3 does not divide heads=4"),
    ("tie not a boolean", "model T = llama(layers=2, d_model=32, heads=4, d_ff=64, tie=maybe)\n" + TRAIN, "1:61", r"tie must be true or false"),
    ("gpt2 has no kv heads", "model T = gpt2(layers=2, d_model=32, heads=4, kv_heads=2, d_ff=64)\n" + TRAIN, "1:47", r"unknown gpt2 argument 'kv_heads'"),
    ("unknown model argument", "model T = t5(layers=2+2, hidden_size=32, heads=4, d_ff=64)\n" + TRAIN, "1:26", r"unknown t5 argument 'hidden_size'; did you mean 'd_model'"),
    ("missing dimension", "model T = t5(layers=2+2, d_model=32, heads=4)\n" + TRAIN, "1:11", r"needs d_ff"),
    ("duplicate model", HEAD + "model S = t5(layers=4+4, d_model=32, heads=4, d_ff=64, vocab=100)\n" + TRAIN, "4:7", r"declared twice \(first on line 2\)"),
    ("unknown model in chain", HEAD + "grow T d@1ep X a@2ep B\n" + TRAIN, "4:14", r"unknown model X \(known: T, S, B\)"),
    ("misspelled model in chain", HEAD.replace("model B", "model Base") + "grow T d@1ep S a@2ep Bas\n" + TRAIN, "4:22", r"did you mean 'Base'"),
    ("unknown op", HEAD + "grow T d@1ep S q@2ep B\n" + TRAIN, "4:16", r"unknown op 'q'"),
    ("another style's distil argument", HEAD + "grow T d@1ep S distil(style=tutor, cos=1)@2ep B\n" + TRAIN, "4:36", r"distil\(style=tutor\) takes no cos \(that is distilbert's\)"),
    ("share on t5", HEAD + "grow T d@1ep S share@2ep B\n" + TRAIN, "4:26", r"share turns a bert .* B is t5"),
    ("distil under fsdp", "model T = bert(layers=4, d_model=32, heads=4, d_ff=64, vocab=100)\n"
     "model S = bert(layers=2, d_model=32, heads=4, d_ff=64, vocab=100)\ngrow T distil@2steps S\n"
     + TRAIN.rstrip() + " parallel=fsdp\n", "4:38", r"parallel=fsdp does not support the distil op .*use parallel=ddp"),
    ("sbo under fsdp", "model E = bert(layers=2, d_model=32, heads=4, d_ff=64)\n" + TRAIN.rstrip()
     + " objective span(sbo=true) parallel=fsdp\n", "2:63", r"parallel=fsdp does not support objective span\(sbo=true\)"),
    ("msg under fsdp", HEAD + "grow S msg(ramp=2)@2ep B\n" + TRAIN.rstrip() + " parallel=fsdp\n", "5:38",
     r"parallel=fsdp does not support the msg op yet .*use parallel=ddp"),
    ("ligo under fsdp", HEAD + "grow S ligo(steps=2)@2ep B\n" + TRAIN.rstrip() + " parallel=fsdp\n", "5:38",
     r"parallel=fsdp does not support the ligo op yet .*use parallel=ddp"),
    ("freeze under fsdp", HEAD + "grow T d(identity)@2ep S\n" + TRAIN.rstrip() + " parallel=fsdp freeze=old(2steps)\n", "5:38",
     r"parallel=fsdp does not support freeze= yet"),
    ("unknown objective", GOOD.rstrip() + " objective span_corrupt(rate=0.1)\n", "5:39", r"unknown objective 'span_corrupt'; did you mean 'span_corruption'"),
    ("objective for another family", GOOD.rstrip() + " objective mlm\n", "5:39", r"mlm is for [a-z, ]*bert[a-z, ]* models, not t5; use span_corruption"),
    ("unknown task", GOOD + "finetune klue-nli, korquad\n", "6:20", r"unknown fine-tuning task 'korquad'"),
    ("generative task on bert", "model E = bert(layers=2, d_model=32, heads=4, d_ff=64)\n" + TRAIN + "finetune news-summ\n", "3:10", r"news-summ needs an encoder-decoder"),
    ("unknown train setting", GOOD.rstrip() + " batch=8\n", "5:29", r"unknown train setting 'batch'; did you mean 'batch_size'"),
    ("lr as a train setting", GOOD.rstrip() + " lr=1e-3\n", "5:29", r"lr is an optimizer argument"),
    # shapes
    ("shrinking op", HEAD + "grow B a@2ep S\n" + TRAIN, "4:14", r"d_model would shrink from 48 to 32"),
    ("d between widths", HEAD + "grow T d@1ep B\n" + TRAIN, "4:8", r"d grows depth only.*use da, df or dl"),
    ("a between depths", HEAD + "grow T a@1ep S\n" + TRAIN, "4:8", r"a grows width only.*use da"),
    ("combined op without width change", HEAD + "grow T da@1ep S\n" + TRAIN, "4:8", r"width stays the same; use d"),
    ("op that changes nothing", HEAD + "model U = t5(layers=2+2, d_model=32, heads=4, d_ff=64, vocab=100)\ngrow T f@1ep U\n" + TRAIN, "5:8", r"same size"),
    ("heads do not divide d_model", "model T = t5(layers=2+2, d_model=30, heads=4, d_ff=64)\n" + TRAIN, "1:38", r"heads=4 does not divide d_model=30"),
    ("head size changes", HEAD.replace("heads=6", "heads=4") + "grow T d@1ep S a@2ep B\n" + TRAIN, "4:22", r"keep the head size .* 8 -> 12.*heads=6"),
    ("family mismatch", HEAD + "model E = bert(layers=4, d_model=32, heads=4, d_ff=64, vocab=100)\ngrow T d@1ep E\n" + TRAIN, "5:14", r"cannot grow a t5 model into a bert model"),
    ("vocabulary mismatch", HEAD.replace("d_ff=128, vocab=100", "d_ff=128, vocab=200") + "grow T d@1ep S a@2ep B\n" + TRAIN, "4:22", r"vocabularies differ \(100 vs 200\)"),
    ("bad layer list length", HEAD + "grow T d[0..1 x3]@1ep S a@2ep B\n" + TRAIN, "4:9", r"gives the encoder 6 layers, but the target has 4"),
    ("layer index out of range", HEAD + "grow T d[0..2 x2]@1ep S a@2ep B\n" + TRAIN, "4:10", r"layer 2 does not exist"),
    # schedule and checkpoints
    ("init- without checkpoint", HEAD + "grow T init-d S a@2ep B\n" + TRAIN, "4:8", r"T has none; add pretrained T ="),
    ("init- after training started", HEAD + 'pretrained T = "ckpt"\n' + "grow T d@1ep S init-a B\n" + TRAIN, "5:16", r"can only start the chain"),
    ("op without a point", HEAD + "grow T d S a@2ep B\n" + TRAIN, "4:8", r"say when d happens"),
    ("points out of order", HEAD + "grow T d@3ep S a@2ep B\n" + TRAIN, "4:18", r"points must increase.*2ep is not after 3ep"),
    ("point past the budget", HEAD + "grow T d@1ep S a@6ep B\n" + TRAIN, "4:18", r"past the end of the 5ep budget"),
    ("percent budget", HEAD + "grow T d@1ep S a@2ep B\ntrain 50% on corpus(\"demo\")\n", "5:7", r"not a percentage"),
    ("mixed units over budget", HEAD + "grow T d@1ep S a@60000steps B\n" + TRAIN.rstrip() + " steps_per_epoch=11136\n", "4:18", r"60000steps is past the end"),
    ("pretrained for unknown model", HEAD + 'pretrained Tt = "ckpt"\n' + "grow T d@1ep S a@2ep B\n" + TRAIN, "4:12", r"unknown model Tt; did you mean 'T'"),
    ("pretrained model is not where training starts", HEAD + 'pretrained B = "ckpt"\n' + "grow T d@1ep S a@2ep B\n" + TRAIN, "4:12", r"that is T, not B"),
    ("no train statement", HEAD + "grow T d@1ep S a@2ep B\n", "4:1", r"no train statement"),
    ("two train statements", GOOD + TRAIN, "6:1", r"only one train statement"),
    ("which model trains", HEAD + TRAIN, "4:1", r"which model trains"),
    ("bad setting value", GOOD.rstrip() + " batch_size=0\n", "5:40", r"batch_size must be a positive whole number, got 0"),
    ("bad warmup", GOOD.rstrip() + " optimizer adamw(warmup=6ep)\n", "5:52", r"warmup 6ep is longer than the 5ep budget"),
    ("bad schedule name", GOOD.rstrip() + " optimizer adamw(schedule=cosin)\n", "5:54", r"did you mean 'cosine'"),
    ("unknown op argument", HEAD + "grow T d(selct=interleave)@1ep S a@2ep B\n" + TRAIN, "4:10", r"no argument 'selct'; did you mean 'select'"),
    ("unknown op option", HEAD + "grow T d(identiy)@1ep S a@2ep B\n" + TRAIN, "4:10", r"did you mean 'identity'"),
    ("zero point", HEAD + "grow T d@0ep S a@2ep B\n" + TRAIN, "4:10", r"grow an untrained model"),
    ("duplicate task", GOOD + "finetune klue-nli, klue-nli\n", "6:20", r"listed twice"),
    ("rate out of range", GOOD.rstrip() + " objective span_corruption(rate=1.5)\n", "5:60", r"rate must be between 0 and 1 \(exclusive\), got 1.5"),
]


@pytest.mark.parametrize("name, text, where, message", CASES, ids=[c[0] for c in CASES])
def test_bad_recipe_message_and_place(name, text, where, message):
    with pytest.raises(RecipeError) as info:
        build_plan(parse_recipe(text, file="bad.grow"))
    err = info.value
    assert f"{err.line}:{err.column}" == where, str(err)
    assert re.search(message, err.message), str(err)
    # the shown source line is the one pointed at, with the caret under the column
    lines = str(err).splitlines()
    assert lines[0].startswith(f"bad.grow:{where}: error: ")
    assert lines[1].strip() == text.splitlines()[err.line - 1].strip() if text.splitlines() else True
    assert lines[2].index("^") - 4 == err.column - 1


def test_cases_are_distinct():
    assert len({c[0] for c in CASES}) == len(CASES) >= 25
    assert len({c[3] for c in CASES}) == len(CASES)


def test_good_base_recipe_plans():
    build_plan(parse_recipe(GOOD, file="good.grow"))


def test_cli_exit_status_2_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.grow"
    bad.write_text(HEAD + "grow T d@1ep S a@6ep B\n" + TRAIN)
    result = CliRunner().invoke(app, ["plan", str(bad)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert f"{bad}:4:18: error: " in result.output and "^" in result.output
    missing = CliRunner().invoke(app, ["plan", str(tmp_path / "none.grow")])
    assert missing.exit_code == 2 and "no such recipe" in missing.output
