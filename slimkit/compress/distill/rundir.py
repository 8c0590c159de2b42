"""The run directory (`out`) of a distillation run: what it holds, and when a run may start there.

A run writes `slimkit.json` (stage "distill-run", so the directory is recognisably slimkit's),
`metrics.jsonl`, `checkpoints/step-*.pt`, the final `student/`, and by default its teacher caches
(`teacher_rollouts.jsonl`, `teacher_topk/`; with `stages:`, one per stage: `teacher_rollouts.stage0.jsonl`). Rules, checked before any model is loaded:

- a missing or empty `out`: a new run;
- `out` holding a run: refused unless `--resume` (continue from its latest checkpoint) or
  `--overwrite` (start over: its checkpoints, metrics and student are removed; the teacher caches stay,
  they are fingerprinted and reused only when they match);
- `out` holding anything else: refused, whatever the flags (slimkit never deletes what it did not write).

`--resume` compares the checkpoint's recipe with the current one and refuses any change that alters
training, listing the keys (`recipe_changes`); logging, checkpointing, evaluation, threads and device
may change.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from slimkit import artifacts
from slimkit.compress.distill import checkpoint
from slimkit.errors import SlimkitError

STAGE = "distill-run"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
STUDENT = "student"

# Recipe keys that may differ on --resume: they change what is logged, saved or evaluated, or where
# the run executes, not the weights it produces ("eval" is a whole section: greedy evaluation draws
# no random numbers).
RESUMABLE = ("out", "train.live_table", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
             "train.threads", "train.device", "rollout.cache", "loss.topk_cache", "eval")


def is_run_dir(out: Path) -> bool:
    """A directory that a distillation run wrote: its manifest, or checkpoints of an earlier version."""
    if artifacts.read_manifest(out).get("stage") == STAGE:
        return True
    return bool(checkpoint.list_checkpoints(out / CHECKPOINTS))


def check(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to start where the run would destroy something (see the module docstring). Read-only."""
    if resume and overwrite:
        raise SlimkitError("--resume and --overwrite exclude each other: continue the run or start it over")
    if out.exists() and not out.is_dir():
        raise SlimkitError(f"out={out} is a file, not a run directory")
    empty = not out.exists() or not any(out.iterdir())
    if resume:
        if empty or checkpoint.latest(out / CHECKPOINTS) is None:
            raise SlimkitError(f"--resume: no checkpoint in {out / CHECKPOINTS}")
    elif not empty:
        if not is_run_dir(out):
            raise SlimkitError(f"out={out} exists and is not a slimkit run directory: refusing to write into it "
                               "(choose another out)")
        if not overwrite:
            raise SlimkitError(f"{out} already holds a distillation run: use --resume to continue it or "
                               "--overwrite to start it over")
    student = out / STUDENT
    if student.exists() and not artifacts.is_slimkit_output(student):
        raise SlimkitError(f"{student} exists and was not written by slimkit: refusing to replace it")


def start_over(out: Path) -> None:
    """--overwrite: remove what the earlier run wrote (checkpoints, metrics, student); caches stay."""
    for p in checkpoint.list_checkpoints(out / CHECKPOINTS):
        p.unlink()
    (out / METRICS).unlink(missing_ok=True)
    if artifacts.is_slimkit_output(out / STUDENT):
        shutil.rmtree(out / STUDENT)


def mark(out: Path, recipe: dict[str, Any]) -> None:
    """Write the run's manifest (before anything else), which makes the directory recognisably a run."""
    out.mkdir(parents=True, exist_ok=True)
    artifacts.write_manifest(out, stage=STAGE, recipe=recipe)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def recipe_changes(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two recipes and that alter training."""
    a, b = _flat(stored), _flat(current)
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k, _MISSING) != b.get(k, _MISSING))
    return [k for k in changed if not any(k == r or k.startswith(r + ".") for r in RESUMABLE)]


_MISSING = object()


def check_resume_recipe(path: Path, stored: dict[str, Any], current: dict[str, Any]) -> None:
    changed = recipe_changes(stored, current)
    if changed:
        a, b = _flat(stored), _flat(current)
        diffs = ", ".join(f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in changed)
        raise SlimkitError(f"--resume: the recipe differs from the one checkpoint {path.name} was trained with, "
                           f"in keys that alter training ({diffs}); restore them, or start a new run with "
                           "--overwrite or another out")
