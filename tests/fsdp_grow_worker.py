"""Run under torchrun (2 CPU processes): grow a sharded model with its AdamW state by
surgery.train.sharding.grow and compare every tensor with grow_model + grow_optimizer_state of the
same model whole; then write the sharded model as a from_pretrained folder and read it back.
Then writes a checkpoint of the grown model and its AdamW state and reads it back as each rank's
rows (what a sharded resume does). Prints OK on the first rank when everything matches exactly. argv: out_dir family:op ..."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from surgery.families import build_model
from surgery.ops import grow_model
from surgery.spec import ModelSpec
from surgery.train import sharding
from surgery.train.loop import make_optimizer
from surgery.train.schedule import RunSettings
from surgery.train.sharding import full

SPECS = {
    "t5": (dict(family="t5", layers=1, decoder_layers=1, d_model=32, heads=4, d_ff=64, vocab=300),
           dict(family="t5", layers=3, decoder_layers=3, d_model=64, heads=8, d_ff=128, vocab=300)),
    # vocab 301: rows that do not split evenly over two ranks
    "bert": (dict(family="bert", layers=1, d_model=32, heads=4, d_ff=64, vocab=301),
             dict(family="bert", layers=2, d_model=48, heads=6, d_ff=96, vocab=301)),
}


def main():
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    for case in sys.argv[2:]:
        family, op = case.split(":")
        bad = check(family, op, out / case.replace(":", "-"))
        if dist.get_rank() == 0:
            print(f"{case} " + ("OK" if not bad else f"MISMATCH {bad[:8]}"), flush=True)
    dist.destroy_process_group()


def check(family: str, op: str, out: Path) -> list[str]:
    rank = dist.get_rank()
    src, dst = (ModelSpec(**d) for d in SPECS[family])
    torch.manual_seed(0)
    model = build_model(src, seed=0)
    if family == "bert":
        from surgery.families.build import with_pretraining_head

        model = with_pretraining_head(model)[0]
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "labels": ids}
    if family == "t5":
        batch["decoder_input_ids"] = ids
    # One AdamW step on the whole model, the same on every rank: the reference.
    opt = make_optimizer(model, RunSettings())
    model(**batch).loss.backward()
    opt.step()
    state = {n: dict(opt.state[p]) for n, p in model.named_parameters() if p in opt.state}
    ref = grow_model(model, src, dst, op, seed=3)
    ref_state = ref.grow_optimizer_state(state)
    ref_sd = ref.model.state_dict()

    sharded = sharding.shard(model, torch.device("cpu"))
    sopt = make_optimizer(sharded, RunSettings())
    sharding.load_optimizer_state(sopt, sharded, state)
    by_name = {n: sopt.state[p] for n, p in sharded.named_parameters()}
    new, new_state = sharding.grow(sharded, src, dst, op, 3, None, by_name, torch.device("cpu"))
    bad = []
    for n, p in new.named_parameters():
        if not torch.equal(full(p.detach()), ref_sd[n]):
            bad.append(n)
        for k in ("exp_avg", "exp_avg_sq"):
            if not torch.equal(full(new_state[n][k]), ref_state[n][k]):
                bad.append(f"{n}::{k}")
        if float(new_state[n]["step"]) != float(ref_state[n]["step"]):
            bad.append(f"{n}::step")
    # The grown sharded model computes what the whole one does.
    new.eval(), ref.model.eval()
    with torch.no_grad():
        a, b = new(**batch).loss, ref.model(**batch).loss
    if abs(float(a) - float(b)) > 1e-5:
        bad.append(f"loss {float(a)} != {float(b)}")
    sharding.save_pretrained(new, out, rank == 0)
    # A checkpoint of the grown model and its AdamW, read back as each rank's rows (resume).
    new_opt = make_optimizer(new, RunSettings())
    sharding.load_optimizer_state(new_opt, new, new_state)
    sharding.save_checkpoint(out.parent / (out.name + "-ckpt"), 7, new, new_opt, {"step": 7}, rank == 0)
    dist.barrier()
    latest = out.parent / (out.name + "-ckpt") / "ckpt-00000007"
    back = sharding.load_model(latest / "model", torch.device("cpu"))
    back_state = sharding.read_optimizer_rows(latest / "optimizer.safetensors", back)
    for n, p in back.named_parameters():
        if not torch.equal(full(p.detach()), ref_sd[n]):
            bad.append(f"resumed {n}")
        for k in ("exp_avg", "exp_avg_sq"):
            if not torch.equal(full(back_state[n][k]), ref_state[n][k]):
                bad.append(f"resumed {n}::{k}")
    if rank == 0:
        from surgery.compress import load_model

        back = load_model(out).state_dict()
        bad += [f"saved {k} {(back[k] - ref_sd[k]).abs().max()}" for k in ref_sd if not torch.equal(back[k], ref_sd[k])]
    return bad


if __name__ == "__main__":
    main()
