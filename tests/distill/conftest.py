"""Tiny random teacher/student model dirs (toy tokenizer, Qwen3, head_dim 32) shared by the distill tests."""

from __future__ import annotations

from pathlib import Path

import slimkit  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch loads)

# isort: split
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
