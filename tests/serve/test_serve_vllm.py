"""The vllm engine, served from its own environment (.venv-vllm) as a subprocess on a real port,
agrees with the torch engine within 1e-3 (fp32) through the client (one prompt per item with
logprob_token_ids). One vLLM server per module (start-up takes tens of seconds on this machine)."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from serve_data import ITEMS, QUERY, many_items, start_server, stop_server

from slimkit.serve.client import ScorerClient, ScorerError

ROOT = Path(__file__).resolve().parents[2]
VLLM_PY = ROOT / ".venv-vllm/bin/python"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not VLLM_PY.exists(), reason="no .venv-vllm: run `make .venv-vllm/.installed`"),
]


@pytest.fixture(scope="module")
def vllm_addr(tiny_dir, tmp_path_factory):
    proc, addr = start_server([str(VLLM_PY), "-m", "slimkit.serve"], tiny_dir, "vllm", tmp_path_factory.mktemp("vllm"),
                              env={"VLLM_CPU_KVCACHE_SPACE": "1"})
    yield addr
    stop_server(proc)


@pytest.fixture(scope="module")
def vclient(vllm_addr):
    with ScorerClient(vllm_addr, timeout=300) as c:
        yield c


@pytest.mark.parametrize("norm", ["labels", "vocab", "logit_diff"])
def test_vllm_agrees_with_torch(vclient, client, norm):
    items = ITEMS + many_items(12)
    for item_first in (False, True):
        v = vclient.score(QUERY, items, normalization=norm, item_first=item_first)
        t = client.score(QUERY, items, normalization=norm, item_first=item_first)
        np.testing.assert_allclose(v.label_logprobs, t.label_logprobs, atol=1e-3, rtol=0)
        np.testing.assert_allclose(v.scores, t.scores, atol=1e-3, rtol=0)
        assert v.label_token_ids == t.label_token_ids and v.item_tokens == t.item_tokens


def test_vllm_logprobs_and_info(vclient, client):
    v = vclient.logprobs("Query:\npython developer", " in berlin yes", top_k=5)
    t = client.logprobs("Query:\npython developer", " in berlin yes", top_k=5)
    assert [x.token_id for x in v.tokens] == [x.token_id for x in t.tokens]
    np.testing.assert_allclose([x.logprob for x in v.tokens], [x.logprob for x in t.tokens], atol=1e-3)
    for vt, tt in zip(v.top, t.top, strict=True):
        np.testing.assert_allclose([x.logprob for x in vt], [x.logprob for x in tt], atol=1e-3)
    info = vclient.model_info()
    assert info.engine == "vllm" and info.vocab_size == client.model_info().vocab_size


def test_vllm_bad_input(vclient):
    for call, message in [(lambda: vclient.score(QUERY, []), "items is empty"),
                          (lambda: vclient.score(QUERY, ITEMS, labels=["yes", "not one token"]), "single token"),
                          (lambda: vclient.logprobs("Query:", " nurse", top_k=21), "limit of 20")]:
        with pytest.raises(ScorerError, match=message) as e:
            call()
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(vclient.score(QUERY, ITEMS[:2]).scores) == 2


def test_vllm_more_labels_than_one_request_takes(vclient, client):
    """Over vLLM's 128 logprob_token_ids per request: the labels are asked for in chunks."""
    labels = list(range(3, 3 + 130))
    v = vclient.score(QUERY, ITEMS[:2], labels=labels, normalization="vocab")
    t = client.score(QUERY, ITEMS[:2], labels=labels, normalization="vocab")
    np.testing.assert_allclose(v.label_logprobs, t.label_logprobs, atol=1e-3, rtol=0)
