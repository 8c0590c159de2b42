"""Recipe overrides shared by the distill tests (a plain module: `conftest` is not importable by
name when several test folders each have one)."""

from __future__ import annotations

from pathlib import Path


def overrides(pair, out: Path, *extra: str) -> list[str]:
    """A fast recipe on the tiny pair: dataset completions, a few arith examples, no live table."""
    teacher, student = pair
    return [f"teacher={teacher}", f"student={student}", f"out={out}", "rollout.source=dataset",
            "data.n=32", "rollout.max_new_tokens=8", "train.prompts_per_step=4", "train.micro_batch=4",
            "train.steps=3", "train.threads=1", "train.live_table=false", "eval.at_start=false",
            "eval.n=4", "optim.lr=1e-2", *extra]
