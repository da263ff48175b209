"""The shard writer (surgery/shard_writer.py): which tensor a free worker takes next, the memory
budget, and a failed write leaving nothing behind."""

import threading

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import surgery.shard_writer as sw
from surgery.cli import app
from surgery.io import TensorTask, save_checkpoint, write_tensors
from surgery.shard_writer import Placed, Schedule

runner = CliRunner()


def placed(name: str, shard: int, working: int = 10) -> Placed:
    task = TensorTask(name, (1,), torch.float32, lambda: torch.zeros(1), cost=working)
    return Placed(task, [(shard, 0)])


def names(ps) -> list[str]:
    return [p.task.name for p in ps]


def test_free_workers_take_from_shards_no_one_is_writing():
    """Each worker takes the first tensor of a shard nobody is writing (two threads writing one
    file take turns on its lock); only once every open shard is busy do two share one."""
    s = Schedule([placed("a0", 0), placed("a1", 0), placed("a2", 0), placed("b0", 1), placed("c0", 2)], 3, 10**6)
    first = [s.take(), s.take(), s.take()]
    assert names(first) == ["a0", "b0", "c0"]
    assert names([s.take()]) == ["a1"]  # every shard busy: the first of the least busy
    for p in first:
        s.release(p)
    assert names([s.take()]) == ["a2"]
    assert s.take() is Schedule.DONE


def test_working_sets_in_hand_stay_within_the_budget():
    s = Schedule([placed("a", 0, 60), placed("b", 1, 50), placed("c", 2, 30), placed("big", 3, 500)], 4, 100)
    a = s.take()
    assert s.take() is None  # b's 50 beside a's 60 is over 100: wait
    s.release(a)
    b, c = s.take(), s.take()
    assert names([b, c]) == ["b", "c"] and s.held == 80
    assert s.take() is None  # larger than the whole budget: waits until nothing is in hand...
    s.release(b)
    assert s.take() is None
    s.release(c)
    assert names([s.take()]) == ["big"] and s.held == 500  # ...then runs alone
    assert s.take() is Schedule.DONE


def test_workers_write_different_shards_at_once(tmp_path):
    """Two workers, two shards: while the first tensor of shard 0 is being made, the other worker
    makes shard 1's first, not shard 0's second; every tensor lands at its place."""
    started, both = [], threading.Barrier(2, timeout=10)

    def make(name, value):
        started.append(name)
        if name in ("a0", "b0"):
            both.wait()  # raises (and fails the run) unless a0 and b0 are in hand together
        return torch.full((256,), value)

    tasks = [TensorTask(n, (256,), torch.float32, (lambda n=n, v=float(i): make(n, v)))
             for i, n in enumerate(["a0", "a1", "b0", "b1"])]
    (tmp_path / "m").mkdir()
    files = write_tensors(tmp_path / "m", tasks, shard_bytes=2048, threads=2)
    assert set(started[:2]) == {"a0", "b0"}
    got = {}
    for f in files:
        if f.endswith(".safetensors"):
            got.update(load_file(str(tmp_path / "m" / f)))
    assert {k: v[0].item() for k, v in got.items()} == {"a0": 0.0, "a1": 1.0, "b0": 2.0, "b1": 3.0}


@pytest.mark.parametrize("threads", [1, 2])
def test_failed_tensor_stops_the_run_and_leaves_nothing(tmp_path, threads):
    made = []

    def make(name):
        made.append(name)
        if name == "b":
            raise RuntimeError("disk on fire")
        return torch.zeros(2)

    names = ["a0", "a1", "b", "a2", "a3", "a4"]
    tasks = [TensorTask(n, (2,), torch.float32, (lambda n=n: make(n))) for n in names]
    with pytest.raises(RuntimeError, match="disk on fire"):
        save_checkpoint(tmp_path / "out", tasks, {"model_type": "bert"}, threads=threads, shard_bytes=16)
    assert list(tmp_path.iterdir()) == []
    if threads == 1:
        assert made == ["a0", "a1", "b"]  # nothing after the failure is started
    else:
        assert len(made) < len(names)


def test_second_ctrl_c_still_waits_for_every_worker(tmp_path, monkeypatch):
    """Ctrl-C while the workers make tensors, and again while the run waits for them: the run
    ends with KeyboardInterrupt only once no worker is left (the files are closed right after,
    and a worker still writing would write into whatever file reuses its descriptor). The two
    interrupts arrive where Python raises them, in the main thread's waits for the workers:
    here the first two of those waits raise KeyboardInterrupt."""
    in_hand, release, made, interrupts = threading.Semaphore(0), threading.Event(), [], []
    real_join = threading.Thread.join

    def make(name):
        made.append(name)
        in_hand.release()
        release.wait(10)
        return torch.zeros(64)

    def join(self, *args, **kwargs):
        if self.name.startswith("surgery-write") and len(interrupts) < 2:
            if not interrupts:  # the first: once both workers hold a tensor
                assert in_hand.acquire(timeout=10) and in_hand.acquire(timeout=10)
                threading.Timer(1.0, release.set).start()  # the workers' tensors finish later
            interrupts.append(self.name)
            raise KeyboardInterrupt
        return real_join(self, *args, **kwargs)

    monkeypatch.setattr(threading.Thread, "join", join)
    tasks = [TensorTask(f"t{i}", (64,), torch.float32, (lambda i=i: make(f"t{i}"))) for i in range(6)]
    (tmp_path / "m").mkdir()
    try:
        with pytest.raises(KeyboardInterrupt):
            write_tensors(tmp_path / "m", tasks, shard_bytes=512, threads=2)
        assert len(interrupts) == 2
        assert not [t.name for t in threading.enumerate() if t.name.startswith("surgery-write")]
        assert release.is_set() and len(made) == 2  # nothing new started after the first Ctrl-C
    finally:
        release.set()


def test_budget_kept_in_a_real_run_and_short_writes_completed(tmp_path, monkeypatch):
    """Three workers, tensors of different working sets: the working sets in hand never pass the
    budget and all are released at the end; writes cut short by the file system (here at most 5
    bytes a call, in 7-byte chunks) are completed."""
    budget, peaks = 300, []
    real_take, real_pwrite = Schedule.take, sw.os.pwrite

    def take(self):
        p = real_take(self)
        if p is not None and p is not Schedule.DONE:
            peaks.append((self.held, p.task.working_bytes))
        return p

    def short(fd, data, offset):
        return real_pwrite(fd, data[:5], offset)

    monkeypatch.setattr(Schedule, "take", take)
    monkeypatch.setattr(sw.os, "pwrite", short)
    monkeypatch.setattr(sw, "WRITE_CHUNK", 7)
    tensors = {f"t{i}": torch.arange(n, dtype=torch.float32) for i, n in enumerate([10, 30, 5, 40, 12, 25, 3])}
    tasks = [TensorTask(k, tuple(v.shape), torch.float32, (lambda v=v: v.clone()), cost=4 * v.numel() * 2)
             for k, v in tensors.items()]
    (tmp_path / "m").mkdir()
    files = write_tensors(tmp_path / "m", tasks, shard_bytes=100, threads=3, budget=budget)
    assert all(held <= budget or held == w for held, w in peaks) and len(peaks) == len(tasks)
    got = {}
    for f in files:
        if f.endswith(".safetensors"):
            got.update(load_file(str(tmp_path / "m" / f)))
    assert all(torch.equal(got[k], v) for k, v in tensors.items())


def test_same_as_must_name_an_earlier_tensor_of_its_size(tmp_path):
    a = torch.ones(4)
    ok = [TensorTask("z", (4,), torch.float32, None, zeros=True), TensorTask("z2", (4,), torch.float32, None, same_as="z"),
          TensorTask("a", (4,), torch.float32, lambda: a.clone()), TensorTask("a2", (4,), torch.float32, None, same_as="a")]
    (tmp_path / "ok").mkdir()
    write_tensors(tmp_path / "ok", ok)
    got = load_file(str(tmp_path / "ok" / "model.safetensors"))
    assert torch.equal(got["z2"], torch.zeros(4)) and torch.equal(got["a2"], a)  # a hole, and a's bytes
    for bad in ([TensorTask("a", (4,), torch.float32, lambda: a.clone()), TensorTask("b", (5,), torch.float32, None, same_as="a")],
                [TensorTask("b", (4,), torch.float32, None, same_as="later"), TensorTask("later", (4,), torch.float32, lambda: a.clone())]):
        (tmp_path / "bad").mkdir(exist_ok=True)
        with pytest.raises(ValueError, match="names no earlier tensor"):
            write_tensors(tmp_path / "bad", bad)


@pytest.mark.parametrize("where", ["header", "tensor"])
def test_full_disk_one_line_exit_2_nothing_written(tmp_path, monkeypatch, where):
    """A write the file system refuses (here: no space), of a shard's header or of a tensor, is one
    line naming the file (and the tensor), exit 2, and neither the output nor its temporary folder
    stays."""
    from tests.tiny import model, spec

    save_checkpoint(tmp_path / "src", model(spec("bert")))
    real = sw.os.pwrite

    def full(fd, data, offset):
        if (offset == 0) == (where == "header"):
            raise OSError(28, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(sw.os, "pwrite", full)
    res = runner.invoke(app, ["grow", str(tmp_path / "src"), "--op", "f", "--to", "d_model=64",
                              "--out", str(tmp_path / "out"), "--no-probe"])
    assert res.exit_code == 2, res.output
    assert res.output.strip().count("\n") == 0 and "No space left on device" in res.output, res.output
    assert "cannot write" in res.output and ".safetensors" in res.output
    if where == "tensor":
        assert "cannot write bert." in res.output, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_default_shards_give_each_worker_a_file_of_its_own():
    """Outputs up to 2 GiB a shard, split into as many files as the most workers by default once
    each still holds 512 MiB; a function of the size alone (the files never depend on --threads)."""
    from surgery.io import MAX_DEFAULT_THREADS, shard_bytes_for

    MiB, GiB = 1 << 20, 1 << 30
    assert shard_bytes_for(100 * MiB) == 512 * MiB  # one file
    assert shard_bytes_for(3 * GiB) == 3 * GiB // MAX_DEFAULT_THREADS == 768 * MiB
    assert shard_bytes_for(100 * GiB) == 2 * GiB


def test_output_that_cannot_be_created_one_line_exit_2(tmp_path):
    """--out under a file, or where no folder can be made: one line naming the output and why."""
    from tests.tiny import model, spec

    save_checkpoint(tmp_path / "src", model(spec("bert")))
    (tmp_path / "afile").write_text("x")
    res = runner.invoke(app, ["grow", str(tmp_path / "src"), "--op", "f", "--to", "d_model=64",
                              "--out", str(tmp_path / "afile" / "out"), "--no-probe"])
    assert res.exit_code == 2, res.output
    assert res.output.strip().count("\n") == 0 and "cannot create the output folder" in res.output, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "src"]
