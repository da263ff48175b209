"""`finetune(checkpoint, task, out_dir, **params)`: one task on one checkpoint, scores.json out."""

from __future__ import annotations

import json
import time
from pathlib import Path

from surgery.errors import SurgeryError
from surgery.finetune.params import parse_params
from surgery.finetune.tasks import TASKS, tasks

DEFAULT_LR = {"t5": 3e-4, "mt5": 3e-4}
ENCODER_LR = 5e-5


def _load_checkpoint(checkpoint: Path):
    from transformers import AutoConfig, AutoTokenizer

    if not (checkpoint / "config.json").is_file():
        raise SurgeryError(f"{checkpoint}: not a checkpoint folder (no config.json)")
    try:
        config = AutoConfig.from_pretrained(checkpoint)
    except (ValueError, OSError) as err:
        raise SurgeryError(f"{checkpoint}: cannot read config.json ({err})") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    except (ValueError, OSError, TypeError) as err:
        raise SurgeryError(f"{checkpoint}: no usable tokenizer saved with the checkpoint ({err})") from None
    return config, tokenizer


def _teacher_dir(teacher: Path, task: str) -> Path:
    """A fine-tuned teacher: the folder itself, its model/ or its <task>/model (what --save-model writes)."""
    for folder in (teacher, teacher / "model", teacher / task / "model"):
        if (folder / "config.json").is_file():
            return folder
    raise SurgeryError(f"--teacher {teacher}: no config.json there or in {teacher / task / 'model'} "
                       "(fine-tune the teacher with --save-model first)")


def finetune(checkpoint: str | Path, task: str, out_dir: str | Path | None = None, **params) -> dict[str, float]:
    """Fine-tune `checkpoint` on `task` (one of TASKS), evaluate, write `out_dir/scores.json`.

    Returns the scores in percent: the task's metrics on its eval set, plus `<metric>_<set>` for any
    further eval set (news-summ: `rouge_l_news` on sci-news-sum-kr-50). See FinetuneParams for params.
    """
    import transformers

    from surgery.finetune.heads import load_head
    from surgery.finetune.loop import pick_device, train

    if task not in TASKS:
        raise SurgeryError(f"unknown task {task!r}: choose from {', '.join(TASKS)}")
    p = parse_params(params)
    checkpoint = Path(checkpoint)
    out = Path(out_dir) if out_dir is not None else checkpoint / "finetune" / task
    spec = tasks()[task](p)
    config, tokenizer = _load_checkpoint(checkpoint)
    if spec.needs_encoder_decoder and not config.is_encoder_decoder:
        raise SurgeryError(f"{task} generates text and needs an encoder-decoder checkpoint (t5); {checkpoint} is {config.model_type}")

    transformers.set_seed(p.seed)
    transformers.utils.logging.disable_progress_bar()
    train_examples, eval_sets = spec.load()
    if not train_examples and p.epochs > 0:
        raise SurgeryError(f"{task}: no training examples were loaded")
    try:
        model = load_head(checkpoint, spec.head, config, **spec.head_config())
    except (OSError, ValueError) as err:
        raise SurgeryError(f"{checkpoint}: cannot load its weights for {task} ({err})") from None
    device = pick_device(p.device)
    features = spec.encode(train_examples, tokenizer, model.config) if train_examples else []
    lr = p.lr or DEFAULT_LR.get(config.model_type, ENCODER_LR)

    def phase(epochs, description, loss_fn=None):
        return train(model, features, spec.collator(tokenizer, model), epochs=epochs if features else 0,
                     batch_size=p.batch_size, lr=lr, weight_decay=p.weight_decay, warmup_ratio=p.warmup_ratio,
                     seed=p.seed, device=device, bf16=p.bf16, progress=p.progress, description=description,
                     loss_fn=loss_fn)

    distillation = None
    if p.teacher is None:
        report = phase(p.epochs, f"{task} train")
    else:
        from surgery.distillation import TinyBertLoss

        teacher_dir = _teacher_dir(Path(p.teacher), task)
        teacher_config, teacher_tokenizer = _load_checkpoint(teacher_dir)
        if spec.head != "classification" or {config.model_type, teacher_config.model_type} != {"bert"}:
            raise SurgeryError("task-specific distillation (--teacher) is implemented for bert checkpoints on "
                               f"classification tasks (klue-nli); not {task} with {config.model_type} / {teacher_config.model_type}")
        if teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise SurgeryError(f"teacher {teacher_dir} and student {checkpoint} have different tokenizers; "
                               "distillation feeds both the same token ids")
        if teacher_config.num_attention_heads != config.num_attention_heads:
            raise SurgeryError(f"teacher {teacher_dir} has {teacher_config.num_attention_heads} attention heads, the student "
                               f"{config.num_attention_heads}; TinyBERT compares attention scores head by head")
        teacher = load_head(teacher_dir, spec.head, teacher_config, **spec.head_config())
        inter_epochs = p.epochs if p.distil_epochs is None else p.distil_epochs
        first = phase(inter_epochs, f"{task} distil: layers", TinyBertLoss(teacher, model, pred=0.0))
        report = phase(p.epochs, f"{task} distil: prediction",
                       TinyBertLoss(teacher, model, emb=0.0, att=0.0, hid=0.0, pred=1.0, T=p.distil_T))
        distillation = {"teacher": str(teacher_dir), "style": "tinybert",
                        "phases": [{"losses": "embedding + attention + hidden", "epochs": inter_epochs,
                                    "steps": first.steps, "final_loss": first.final_loss},
                                   {"losses": f"prediction (soft CE, T={p.distil_T})", "epochs": p.epochs,
                                    "steps": report.steps, "final_loss": report.final_loss}]}
    scores: dict[str, float] = {}
    started = time.perf_counter()
    for i, (set_name, examples) in enumerate(eval_sets.items()):
        result = spec.evaluate(model, tokenizer, examples, device) if examples else {m: 0.0 for m in spec.metrics}
        scores.update(result if i == 0 else {f"{k}_{set_name}": v for k, v in result.items()})
    out.mkdir(parents=True, exist_ok=True)
    if p.save_model:
        model.save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "model")
    record = {
        "task": task,
        "checkpoint": str(checkpoint),
        "model_type": config.model_type,
        "scores": scores,
        "train": {
            "examples": len(train_examples),
            "features": report.examples,
            "steps": report.steps,
            "final_loss": report.final_loss,
            "seconds": round(report.seconds, 2),
        },
        "eval": {name: len(ex) for name, ex in eval_sets.items()},
        "eval_seconds": round(time.perf_counter() - started, 2),
        "device": str(device),
        "params": {**p.model_dump(mode="json"), "lr": lr},
        "data_note": spec.data_note,
    }
    if distillation is not None:
        record["distillation"] = distillation
    (out / "scores.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return scores
