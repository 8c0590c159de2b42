"""Fixtures for the quantize tests: a tiny random Qwen3 with the toy tokenizer."""

from __future__ import annotations

import pytest

from slimkit.toy import make_tiny_model_dir


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("quantize") / "tiny", seed=5)
