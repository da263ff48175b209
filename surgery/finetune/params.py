"""Fine-tuning settings, checked before anything loads: an unknown or bad setting is a user error."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from surgery.errors import SurgeryError


class FinetuneParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(3, ge=0)
    batch_size: int = Field(16, ge=1)
    eval_batch_size: int = Field(32, ge=1)
    lr: float | None = Field(None, gt=0, description="default: 5e-5 for encoders, 3e-4 for T5")
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    limit: int | None = Field(None, ge=1, description="cap on training and (unless eval_limit) eval examples")
    eval_limit: int | None = Field(None, ge=1)
    seed: int = 42
    split_seed: int = Field(0, description="KorQuAD article split; fixed apart from `seed` so eval sets match")
    max_length: int | None = Field(None, ge=8, description="input tokens; default per task")
    max_target_length: int | None = Field(None, ge=2, description="generated tokens; default per task")
    stride: int = Field(128, ge=0, description="extractive QA: overlap of context windows")
    max_answer_tokens: int = Field(30, ge=1)
    num_beams: int = Field(1, ge=1)
    train_data: str | Path | None = None
    eval_data: str | Path | None = None
    news_data: str | Path | None = Field(None, description="news-summ second eval set (sci-news-sum-kr-50)")
    device: str | None = None
    bf16: bool | None = Field(None, description="default: on for GPUs with bf16")
    progress: bool = True
    save_model: bool = False
    teacher: str | Path | None = Field(None, description="TinyBERT task-specific distillation from this fine-tuned "
                                       "checkpoint of the task (or a folder holding <task>/model)")
    distil_epochs: int | None = Field(None, ge=0, description="intermediate-layer phase epochs (default: epochs)")
    distil_T: float = Field(1.0, gt=0, description="temperature of the prediction-layer phase")

    @property
    def eval_cap(self) -> int | None:
        return self.eval_limit if self.eval_limit is not None else self.limit


def parse_params(params: dict) -> FinetuneParams:
    try:
        return FinetuneParams(**params)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'params'}: {e['msg']}" for e in err.errors())
        raise SurgeryError(f"bad fine-tuning setting: {problems}") from None


def _recipe_args() -> dict[str, str]:
    from surgery.catalog import _FT_ARGS

    return {name: field for name, (field, _) in _FT_ARGS.items() if name != field}


def from_recipe(params: dict) -> dict:
    """A recipe task's arguments as `finetune` keywords: names mapped, whole-number epochs as int.
    `max_examples` caps the training set; the eval set is capped only by `eval_examples`."""
    names = _recipe_args()
    out = {names.get(k, k): v for k, v in params.items()}
    if isinstance(out.get("epochs"), float) and out["epochs"].is_integer():
        out["epochs"] = int(out["epochs"])
    if "limit" in out and "eval_limit" not in out:
        out["eval_limit"] = 10**9  # no eval cap unless eval_examples says so
    return out
