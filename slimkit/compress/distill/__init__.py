"""Distillation: on-policy (student rollouts) and off-policy (teacher / dataset) KD with token selection.

    from slimkit.compress.distill import load_recipe, train
    cfg = load_recipe("recipes/opd_toy.yaml", ["select.method=entropy_top", "select.ratio=0.5"])
    result = train(cfg)            # {"student": "runs/opd_toy/student", "metrics": {...}, ...}
"""

from __future__ import annotations

import os

from slimkit import recipe as _recipe
from slimkit.compress.distill.config import DistillConfig, SelectConfig


def load_recipe(path: str | os.PathLike | None, overrides: list[str] | None = None) -> DistillConfig:
    """A validated DistillConfig from YAML plus `key=value` overrides (unknown keys are errors)."""
    return _recipe.load(DistillConfig, path, overrides)


def train(cfg: DistillConfig, *, resume: bool = False, overwrite: bool = False) -> dict:
    """Run a distillation; `resume` continues the run in `cfg.out`, `overwrite` starts it over there
    (the rules: `slimkit.compress.distill.rundir`)."""
    from slimkit.compress.distill.trainer import train as _train

    return _train(cfg, resume=resume, overwrite=overwrite)


__all__ = ["DistillConfig", "SelectConfig", "load_recipe", "train"]
