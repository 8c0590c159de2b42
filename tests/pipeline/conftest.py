"""Fixtures for the pipeline tests: tiny real models (random Qwen3 + the toy tokenizer), and model
directories of the real recipes' shapes that are never materialised (config.json + tokenizer, no weights)."""

from __future__ import annotations

import json
from pathlib import Path

import slimkit  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch loads)

# isort: split
import pytest
import torch

torch.set_num_threads(1)

# Qwen3 shapes of the real recipes' models (from their published config.json files).
QWEN3 = {
    "Qwen3-8B": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, tie_word_embeddings=False),
    "Qwen3-1.7B": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, tie_word_embeddings=True),
    "qwen3-0.6b-jobs": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                            num_key_value_heads=8, tie_word_embeddings=True),
}


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    from slimkit.toy import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("pl") / "teacher", hidden=64, layers=3, heads=2, kv_heads=1,
                               intermediate=128, seed=1)


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory) -> Path:
    from slimkit.toy import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("pl") / "student", hidden=64, layers=1, heads=2, kv_heads=1,
                               intermediate=64, seed=2)


@pytest.fixture(scope="session")
def shapes_only(tmp_path_factory) -> Path:
    """models/<name>: config.json of the real shape (vocab 151936, head_dim 128) and a tokenizer; no weights,
    so that any stage that loaded weights during a dry run would fail."""
    from transformers import Qwen3Config

    from slimkit.toy import toy_tokenizer

    root = tmp_path_factory.mktemp("models")
    tok = toy_tokenizer()
    for name, shape in QWEN3.items():
        cfg = Qwen3Config(vocab_size=151936, head_dim=128, max_position_embeddings=40960, **shape)
        cfg.architectures = ["Qwen3ForCausalLM"]
        (root / name).mkdir()
        cfg.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        assert json.loads((root / name / "config.json").read_text())["hidden_size"] == shape["hidden_size"]
    return root
