"""Tiny random teacher/student model dirs (toy tokenizer, Qwen3, head_dim 32) shared by the distill tests."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no spinning threads on a shared CPU

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    from slimkit.toy import make_tiny_model_dir

    root = tmp_path_factory.mktemp("models")
    teacher = make_tiny_model_dir(root / "teacher", hidden=64, layers=2, seed=1)
    student = make_tiny_model_dir(root / "student", hidden=32, layers=1, heads=1, seed=2)
    return teacher, student


def overrides(pair, out: Path, *extra: str) -> list[str]:
    """A fast recipe on the tiny pair: dataset completions, a few arith examples, no live table."""
    teacher, student = pair
    return [f"teacher={teacher}", f"student={student}", f"out={out}", "rollout.source=dataset",
            "data.n=32", "rollout.max_new_tokens=8", "train.prompts_per_step=4", "train.micro_batch=4",
            "train.steps=3", "train.threads=1", "train.live_table=false", "eval.at_start=false",
            "eval.n=4", "optim.lr=1e-2", *extra]
