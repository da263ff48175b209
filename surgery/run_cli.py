"""`surgery run`: plan, pretrain with growth, fine-tune, and say where everything went."""

from __future__ import annotations

from pathlib import Path


DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "demo.grow"


def default_run_dir(recipe: Path) -> Path:
    """`runs/<path under recipes/>` beside the `recipes` folder the recipe lives in (so recipes
    can name each other's outputs, e.g. `../../runs/ko-bert2bert-mini/S/final`), else
    `runs/<recipe name>` in the current folder."""
    recipe = recipe.resolve()
    for parent in recipe.parents:
        if parent.name == "recipes":
            return parent.parent / "runs" / recipe.relative_to(parent).with_suffix("")
    return Path("runs") / recipe.stem


def run_command(recipe: Path, *, out: Path | None = None, resume: bool = False, dry_run: bool = False,
                finetune: bool = True, quiet: bool = False, seed: int | None = None) -> dict:
    from surgery.plan import INPUTS, plan_file
    from surgery.plan_cli import plan_command

    if not recipe.exists() and recipe == Path("recipes/demo.grow"):
        recipe = DEFAULT_RECIPE  # the default works from any folder
    if dry_run:
        plan_command(recipe, json_out=False)
        return {}
    # every file the run reads (corpus, checkpoints, task data) is there before anything is written
    plan = plan_file(recipe, require_inputs=INPUTS if finetune else INPUTS - {"finetune"})
    from surgery.train.loop import Trainer
    from surgery.train.schedule import compile_plan

    segments, settings = compile_plan(plan)
    if seed is not None:
        # Another training seed (init, data order, masks, growth) on the recipe's validation batches.
        from dataclasses import replace

        settings = replace(settings, seed=seed, val_seed=settings.seed if settings.val_seed is None else settings.val_seed)
    run_dir = out or default_run_dir(recipe)
    if run_dir.exists() and any(run_dir.iterdir()) and not resume and (run_dir / "summary.json").exists():
        print(f"note: {run_dir} holds an earlier run; it is replaced (use --resume to continue a stopped one)")
    trainer = Trainer(segments, settings, run_dir, run_name=plan.name, plan_json=plan.model_dump(mode="json"),
                      resume=resume, quiet=quiet, corpus_base=Path(plan.file).parent)
    summary = trainer.run()
    if finetune and plan.finetune:
        from surgery.finetune import finetune as run_task
        from surgery.finetune.params import from_recipe

        scores = {}
        for task in plan.finetune:
            scores[task.name] = run_task(run_dir / "final", task.name, run_dir / "finetune" / task.name, **from_recipe(task.params))
        summary["finetune"] = scores
    print(f"run directory: {run_dir}  (metrics.jsonl, curves.png, stages/, final/)")
    return summary
