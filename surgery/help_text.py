"""The recipe syntax that `surgery plan --help` shows: fixed grammar examples, and the families,
objectives, ops and tasks as the registries list them (so the help cannot fall behind them).
Lines stay within 80 columns; click keeps `\\b` paragraphs unwrapped. No torch here."""

from __future__ import annotations

import textwrap

from surgery import catalog
from surgery.families import FAMILIES

WIDTH = 78
_COMMON = ("layers", "d_model", "heads", "d_ff", "vocab")

GRAMMAR = """\
Recipe syntax (reference: docs/recipes.md; # starts a comment):
  model T = t5(layers=6+6, d_model=512, heads=8, d_ff=1024)
  model E = bert(layers=12, d_model=768, heads=12, d_ff=3072)
  model A = albert(layers=12, d_model=768, heads=12, d_ff=3072,
                   embedding=128, share=all|attention|ffn|none)
  model L = llama(layers=8, d_model=512, heads=8, kv_heads=2,
                  d_ff=1376, tie=false)
  pretrained T = "runs/T/final"   relative to the recipe's folder
  grow T d@1ep S a@2ep B          train T to 1ep, d into S, a into B
  grow T init-da B                init-: grow the pretrained T first
  train 5ep on corpus("ko-pretrain")    budget: 5ep | 28000steps
      objective span_corruption(rate=0.15, mean_span=3)
      optimizer adamw(lr=5e-4, warmup=1%, schedule=linear)
      until val_loss <= 1.0994    stop at the target loss
      batch_size=16 seq_len=512 val_every=1000steps seed=0
      ckpt_every=1000steps report_to=none|tensorboard|wandb|mlflow
      lr_on_grow=continue|rewarm(500steps)
      optimizer_on_grow=reset|grow
      freeze=none|old(200steps)     train only what grew, N steps
      parallel=ddp|fsdp           several processes: whole copies or shards
  train B 5ep ...                 no grow line: the model that trains
  finetune klue-nli(epochs=3), news-summ
Depth lists: d[0..5 x4] explicit source layers (t5: d[0..5 x2 + 0..5 x2])
Points: @2ep, @28000steps, @40% (of the budget), increasing."""


def _wrap(head: str, text: str, indent: int = 4) -> list[str]:
    return textwrap.wrap(f"{head}{text}", WIDTH, subsequent_indent=" " * indent, break_on_hyphens=False)


def _arg(name: str, info) -> str:
    return f"{name}={'|'.join(info.choices)}" if info.kind == "choice" else name


def families_text() -> list[str]:
    lines = [f"Families (all take {', '.join(_COMMON)}; layers=E+D for two stacks):"]
    for name, fam in FAMILIES.items():
        own = [_arg(a, i) for a, i in fam.args.items() if a not in _COMMON]
        lines += _wrap(f"  {name}: ", (", ".join(own) or "-") + f"  [{fam.kind}, objective {fam.default_objective}]")
    return lines


def objectives_text() -> list[str]:
    lines = ["Objectives (name(args): families):"]
    for name, o in catalog.OBJECTIVES.items():
        lines += _wrap(f"  {name}", f"({', '.join(o.params)}): {', '.join(o.families)}" if o.params
                       else f": {', '.join(o.families)}")
    return lines


def ops_text() -> list[str]:
    lines = ["Growth ops (d(identity) = d(init=identity); args in parentheses):"]
    for name, op in catalog.OPS.items():
        lines += _wrap(f"  {name:<3}" + (" " if len(name) >= 3 else ""), op.help.split(" (")[0])
    lines.append("Compression ops:")
    for name, op in catalog.COMPRESS_OPS.items():
        args = ", ".join(_arg(a, i) for a, i in op.args.items() if i.kind == "choice")
        if not args:  # factorize(E); moe(experts=E, top_k=k)
            args = "experts=E, top_k=K" if name == "moe" else "E"
        lines += _wrap(f"  {name}", f"({args})")
    return lines


def tasks_text() -> list[str]:
    return _wrap("Fine-tuning tasks: ", ", ".join(f"{n} ({'/'.join(t.families)})" for n, t in catalog.TASKS.items()))


def syntax_help() -> str:
    blocks = [GRAMMAR, "\n".join(families_text()), "\n".join(objectives_text()), "\n".join(ops_text()),
              "\n".join(tasks_text())]
    return "\n\n".join("\b\n" + b for b in blocks) + "\n"
