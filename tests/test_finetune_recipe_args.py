"""A recipe's `finetune task(...)` arguments reach `finetune` under FinetuneParams' names."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_recipe_finetune_arguments_map_to_finetune_params():
    from surgery.finetune.params import from_recipe, parse_params
    from surgery.plan import plan_file

    assert from_recipe({"max_examples": 300, "eval_examples": 100, "seq_len": 192, "target_len": 16, "warmup": 0.05,
                        "epochs": 1.0}) == {"limit": 300, "eval_limit": 100, "max_length": 192, "max_target_length": 16,
                                            "warmup_ratio": 0.05, "epochs": 1}
    assert from_recipe({"max_examples": 300})["eval_limit"] >= 10**9  # max_examples caps training only
    for recipe in sorted((ROOT / "recipes").rglob("*.grow")):
        for task in plan_file(recipe).finetune:
            parse_params(from_recipe(task.params))  # every shipped recipe's settings are accepted
