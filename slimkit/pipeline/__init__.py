"""`slimkit pipeline RECIPE`: one recipe from a teacher to a served, measured small model, with a
quality gate at each stage (distill -> prune -> recover -> quantize -> context -> serve).

    from slimkit.pipeline import pipeline
    pipeline("recipes/toy.yaml", out="runs/toy", dry_run=True)     # validate everything, no work

Modules, in call order: `recipe` (the YAML schema, typos, stage order), `stages` (each stage's dry-run
check and its work, through the stage's own API), `runner` (skip / resume / run, measure, gate),
`measure` (the figures of one artifact), `gates`, `report`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from slimkit.pipeline.recipe import ORDER, PipelineError, PipelineRecipe, load

__all__ = ["ORDER", "PipelineError", "PipelineRecipe", "load", "pipeline"]


def pipeline(recipe: str | os.PathLike, *, out: str | os.PathLike | None = None, dry_run: bool = False,
             overrides: list[str] | None = None, console=None) -> dict[str, Any]:
    """Validate `recipe` (always, before any work) and, unless `dry_run`, run it into `out` (default:
    the recipe's `out`). Returns the plan (dry run) or the run's record."""
    from rich.console import Console
    from transformers.utils import logging as hf_logging

    from slimkit.pipeline import runner, stages

    hf_logging.disable_progress_bar()

    console = console or Console(stderr=True)
    r = load(recipe, overrides)
    root = Path(out or r.out).expanduser().absolute()
    run = stages.Run(r, root, stages.ref_dir(r.teacher, "teacher"),
                     stages.ref_dir(r.student, "student") if r.student else None)
    if r.stages.distill is not None and run.student is None:
        raise PipelineError(f"{recipe}: stage distill needs a student: set `student:` at the top of the recipe")
    runner.check_run_dir(root)
    plan = stages.check(run)
    if dry_run:
        for line in plan:
            console.print(f"  {line}")
        console.print(f"recipe {recipe} is valid: {len(plan)} stages, run directory {root}")
        return {"plan": plan, "out": str(root)}
    return runner.execute(r, root, str(recipe), console)
