"""`surgery run` under torchrun with two CPU processes (gloo): the same run as one process, one
writer, and checkpoints that resume after a kill, with two processes or with one.

The pretrained start is saved with dropout 0 (the family descriptor's `no_dropout` config), and the
grown models inherit its config: with dropout off one process and two compute the same function
of the same global batches, so their validation losses agree to float rounding (1e-4 is asked).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.fixtures_text import documents

RECIPE = """
model T = t5(layers=1+1, d_model=32, heads=4, d_ff=64, vocab=300)
model S = t5(layers=2+2, d_model=32, heads=4, d_ff=64, vocab=300)
model B = t5(layers=3+3, d_model=64, heads=8, d_ff=128, vocab=300)
pretrained T = "t0"
grow T d@8steps S dl@16steps B
train 24steps on "corpus.txt"
    objective span_corruption(rate=0.15, mean_span=3)
    optimizer adamw(lr=3e-3, warmup=4steps)
    batch_size=4 seq_len=48 val_every=4steps
"""

ENV = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
TIMEOUT = 240


def one(recipe: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "surgery", "run", str(recipe), "--out", str(out), "--quiet",
                           "--no-finetune", *extra], env=ENV, capture_output=True, text=True, timeout=TIMEOUT)


def two_cmd(recipe: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "surgery",
            "run", str(recipe), "--out", str(out), "--quiet", "--no-finetune", *extra]


def two(recipe: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(two_cmd(recipe, out, *extra), env=ENV, capture_output=True, text=True, timeout=TIMEOUT)


def val_losses(run: Path) -> list[tuple[int, str, float]]:
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["model"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]


def weights(run: Path) -> dict:
    return load_file(run / "final" / "model.safetensors")


def kill_launch(proc: subprocess.Popen) -> None:
    """SIGKILL a torchrun launch: its workers (torchrun starts each in a session of its own, so a
    signal to torchrun's process group does not reach them), then torchrun; then wait until the
    run folder's lock is free (the workers are gone)."""
    def children(pid: int) -> list[int]:
        out = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                out += [int(stat.parent.name)] + children(int(stat.parent.name))
        return out

    for pid in children(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def wait_unlocked(run: Path) -> None:
    from filelock import FileLock

    from surgery.run_cli import LOCK

    with FileLock(run / LOCK, timeout=60):
        pass


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import torch

    from surgery.families import build_model
    from surgery.spec import ModelSpec

    root = tmp_path_factory.mktemp("dist")
    (root / "corpus.txt").write_text("\n".join(documents(300)) + "\n")
    spec = ModelSpec(family="t5", layers=1, decoder_layers=1, d_model=32, heads=4, d_ff=64, vocab=300)
    torch.manual_seed(0)
    build_model(spec, seed=0, **spec.descriptor.no_dropout).save_pretrained(root / "t0")
    recipe = root / "tiny.grow"
    recipe.write_text(RECIPE)

    single = one(recipe, root / "one")
    assert single.returncode == 0, single.stderr
    double = two(recipe, root / "two")
    assert double.returncode == 0, double.stderr[-3000:]

    # Killed (SIGKILL to torchrun and both workers) after its first checkpoint, mid-run.
    killed = root / "killed"
    proc = subprocess.Popen(two_cmd(recipe, killed), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + TIMEOUT
    while not (killed / "checkpoints" / "latest").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    kill_launch(proc)
    assert not (killed / "summary.json").exists(), "the run ended before it could be killed"
    wait_unlocked(killed)
    shutil.copytree(killed, root / "killed-one")
    resumed_two = two(recipe, killed, "--resume")
    resumed_one = one(recipe, root / "killed-one", "--resume")
    return {"one": (single, root / "one"), "two": (double, root / "two"), "resumed_two": (resumed_two, killed),
            "resumed_one": (resumed_one, root / "killed-one")}


def test_two_processes_train_as_one(runs):
    one_losses, two_losses = val_losses(runs["one"][1]), val_losses(runs["two"][1])
    assert [(s, m) for s, m, _ in one_losses] == [(s, m) for s, m, _ in two_losses]
    assert {m for _, m, _ in two_losses} == {"T", "S", "B"}  # both growths happened, dl among them
    assert max(abs(a - b) for (_, _, a), (_, _, b) in zip(one_losses, two_losses)) <= 1e-4
    # The logged train loss is the mean over both ranks, so it tracks the one-process figure too.
    rows = [[json.loads(l) for l in (runs[k][1] / "metrics.jsonl").read_text().splitlines()] for k in ("one", "two")]
    train = [(a["train_loss"], b["train_loss"]) for a, b in zip(*rows) if a.get("train_loss") is not None]
    assert train and max(abs(a - b) for a, b in train) <= 1e-4


def test_only_the_first_process_writes_and_prints(runs):
    result, run = runs["two"]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines)) == len((runs["one"][1] / "metrics.jsonl").read_text().splitlines())
    assert result.stdout.count("run directory:") == 1
    assert not (run / ".surgery-run.lock.pid").exists()
    for folder in ("stages/0-T", "stages/1-S", "stages/2-B", "final", "checkpoints"):
        assert (run / folder).is_dir()


def test_a_killed_two_process_run_resumes_to_the_same_weights(runs):
    result, run = runs["resumed_two"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("resuming") == 1
    assert " at step 24 " not in result.stdout  # killed mid-run
    a, b = weights(runs["two"][1]), weights(run)
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines))
    assert val_losses(run) == val_losses(runs["two"][1])


def test_a_two_process_checkpoint_resumes_with_one_process(runs):
    result, run = runs["resumed_one"]
    assert result.returncode == 0, result.stderr[-3000:]
    reference = val_losses(runs["two"][1])
    got = val_losses(run)
    assert [(s, m) for s, m, _ in got] == [(s, m) for s, m, _ in reference]
    assert max(abs(a - b) for (_, _, a), (_, _, b) in zip(got, reference)) <= 1e-4


# -- sharded (parallel=fsdp) ------------------------------------------------------------------

@pytest.fixture(scope="module")
def fsdp_runs(runs):
    """The same recipe with --parallel fsdp on 2 ranks; and one killed after its first checkpoint
    and resumed, with FSDP on 2 ranks and (a copy) with one process."""
    root = runs["two"][1].parent
    recipe = root / "tiny.grow"
    fsdp = two(recipe, root / "fsdp", "--parallel", "fsdp")
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    killed = root / "fsdp-killed"
    proc = subprocess.Popen(two_cmd(recipe, killed, "--parallel", "fsdp"), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + TIMEOUT
    while not (killed / "checkpoints" / "latest").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    kill_launch(proc)
    assert not (killed / "summary.json").exists(), "the run ended before it could be killed"
    wait_unlocked(killed)
    shutil.copytree(killed, root / "fsdp-killed-one")
    resumed = two(recipe, killed, "--resume", "--parallel", "fsdp")
    resumed_one = one(recipe, root / "fsdp-killed-one", "--resume")
    return {"fsdp": (fsdp, root / "fsdp"), "resumed": (resumed, killed),
            "resumed_one": (resumed_one, root / "fsdp-killed-one")}


def test_sharded_run_trains_as_the_ddp_run(runs, fsdp_runs):
    """parallel=fsdp (FSDP2, 2 CPU ranks): the DDP run's validation and train losses within 1e-4,
    through both growths (one of them dl), grown tensor by tensor on the shards."""
    ddp, fsdp = val_losses(runs["two"][1]), val_losses(fsdp_runs["fsdp"][1])
    assert [(s, m) for s, m, _ in ddp] == [(s, m) for s, m, _ in fsdp]
    assert {m for _, m, _ in fsdp} == {"T", "S", "B"}
    assert max(abs(a - b) for (_, _, a), (_, _, b) in zip(ddp, fsdp)) <= 1e-4
    rows = [[json.loads(l) for l in (r / "metrics.jsonl").read_text().splitlines()]
            for r in (runs["two"][1], fsdp_runs["fsdp"][1])]
    train = [(a["train_loss"], b["train_loss"]) for a, b in zip(*rows) if a.get("train_loss") is not None]
    assert train and max(abs(a - b) for a, b in train) <= 1e-4


def test_sharded_run_writes_from_pretrained_folders(runs, fsdp_runs):
    from transformers import T5ForConditionalGeneration

    run = fsdp_runs["fsdp"][1]
    for folder in ("stages/0-T", "stages/1-S", "stages/2-B", "final"):
        assert (run / folder / "config.json").exists() and (run / folder / "model.safetensors").exists()
    model = T5ForConditionalGeneration.from_pretrained(run / "final")
    assert model.config.num_layers == 3 and model.config.d_model == 64
    a, b = weights(runs["two"][1]), weights(run)
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-4
    assert (run / "checkpoints" / "latest").exists()
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    assert (ckpt / "optimizer.safetensors").exists() and (ckpt / "model" / "model.safetensors").exists()


def test_a_killed_sharded_run_resumes_to_the_same_weights(fsdp_runs):
    result, run = fsdp_runs["resumed"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("resuming") == 1
    assert "resuming" in result.stdout and " at step 24 " not in result.stdout  # killed mid-run
    a, b = weights(fsdp_runs["fsdp"][1]), weights(run)
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    assert val_losses(run) == val_losses(fsdp_runs["fsdp"][1])


def test_a_sharded_checkpoint_resumes_with_one_process(fsdp_runs):
    result, run = fsdp_runs["resumed_one"]
    assert result.returncode == 0, result.stderr[-3000:]
    reference, got = val_losses(fsdp_runs["fsdp"][1]), val_losses(run)
    assert [(s, m) for s, m, _ in got] == [(s, m) for s, m, _ in reference]
    assert max(abs(a - b) for (_, _, a), (_, _, b) in zip(got, reference)) <= 1e-4


def test_sharded_growth_makes_the_whole_models_tensors_and_moments(tmp_path):
    """surgery.train.sharding.grow on 2 ranks: every grown tensor and both AdamW moments equal
    grow_model + grow_optimizer_state of the same model whole (t5 and bert, depth with each width
    op, rows that do not split evenly); the streamed stage folder reads back the same."""
    cases = ["t5:dl", "t5:df", "bert:dl", "bert:da"]
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(Path(__file__).with_name("fsdp_grow_worker.py")), str(tmp_path), *cases],
                         env=dict(ENV, PYTHONPATH=str(Path(__file__).parents[1])), capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert [l for l in out.stdout.splitlines() if l.strip()] == [f"{c} OK" for c in cases]


# -- launchers and threads (no training) ---------------------------------------------------------

def _in_child(code: str, parent_args: list[str], env: dict) -> str:
    """Run `code` in a grandchild whose parent's command line carries `parent_args`, as
    `accelerate launch ...` is the parent of the script it starts."""
    outer = f"import subprocess, sys; sys.exit(subprocess.run([sys.executable, '-c', {code!r}]).returncode)"
    return subprocess.run([sys.executable, "-c", outer, *parent_args], env=env, capture_output=True, text=True,
                          timeout=60).stdout


def test_accelerate_launch_on_cpu_with_several_processes_is_named():
    code = "from surgery.run_cli import cpu_launch_warning; print(cpu_launch_warning())"
    env = dict(ENV, ACCELERATE_USE_CPU="True")
    env.pop("WORLD_SIZE", None)
    said = _in_child(code, ["--cpu", "--num_processes", "2"], env)
    assert "asked for 2 processes but started one" in said and "torchrun --nproc_per_node 2" in said
    assert _in_child(code, ["--cpu", "--num-processes=1"], env).strip() == "None"
    env.pop("ACCELERATE_USE_CPU")  # not started by accelerate's simple launcher
    assert _in_child(code, ["--num_processes", "2"], env).strip() == "None"


def test_threads_follow_omp_num_threads_else_cores_per_local_process():
    code = "from surgery.run_cli import set_threads; print(set_threads())"
    cores = len(os.sched_getaffinity(0))
    base = {k: v for k, v in ENV.items() if k not in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE")}
    run = lambda **kw: int(subprocess.run([sys.executable, "-c", code], env=dict(base, **kw), capture_output=True,
                                          text=True, timeout=60).stdout)
    assert run(OMP_NUM_THREADS="3") == 3
    assert run() == cores
    assert run(LOCAL_WORLD_SIZE="2") == max(1, cores // 2)
    assert run(LOCAL_WORLD_SIZE=str(cores + 5)) == 1


BERT_RECIPE = """
model T = bert(layers=1, d_model=32, heads=4, d_ff=64, vocab=300)
model S = bert(layers=2, d_model=32, heads=4, d_ff=64, vocab=300)
pretrained T = "b0"
grow T d@6steps S
train 12steps on "corpus.txt"
    objective span(sbo=true)
    optimizer adamw(lr=3e-3, warmup=2steps)
    batch_size=5 seq_len=32 val_every=3steps
"""


def test_uneven_rows_masked_tokens_and_an_objective_head_train_as_one_process(tmp_path):
    """batch_size 5 on 2 ranks (3 + 2 rows), a different number of masked tokens per rank, and the
    span-boundary head beside the model (not DDP-wrapped, reading the DDP model's embeddings): the
    loss-token weighting and the head's gradient exchange keep the run equal to one process's."""
    from surgery.families import build_model
    from surgery.spec import ModelSpec

    (tmp_path / "corpus.txt").write_text("\n".join(documents(300)) + "\n")
    spec = ModelSpec(family="bert", layers=1, d_model=32, heads=4, d_ff=64, vocab=300)
    build_model(spec, seed=0, **spec.descriptor.no_dropout).save_pretrained(tmp_path / "b0")
    recipe = tmp_path / "b.grow"
    recipe.write_text(BERT_RECIPE)
    single, double = one(recipe, tmp_path / "one"), two(recipe, tmp_path / "two")
    assert single.returncode == 0, single.stderr
    assert double.returncode == 0, double.stderr[-3000:]
    a, b = val_losses(tmp_path / "one"), val_losses(tmp_path / "two")
    assert len(a) == len(b) == 6 and [x[:2] for x in a] == [x[:2] for x in b]
    assert max(abs(x[2] - y[2]) for x, y in zip(a, b)) <= 1e-4


def test_parallel_fsdp_on_the_command_line_refuses_what_the_plan_would(tmp_path):
    """--parallel fsdp overrides the recipe's setting and refuses, as the plan does, what sharding
    does not support (here a distillation op), before any training; a wrong value is named."""
    from surgery.errors import SurgeryError
    from surgery.run_cli import run_command

    (tmp_path / "corpus.txt").write_text("\n".join(documents(50)) + "\n")
    recipe = tmp_path / "d.grow"
    recipe.write_text('model T = bert(layers=2, d_model=32, heads=4, d_ff=64, vocab=300)\n'
                      'model S = bert(layers=1, d_model=32, heads=4, d_ff=64, vocab=300)\n'
                      'grow T distil@2steps S\ntrain 4steps on "corpus.txt"\n    objective mlm\n    batch_size=4\n')
    with pytest.raises(SurgeryError, match=r"--parallel fsdp: parallel=fsdp does not support the distil op"):
        run_command(recipe, out=tmp_path / "run", finetune=False, quiet=True, parallel="fsdp")
    with pytest.raises(SurgeryError, match=r"--parallel must be one of ddp, fsdp"):
        run_command(recipe, out=tmp_path / "run", finetune=False, quiet=True, parallel="zero3")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
