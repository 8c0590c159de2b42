"""Fixtures for the scorer tests: a tiny random Qwen3 (head_dim 32) with the toy tokenizer, a real
torch-engine server on a free local port, and a client."""

from __future__ import annotations

import pytest

from slimkit.toy import make_tiny_model_dir


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("serve") / "tiny", seed=3)


@pytest.fixture(scope="module")
def torch_engine(tiny_dir):
    from slimkit.serve.torch_engine import TorchEngine

    return TorchEngine(tiny_dir)


@pytest.fixture(scope="module")
def torch_server(torch_engine):
    """A real gRPC server on a free port of 127.0.0.1, in this process. Yields its address."""
    from slimkit.serve.server import make_server

    server, port = make_server(torch_engine, "127.0.0.1:0")
    yield f"127.0.0.1:{port}"
    server.stop(0).wait()


@pytest.fixture
def client(torch_server):
    from slimkit.serve.client import ScorerClient

    with ScorerClient(torch_server, timeout=60) as c:
        yield c
