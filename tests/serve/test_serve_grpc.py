"""A real server on a real local port, through the client: Score, LogProbs, ModelInfo, health,
reflection, INVALID_ARGUMENT for bad input while the server keeps serving."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serve_data import ITEMS, QUERY

from slimkit.serve._proto import scorer_pb2 as pb
from slimkit.serve._proto import scorer_pb2_grpc as pb_grpc
from slimkit.serve.client import AsyncScorerClient, ScorerClient, ScorerError
from slimkit.serve.prompt import PromptTemplate
from slimkit.serve.requests import make_job


@pytest.mark.parametrize("norm", ["labels", "vocab", "logit_diff"])
def test_score_matches_engine(client, torch_engine, norm):
    res = client.score(QUERY, ITEMS, normalization=norm)
    job = make_job(torch_engine.tokenizer, PromptTemplate(), QUERY, ITEMS, normalization=norm,
                   vocab_size=torch_engine.vocab_size)
    (want,) = torch_engine.score([job])
    np.testing.assert_allclose(res.label_logprobs, want, atol=1e-6)
    assert len(res.scores) == len(ITEMS)
    if norm == "logit_diff":
        np.testing.assert_allclose(res.scores, want[:, 0] - want[:, 1], atol=1e-5)
    else:
        np.testing.assert_allclose(res.scores, np.exp(want[:, 0]), atol=1e-6)
    assert res.label_token_ids == job.label_ids
    assert res.shared_tokens == len(job.shared_ids) > 0
    assert res.item_tokens == [len(i) for i in job.item_ids]


def test_labels_as_token_ids_and_reversed(client, torch_engine):
    tok = torch_engine.tokenizer
    a = client.score(QUERY, ITEMS, labels=["yes", "no"])
    b = client.score(QUERY, ITEMS, labels=[tok.encode("no")[0], tok.encode("yes")[0]])
    np.testing.assert_allclose(np.array(a.label_logprobs)[:, ::-1], b.label_logprobs, atol=1e-6)
    np.testing.assert_allclose(np.array(a.scores) + np.array(b.scores), 1.0, atol=1e-6)


def test_item_first(client):
    a = client.score(QUERY, ITEMS)
    b = client.score(QUERY, ITEMS, item_first=True)
    assert b.shared_tokens < a.shared_tokens
    assert not np.allclose(a.scores, b.scores)


@pytest.mark.parametrize("kwargs, message", [
    (dict(items=[]), "items is empty"),
    (dict(labels=["yes", "certainly not one token"]), "not a single token"),
    (dict(labels=[5, 10**6]), "outside the vocabulary"),
    (dict(items=["ok", "spark " * 600]), "item 1 is too long"),
    (dict(normalization="logit_diff", labels=[5, 6, 7]), "exactly two labels"),
])
def test_bad_input_is_invalid_argument_and_server_keeps_serving(client, kwargs, message):
    args = dict(items=ITEMS) | kwargs
    items = args.pop("items")
    with pytest.raises(ScorerError, match=message) as e:
        client.score(QUERY, items, **args)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(client.score(QUERY, ITEMS[:2]).scores) == 2


def test_bad_normalization_value_on_the_wire(torch_server):
    with grpc.insecure_channel(torch_server) as ch:
        stub = pb_grpc.ScorerStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.Score(pb.ScoreRequest(query=QUERY, items=ITEMS, normalization=7), timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "normalization" in e.value.details()
        assert len(stub.Score(pb.ScoreRequest(query=QUERY, items=ITEMS), timeout=30).scores) == len(ITEMS)


def test_logprobs(client, torch_engine):
    res = client.logprobs("Query:\npython developer", " in berlin", top_k=3)
    cont = torch_engine.tokenizer.encode(" in berlin")
    assert [t.token_id for t in res.tokens] == cont
    assert all(len(t) == 3 for t in res.top)
    assert all(top[0].logprob >= tok.logprob - 1e-6 for top, tok in zip(res.top, res.tokens, strict=True))
    assert res.total == pytest.approx(sum(t.logprob for t in res.tokens), abs=1e-4)
    with pytest.raises(ScorerError, match="continuation is empty") as e:
        client.logprobs("Query:", "")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_model_info(client, tiny_dir):
    info = client.model_info()
    assert info.engine == "torch" and info.dtype == "float32"
    assert info.model == str(tiny_dir) and info.stage == "tiny-random"
    assert list(info.default_labels) == ["yes", "no"] and len(info.default_label_token_ids) == 2
    assert "{query}" in info.template and info.chat_template


def test_health_and_reflection(torch_server):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(torch_server) as ch:
        h = health_pb2_grpc.HealthStub(ch)
        for service in ("", "slimkit.v1.Scorer"):
            r = h.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert r.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        (resp,) = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            list_services="")]), timeout=10))
        names = {s.name for s in resp.list_services_response.service}
        assert {"slimkit.v1.Scorer", "grpc.health.v1.Health"} <= names


def test_async_client_concurrent_requests(torch_server):
    async def run():
        async with AsyncScorerClient(torch_server, timeout=60) as c:
            outs = await asyncio.gather(*[c.score(QUERY, ITEMS[i:] + ITEMS[:i]) for i in range(4)])
            with pytest.raises(ScorerError) as e:
                await c.score(QUERY, [])
            assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
            info = await c.model_info()
            return outs, info

    outs, info = asyncio.run(run())
    assert info.engine == "torch"
    for i, r in enumerate(outs):                       # rotated items, same per-item scores
        np.testing.assert_allclose(np.roll(r.scores, i), outs[0].scores, atol=1e-5)


def test_bad_template_fails_at_start(torch_engine):
    from slimkit.errors import SlimkitError
    from slimkit.serve.server import make_server

    with pytest.raises(SlimkitError, match=r"\{item\} exactly once"):
        make_server(torch_engine, "127.0.0.1:0", template=PromptTemplate("Query: {query}", None))
    with pytest.raises(SlimkitError, match="puts the item first"):
        make_server(torch_engine, "127.0.0.1:0", template=PromptTemplate("{item} then {query}", None))


def test_custom_template_without_item_first(torch_engine):
    from slimkit.serve.server import make_server

    server, port = make_server(torch_engine, "127.0.0.1:0",
                               template=PromptTemplate("Q: {query}\nDoc: {item}\nRelevant?", None, chat=False))
    try:
        with ScorerClient(f"127.0.0.1:{port}") as c:
            assert "Doc: {item}" in c.model_info().template and not c.model_info().chat_template
            assert len(c.score(QUERY, ITEMS).scores) == len(ITEMS)
            with pytest.raises(ScorerError, match="no item-first template") as e:
                c.score(QUERY, ITEMS, item_first=True)
            assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        server.stop(0).wait()
