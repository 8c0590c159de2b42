"""Tiny random parents (toy tokenizer, head_dim 32) of every supported architecture, for the prune tests."""

from __future__ import annotations

from pathlib import Path

import slimkit  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch loads)

# isort: split
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def parent(tmp_path_factory) -> Path:
    """A Qwen3 parent: hidden 128, 3 layers, 4 heads / 2 KV heads, MLP 256."""
    from slimkit.toy import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("parent") / "qwen3", hidden=128, layers=3, heads=4,
                               kv_heads=2, intermediate=256, seed=3)
