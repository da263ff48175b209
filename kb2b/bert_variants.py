"""The BERT-variant comparison (kb2b/RESULTS-bert-variants.md): pretrain every recipe of
recipes/bert-variants/, fine-tune each final model on KLUE-NLI, print one table.

    python -m kb2b.bert_variants                  # everything not done yet, one run at a time
    python -m kb2b.bert_variants mlm span         # only these runs
    python -m kb2b.bert_variants --table-only     # the table from whatever has finished
    python -m kb2b.bert_variants mlm span --seeds 42,1,2   # more fine-tuning seeds (noise of the score)

Resumable: a run whose summary.json exists is not pretrained again, a fine-tuning whose
scores.json exists is not repeated. Logs go to runs/bert-variants/_logs/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes" / "bert-variants"

# name -> (recipe stem, the runs whose final/ it loads); in dependency order
RUNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "random": ("random", ()),
    "mlm": ("mlm", ()),
    "span": ("span", ()),
    "electra": ("electra", ()),
    "small-mlm": ("small-mlm", ()),
    "distil": ("distil", ()),
    "tinybert": ("tinybert", ()),
    "tutor": ("tutor", ()),
    "albert": ("albert", ("mlm",)),
}


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def pretrain(name: str, out: Path) -> bool:
    recipe, needs = RUNS[name]
    run = out / name
    if (run / "summary.json").is_file():
        return True
    missing = [n for n in needs if not (out / n / "final" / "config.json").is_file()]
    if missing:
        log(f"{name}: skipped, needs {', '.join(missing)}")
        return False
    cmd = ["surgery", "run", str(RECIPES / f"{recipe}.grow"), "--out", str(run), "--quiet", "--no-finetune"]
    if (run / "checkpoints").is_dir():
        cmd.append("--resume")
    log(f"{name}: pretraining ({' '.join(cmd[1:])})")
    with open(out / "_logs" / f"{name}.pretrain.log", "a") as f:
        ok = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode == 0
    log(f"{name}: pretraining {'done' if ok else 'FAILED'}")
    return ok


def finetune_dir(out: Path, name: str, seed: int) -> Path:
    return out / name / ("finetune" if seed == DEFAULT_SEED else f"finetune-seed{seed}")


DEFAULT_SEED = 42  # surgery finetune's


def finetune(name: str, out: Path, args, seed: int) -> None:
    target = finetune_dir(out, name, seed)
    if (target / "klue-nli" / "scores.json").is_file():
        return
    cmd = ["surgery", "finetune", str(out / name / "final"), "--task", "klue-nli", "--out", str(target),
           "--limit", str(args.limit), "--epochs", str(args.epochs), "--lr", str(args.lr), "--device", "cpu",
           "--seed", str(seed)]
    log(f"{name}: fine-tuning ({' '.join(cmd[1:])})")
    with open(out / "_logs" / f"{name}.finetune.log", "a") as f:
        ok = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode == 0
    log(f"{name}: fine-tuning {'done' if ok else 'FAILED'}")


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def common_mlm_losses(out: Path, names: list[str], batches: int = 32) -> dict[str, float]:
    """Every final model with an MLM head, on the same masked validation batches (mlm.grow's
    data and masking, `batches` batches): the one intrinsic number all of them share. ELECTRA's
    discriminator head is not trained by RTD and is left out."""
    from dataclasses import replace

    from surgery.compress import load_model
    from surgery.plan import plan_file
    from surgery.train.loop import Trainer
    from surgery.train.schedule import compile_plan

    segments, settings = compile_plan(plan_file(RECIPES / "mlm.grow"))
    trainer = Trainer(segments, replace(settings, val_batches=batches), out / "_common", run_name="common", quiet=True,
                      corpus_base=RECIPES)
    trainer.prepare_data()
    trainer.aux, trainer.distil = None, None
    import numpy as np

    counts = np.bincount(np.asarray(trainer.train_blocks).ravel(), minlength=trainer.vocab) + 1.0
    logp = np.log(counts / counts.sum())
    labels = np.concatenate([b["labels"][b["labels"] != -100].numpy() for b in trainer.val])
    losses = {"unigram": float(-logp[labels].mean())}  # the training text's token frequencies, no context
    for name in names:
        if name != "electra" and (out / name / "final" / "config.json").is_file():
            losses[name] = trainer.validate(load_model(out / name / "final"))
    return losses


def table(out: Path) -> str:
    common = common_mlm_losses(out, list(RUNS))
    unigram = f"Reference: the training text's unigram frequencies (no context) score {common['unigram']:.3f} on the common batches."
    rows = ["| run | objective / chain | final model params | val loss (first -> last) | MLM loss, common batches | pretrain wall (s) | KLUE-NLI acc (seed 42) | mean +- sd (seeds) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, (recipe, _) in RUNS.items():
        summary = _read(out / name / "summary.json")
        if not summary:
            continue
        vals = [json.loads(line)["val_loss"] for line in (out / name / "metrics.jsonl").read_text().splitlines()
                if json.loads(line).get("val_loss") is not None]
        cfg = _read(out / name / "final" / "config.json")
        params = "?"
        if cfg:
            from surgery.compress import load_model

            model = load_model(out / name / "final")
            params = f"{sum(p.numel() for p in model.parameters()):,}"
        accs = {}
        for folder in sorted((out / name).glob("finetune*")):
            scores = _read(folder / "klue-nli" / "scores.json")
            if "scores" in scores:
                accs[scores["params"]["seed"]] = scores["scores"]["accuracy"]
        acc = f"{accs[DEFAULT_SEED]:.1f}" if DEFAULT_SEED in accs else ""
        spread = ""
        if len(accs) > 1:
            import statistics

            values = list(accs.values())
            spread = f"{statistics.mean(values):.1f} +- {statistics.stdev(values):.1f} ({len(values)})"
        mlm_common = f"{common[name]:.3f}" if name in common else "n/a"
        chain = "none: 1 step at warmup lr ~0" if name == "random" else next(
            (line.strip() for line in (RECIPES / f"{recipe}.grow").read_text().splitlines()
             if line.strip().startswith(("grow", "objective"))), "")
        rows.append(f"| {name} | `{chain}` | {params} | {vals[0]:.3f} -> {vals[-1]:.3f} | {mlm_common} | {summary['wall_s']:.0f} | {acc} | {spread} |")
    return "\n".join(rows) + "\n\n" + unigram


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", help=f"runs to do (default all: {', '.join(RUNS)})")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bert-variants")
    ap.add_argument("--limit", type=int, default=8000, help="KLUE-NLI training (and eval) examples")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=5e-4, help="measured on the mlm run: 38.7 at 5e-4, 34.6 (chance) at 1e-4")
    ap.add_argument("--seeds", default=str(DEFAULT_SEED), help="fine-tuning seeds, comma-separated (e.g. 42,1,2)")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args(argv)
    unknown = [n for n in args.runs if n not in RUNS]
    if unknown:
        ap.error(f"unknown runs {unknown}; choose from {', '.join(RUNS)}")
    (args.out / "_logs").mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        for name in args.runs or list(RUNS):
            if pretrain(name, args.out):
                for seed in (int(x) for x in args.seeds.split(",")):
                    finetune(name, args.out, args, seed)
    text = table(args.out)
    (args.out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
