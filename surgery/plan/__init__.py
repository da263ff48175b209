"""Recipe AST -> a typed, validated plan (pydantic): models, ordered stages, training settings.

Every check that can fail because of what a user wrote raises RecipeError at the recipe's line
and column. The plan itself is plain data: `plan.model_dump(mode="json")` is what the runner
writes next to a run. No torch here; `surgery plan` must stay fast.

Choices worth knowing (docs/recipes.md says the same for users):
- `@` points are absolute positions in the training budget; `%` is resolved against the budget
  at plan time, so a Point's unit is always "ep" or "steps".
- A relative `pretrained` path is resolved against the recipe file's folder, so a recipe means
  the same wherever `surgery` is run from; `Plan.checkpoints` holds the absolute path.

The plan is built in parts (surgery/plan/): its data types (`types`), the models (`models`), the
train statement (`settings`), the growth chain (`chain`) and the builder that joins them
(`builder`); argument values go through one coercion (surgery/args.py).
"""

from surgery.plan.builder import INPUTS, build_plan, plan_and_missing, plan_file
from surgery.plan.types import (
    FinetuneTask,
    GrowStage,
    LrOnGrow,
    Objective,
    Optimizer,
    Plan,
    Point,
    Stage,
    StopRule,
    TrainSettings,
    TrainStage,
)

__all__ = ["FinetuneTask", "GrowStage", "LrOnGrow", "Objective", "Optimizer", "Plan", "Point", "Stage", "StopRule",
           "TrainSettings", "TrainStage", "INPUTS", "build_plan", "plan_and_missing", "plan_file"]
