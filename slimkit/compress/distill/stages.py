"""Staged schedules: `stages:` in a recipe, a list of partial recipes run back to back on one model and
one optimizer history.

Each stage gives its `steps`, optionally its `lr`, and partial `loss`, `rollout`, `select` and
`weighting` sections merged over the recipe's own. Stage k's effective recipe is the recipe with those
sections merged; `train.steps` is the sum of the stages' steps. The learning rate is one warmup +
cosine schedule over all steps, times the stage's lr (the recipe's optim.lr where the stage gives
none). The trainer writes a checkpoint at every stage boundary, and `--resume` lands in the stage of
the checkpoint's step.

    stages:                       # the sparse-to-dense bridge (recipes/repro/bridge.yaml)
      - {name: kd, steps: 100, rollout: {source: teacher}, loss: {kind: forward}}
      - {name: opd, steps: 200, rollout: {source: student}}
"""

from __future__ import annotations

import bisect
import copy
from typing import TYPE_CHECKING

from pydantic import ValidationError

if TYPE_CHECKING:
    from slimkit.compress.distill.config import DistillConfig

SECTIONS = ("loss", "rollout", "select", "weighting")


def _merge(base: dict, patch: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in patch.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _stage_recipe(cfg: DistillConfig, k: int) -> dict:
    data = cfg.model_dump(mode="json", exclude={"stages"})
    patch = cfg.stages[k]
    for section in SECTIONS:
        data[section] = _merge(data[section], getattr(patch, section))
    if patch.lr is not None:
        data["optim"]["lr"] = patch.lr
    return data


def _message(err: dict) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    return f"{'.'.join(str(x) for x in err['loc'])}: {msg}" if err["loc"] else msg


def check_stages(cfg: DistillConfig) -> None:
    """Called by DistillConfig's validator: every stage's recipe is valid, and train.steps (when given)
    is the stages' total. Raises ValueError naming the stage."""
    from slimkit.compress.distill.config import DistillConfig

    total = sum(s.steps for s in cfg.stages)
    if "steps" in cfg.train.model_fields_set and cfg.train.steps != total:
        raise ValueError(f"train.steps={cfg.train.steps} but the stages add up to {total} steps "
                         "(leave train.steps out, or make them agree)")
    cfg.train.steps = total
    for k, stage in enumerate(cfg.stages):
        try:
            DistillConfig.model_validate(_stage_recipe(cfg, k))
        except ValidationError as e:
            what = "; ".join(_message(err) for err in e.errors())
            raise ValueError(f"stages[{k}]{f' ({stage.name})' if stage.name else ''}: {what}") from None


def stage_recipes(cfg: DistillConfig) -> list[DistillConfig]:
    """The effective recipe of every stage ([cfg] itself when the recipe has no stages)."""
    from slimkit.compress.distill.config import DistillConfig

    if not cfg.stages:
        return [cfg]
    return [DistillConfig.model_validate(_stage_recipe(cfg, k)) for k in range(len(cfg.stages))]


def ends(cfg: DistillConfig) -> list[int]:
    """The step at which each stage ends (cumulative)."""
    out, n = [], 0
    for s in cfg.stages or []:
        n += s.steps
        out.append(n)
    return out or [cfg.train.steps]


def stage_at(cfg: DistillConfig, step: int) -> int:
    """The stage that runs optimizer step `step` (0-based; the last stage once all have run)."""
    e = ends(cfg)
    return min(bisect.bisect_right(e, step), len(e) - 1)


def lr_factor(cfg: DistillConfig, step: int) -> float:
    """The stage's lr relative to optim.lr, at schedule step `step`."""
    if not cfg.stages:
        return 1.0
    lr = cfg.stages[stage_at(cfg, step)].lr
    return 1.0 if lr is None else lr / cfg.optim.lr


def lr_multiplier(step: int, *, cfg: DistillConfig) -> float:
    """LambdaLR's factor over optim.lr: the warmup + cosine schedule of all steps times the stage's lr."""
    from slimkit.schedule import warmup_cosine

    o = cfg.optim
    return lr_factor(cfg, step) * warmup_cosine(step, warmup=o.warmup_steps, total=cfg.train.steps,
                                                min_ratio=o.min_lr_ratio)
