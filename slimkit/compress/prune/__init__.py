"""Structured pruning to a smaller model of the same architecture, with distillation recovery.

    from slimkit.compress.prune import prune
    prune("toy:teacher", "runs/pruned", keep=0.6, axes={"width"})                   # 60% of the parameters
    prune("toy:teacher", "runs/pruned", keep=0.6, recover="recipes/prune_recover_toy.yaml")

Stages, in call order: check the options and the target directory (and the recovery recipe and its
run directory) before any work; measure importance on calibration text (`importance`); choose the
shape and the kept units (`plan`); cut the weights into a standard config (`surgery`); write the HF
directory atomically with its manifest; optionally distill it from the parent (`recover`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from slimkit import artifacts
from slimkit.compress.prune.arch import (
    HEAD_DIM_FROM_HIDDEN,
    PruneError,
    check_config,
    count_params,
    layout_of,
    shape_of,
)
from slimkit.compress.prune.importance import METHODS, Importance, calibration_texts, measure, random_scores
from slimkit.compress.prune.plan import AXES, check_fixed, choose_shape, make_plan
from slimkit.compress.prune.surgery import build

DEFAULT_CALIB = ("arith", "jobs")


def check_options(*, keep: float | None, axes: set[str], multiple: int, importance: str) -> None:
    if keep is not None and not 0 < keep < 1:
        raise PruneError(f"--target-params {keep}: the kept fraction of parameters must lie strictly between "
                         "0 and 1 (0.6 keeps 60%)")
    if not axes or axes - set(AXES):
        raise PruneError(f"--axes {','.join(sorted(axes)) or '(empty)'}: choose from {', '.join(AXES)}")
    if multiple < 1:
        raise PruneError(f"--multiple {multiple}: widths are rounded to a multiple of at least 1")
    if importance not in METHODS:
        raise PruneError(f"--importance {importance!r}: choose one of {', '.join(METHODS)}")


def load_parent_config(path: Path):
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(path)
    except Exception as e:  # an unknown model_type or a broken config.json
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PruneError(f"cannot read {path}/config.json ({first}); pruning supports llama, mistral, qwen2, "
                         "qwen3") from None
    check_config(cfg)
    return cfg


def prune_model(parent, tok, *, keep: float | None, axes: set[str], fixed: dict[str, int | None],
                heads: int | None = None, multiple: int = 32, importance: str = "activation", seed: int = 0,
                calib: list[str] | None = None, calib_data: str | None = None, calib_n: int = 128,
                imp: Importance | None = None):
    """(pruned model, manifest info): measure, plan and cut an in-memory parent (`imp`: importance
    measured before, reused)."""
    cfg = parent.config
    shape, lay = shape_of(cfg), layout_of(cfg)
    family = cfg.model_type in HEAD_DIM_FROM_HIDDEN
    fixed = check_fixed(shape, fixed, heads, family)
    # importance: hooks on the parent's modules over calibration text (or random scores, the baseline)
    if imp is not None:
        calib_info = {"reused": True, "tokens": imp.tokens}
    elif importance == "random":
        imp = random_scores(cfg, seed)
        calib_info: dict[str, Any] = {"seed": seed}
    else:
        texts = calibration_texts(tok, tasks=calib, data=calib_data, n=calib_n)
        imp = measure(parent, tok, texts)
        calib_info = {"tasks": None if calib_data else calib, "data": calib_data, "n": len(texts), "tokens": imp.tokens}
    # the shape (target search or explicit widths), then the kept units
    s = choose_shape(shape, lay, imp, axes=axes, keep=keep, fixed=fixed, multiple=multiple, family_head_dim=family)
    plan = make_plan(shape, s, imp)
    model = build(parent, plan)
    before, after = count_params(shape, lay), count_params(s, lay)
    info = {"importance": {"method": imp.method, "calibration": calib_info,
                           "block_influence": [round(float(x), 6) for x in imp.layers]},
            "target": {"keep_params": keep, "axes": sorted(axes), "multiple": multiple,
                       "fixed": {k: v for k, v in fixed.items()}},
            "shape": {"parent": shape.as_dict(), "pruned": s.as_dict()},
            "params": {"parent": before, "pruned": after, "kept_fraction": after / before},
            "removed": plan.removed(shape)}
    return model, info


def prune(model: str, out: str | os.PathLike, *, keep: float | None = None, axes: set[str] | None = None,
          hidden: int | None = None, mlp: int | None = None, kv_heads: int | None = None, heads: int | None = None,
          layers: int | None = None, multiple: int = 32, importance: str = "activation", seed: int = 0,
          calib: list[str] | None = None, calib_data: str | None = None, calib_n: int = 128,
          recover: str | None = None, recover_set: list[str] | None = None, overwrite: bool = False,
          threads: int | None = None) -> dict[str, Any]:
    """Prune `model` into `out` (and with `recover`, a distillation recipe, distill it from `model`).
    Returns the manifest info with the output path."""
    import torch

    axes = set(axes or {"width"})
    check_options(keep=keep, axes=axes, multiple=multiple, importance=importance)
    if keep is None and all(v is None for v in (hidden, mlp, kv_heads, heads, layers)):
        raise PruneError("nothing to prune: give --target-params or explicit --hidden/--mlp/--kv-heads/--heads/--layers")
    out = artifacts.check_target(out, overwrite=overwrite)
    src = artifacts.check_model_dir(model)
    cfg = load_parent_config(src)
    check_fixed(shape_of(cfg), {"hidden": hidden, "mlp": mlp, "kv_heads": kv_heads, "layers": layers}, heads,
                cfg.model_type in HEAD_DIM_FROM_HIDDEN)
    recipe = recovery_recipe(recover, recover_set or [], parent=src, overwrite=overwrite) if recover else None
    if threads:
        torch.set_num_threads(threads)
    parent, tok = artifacts.load(src)
    pruned, info = prune_model(parent, tok, keep=keep, axes=axes,
                               fixed={"hidden": hidden, "mlp": mlp, "kv_heads": kv_heads, "layers": layers},
                               heads=heads, multiple=multiple, importance=importance, seed=seed,
                               calib=list(calib or DEFAULT_CALIB), calib_data=calib_data, calib_n=calib_n)
    del parent
    if recipe is None:
        artifacts.save(pruned, tok, out, stage="prune", parent=src, overwrite=overwrite,
                       metrics={"params": info["params"]["pruned"]}, pruning=info)
        return {**info, "out": str(out)}
    # recovery: the pruned model is the student of a distillation run whose teacher is the parent
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-pruned-", dir=out.parent))
    try:
        artifacts.save(pruned, tok, scratch / "pruned", stage="prune", parent=src, pruning=info)
        result = run_recovery(recipe, scratch / "pruned", overwrite=overwrite)
        student, _ = artifacts.load(result["student"], with_tokenizer=False)
        recovery = {"recipe": recover, "run": str(Path(recipe.out).expanduser().absolute()),
                    "metrics": result["metrics"]}
        artifacts.save(student, tok, out, stage="prune", parent=src, overwrite=overwrite,
                       metrics={"params": info["params"]["pruned"], **result["metrics"]},
                       pruning=info, recovery=recovery)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {**info, "recovery": recovery, "out": str(out)}


def recovery_recipe(recipe: str, overrides: list[str], *, parent: Path, overwrite: bool = False):
    """The distillation recipe with the parent as teacher, checked (and its run directory) before pruning.
    The student is set when the pruned model exists (`run_recovery`)."""
    from slimkit.compress.distill import load_recipe
    from slimkit.compress.distill.rundir import check

    cfg = load_recipe(recipe, overrides)
    cfg.teacher = str(parent)
    check(Path(cfg.out).expanduser(), resume=False, overwrite=overwrite)
    return cfg


def run_recovery(cfg, pruned: Path, *, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Distill the pruned model (`pruned`) from the recipe's teacher; returns the trainer's summary.
    `resume` continues an interrupted recovery run (`slimkit pipeline` does)."""
    from slimkit.compress.distill import train

    cfg = cfg.model_copy(deep=True)
    cfg.student = str(pruned)
    result = train(cfg, overwrite=overwrite, resume=resume)
    if result["stopped"]:
        raise PruneError(f"recovery stopped at step {result['step']} (signal): the pruned model was not written")
    return result


def recover(pruned: str | os.PathLike, parent: str, recipe: str, overrides: list[str] | None = None, *,
            overwrite: bool = False) -> dict[str, Any]:
    """Distill an already pruned directory from its parent with a recipe (the benchmark's second half)."""
    cfg = recovery_recipe(recipe, overrides or [], parent=artifacts.check_model_dir(parent), overwrite=overwrite)
    return run_recovery(cfg, Path(pruned), overwrite=overwrite)


__all__ = ["PruneError", "prune", "prune_model", "recover"]
