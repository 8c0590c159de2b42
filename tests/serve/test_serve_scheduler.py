"""The scheduler through a real server: cross-request batching with exact scores, deadlines and
earliest-deadline-first, cancellation, the bounded queue, health while loading and draining, metrics,
request limits."""

from __future__ import annotations

import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serve_data import ITEMS, QUERY, many_items

from slimkit.serve._proto import scorer_pb2 as pb
from slimkit.serve._proto import scorer_pb2_grpc as pb_grpc
from slimkit.serve.client import ScorerClient, ScorerError
from slimkit.serve.engine import Engine
from slimkit.serve.options import Limits, SchedulerConfig, ServerOptions
from slimkit.serve.server import ScorerServer, make_server


class GatedEngine(Engine):
    """The real torch engine behind a gate that the test opens, recording every call's jobs: a test
    harness (not a mock) that makes the queue fill while the engine is held."""

    def __init__(self, engine: Engine) -> None:
        self.inner, self.calls, self.gate = engine, [], threading.Event()
        self.gate.set()
        for name in ("name", "model_dir", "tokenizer", "vocab_size", "dtype", "max_top_k", "max_len"):
            setattr(self, name, getattr(engine, name))

    def score(self, jobs):
        self.calls.append(list(jobs))
        self.gate.wait(60)
        out = self.inner.score(jobs)
        self.timing = self.inner.timing
        return out

    def logprobs(self, jobs):
        self.calls.append(list(jobs))
        self.gate.wait(60)
        return self.inner.logprobs(jobs)


def _server(engine, **cfg):
    limits = cfg.pop("limits", Limits())
    opts = ServerOptions(scheduler=SchedulerConfig(**cfg), limits=limits, metrics_port=0)
    server, port = make_server(engine, "127.0.0.1:0", options=opts)
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def gated(torch_engine):
    engine = GatedEngine(torch_engine)
    yield engine
    engine.gate.set()


def _wait_queued(server, n: int) -> None:
    deadline = time.time() + 30
    while server.service.scheduler.queued()[0] < n:
        assert time.time() < deadline, "requests did not reach the queue"
        time.sleep(0.01)


def _hold(engine, addr, pool):
    """Occupy the engine with one request (it blocks at the gate); returns its future."""
    def one():
        with ScorerClient(addr) as c:
            return c.score(QUERY, ITEMS[:1])

    engine.gate.clear()
    before = len(engine.calls)
    fut = pool.submit(one)
    deadline = time.time() + 30
    while len(engine.calls) == before and time.time() < deadline:
        time.sleep(0.01)
    return fut


def test_concurrent_requests_share_engine_calls_and_keep_their_scores(torch_engine, gated):
    """Requests queued while the engine is busy go into one engine call; every request's scores equal
    those it gets alone, whatever else was in its call."""
    server, addr = _server(gated, max_queue_delay=0.05)
    queries = [QUERY, "nurse in munich", "go developer, remote", QUERY]
    requests = [dict(query=q, items=many_items(5 + i), normalization=n)
                for i, (q, n) in enumerate(zip(queries, ["labels", "vocab", "logit_diff", "vocab"], strict=True))]
    try:
        with ScorerClient(addr) as c, ThreadPoolExecutor(8) as pool:
            alone = [c.score(r["query"], r["items"], normalization=r["normalization"]) for r in requests]
            assert all(a.batch_requests == 1 for a in alone)
            held = _hold(gated, addr, pool)
            futs = [pool.submit(c.score, r["query"], r["items"], normalization=r["normalization"]) for r in requests]
            _wait_queued(server, len(requests))
            gated.gate.set()
            together = [f.result(60) for f in futs]
            held.result(60)
        assert [len(jobs) for jobs in gated.calls[-2:]] == [1, len(requests)]
        for a, t in zip(alone, together, strict=True):
            assert t.batch_requests == len(requests) and t.queue_seconds > 0 and t.engine_seconds > 0
            assert t.prefill_seconds > 0 and t.scoring_seconds > 0
            np.testing.assert_allclose(t.label_logprobs, a.label_logprobs, atol=2e-5, rtol=0)
    finally:
        server.stop(0).wait()


def test_a_lone_request_does_not_wait_for_company(torch_engine):
    """The queue delay is spent only on requests on their way in: one client is never held back."""
    server, addr = _server(torch_engine, max_queue_delay=2.0)
    try:
        with ScorerClient(addr) as c:
            for _ in range(3):
                assert c.score(QUERY, ITEMS[:2]).queue_seconds < 0.5
    finally:
        server.stop(0).wait()


def test_token_budget_splits_engine_calls(gated):
    server, addr = _server(gated, max_batch_tokens=1)          # every job is over budget: one per call
    try:
        with ThreadPoolExecutor(4) as pool:
            held = _hold(gated, addr, pool)
            c = ScorerClient(addr)
            futs = [pool.submit(c.score, QUERY, ITEMS[:2]) for _ in range(3)]
            _wait_queued(server, 3)
            gated.gate.set()
            assert [f.result(60).batch_requests for f in futs] == [1, 1, 1]
            held.result(60)
    finally:
        server.stop(0).wait()


def test_deadline_passed_in_queue_is_dropped_before_compute_and_earliest_deadline_goes_first(gated):
    server, addr = _server(gated, max_batch_requests=1)
    stub = pb_grpc.ScorerStub(grpc.insecure_channel(addr))
    try:
        with ThreadPoolExecutor(8) as pool:
            held = _hold(gated, addr, pool)
            items = {t: [f"deadline {t}"] for t in (30, 10, 20, 0.3)}
            futs = {t: pool.submit(stub.Score, pb.ScoreRequest(query=QUERY, items=items[t]), timeout=t)
                    for t in items}
            _wait_queued(server, 4)
            with pytest.raises(grpc.RpcError) as e:
                futs[0.3].result(30)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            time.sleep(0.2)
            assert server.service.scheduler.queued()[0] == 3              # its slot is free again
            gated.gate.set()
            for t in (30, 10, 20):
                futs[t].result(60)
            held.result(60)
        order = [jobs[0].item_ids for jobs in gated.calls[-3:]]
        tok = gated.tokenizer
        texts = [tok.decode(ids[0]) for ids in order]
        assert [next(t for t in (10, 20, 30) if f"deadline {t}" in x) for x in texts] == [10, 20, 30]
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
        assert 'slimkit_requests_total{code="DEADLINE_EXCEEDED",method="Score"} 1.0' in body
        assert len(stub.Score(pb.ScoreRequest(query=QUERY, items=ITEMS[:2])).scores) == 2     # no deadline at all
    finally:
        server.stop(0).wait()


def test_cancelled_call_frees_its_slot(gated):
    server, addr = _server(gated)
    try:
        with ThreadPoolExecutor(2) as pool:
            held = _hold(gated, addr, pool)
            stub = pb_grpc.ScorerStub(grpc.insecure_channel(addr))
            call = stub.Score.future(pb.ScoreRequest(query=QUERY, items=["cancel me"]), timeout=60)
            _wait_queued(server, 1)
            call.cancel()
            deadline = time.time() + 10
            while server.service.scheduler.queued()[0] and time.time() < deadline:
                time.sleep(0.01)
            assert server.service.scheduler.queued() == (0, 0)
            gated.gate.set()
            held.result(60)
        assert all("cancel me" not in gated.tokenizer.decode(j.item_ids[0]) for jobs in gated.calls for j in jobs)
    finally:
        server.stop(0).wait()


def test_full_queue_is_resource_exhausted_at_once_with_a_retry_hint(gated):
    server, addr = _server(gated, max_queue_requests=2)
    try:
        with ScorerClient(addr) as c, ThreadPoolExecutor(4) as pool:
            held = _hold(gated, addr, pool)
            queued = [pool.submit(c.score, QUERY, ITEMS[:2]) for _ in range(2)]
            _wait_queued(server, 2)
            t0 = time.perf_counter()
            with pytest.raises(ScorerError) as e:
                c.score(QUERY, ITEMS[:2])
            assert time.perf_counter() - t0 < 2
            assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue is full" in e.value.details
            assert e.value.retry_after and e.value.retry_after > 0
            gated.gate.set()
            assert all(len(f.result(60).scores) == 2 for f in queued)
            held.result(60)
            assert len(c.score(QUERY, ITEMS[:2]).scores) == 2              # recovered
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
        assert 'slimkit_rejected_total{reason="queue_full"} 1.0' in body
        assert "slimkit_batch_requests_bucket" in body and "slimkit_queue_seconds_count" in body
    finally:
        server.stop(0).wait()


def _health(addr) -> int:
    with grpc.insecure_channel(addr) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="slimkit.v1.Scorer"),
                                                    timeout=10).status


def test_health_while_loading_serving_and_draining(gated):
    server = ScorerServer("127.0.0.1:0")
    addr = f"127.0.0.1:{server.port}"
    try:
        assert _health(addr) == health_pb2.HealthCheckResponse.NOT_SERVING
        with ScorerClient(addr) as c:
            with pytest.raises(ScorerError, match="loading") as e:
                c.score(QUERY, ITEMS)
            assert e.value.code == grpc.StatusCode.UNAVAILABLE
            server.attach(gated)
            assert _health(addr) == health_pb2.HealthCheckResponse.SERVING
            with ThreadPoolExecutor(4) as pool:
                held = _hold(gated, addr, pool)
                queued = pool.submit(c.score, QUERY, ITEMS[:3])
                _wait_queued(server, 1)
                drained = pool.submit(server.drain, 60)
                time.sleep(0.1)
                assert _health(addr) == health_pb2.HealthCheckResponse.NOT_SERVING
                with pytest.raises(ScorerError, match="shutting down") as e:
                    c.score(QUERY, ITEMS)
                assert e.value.code == grpc.StatusCode.UNAVAILABLE
                gated.gate.set()
                assert drained.result(60) is True
                assert len(queued.result(60).scores) == 3 and len(held.result(60).scores) == 1
    finally:
        server.stop(0).wait()


@pytest.mark.parametrize("call, message", [
    (lambda c: c.score("", ITEMS), "query is empty"),
    (lambda c: c.score("  ", ITEMS), "query is empty"),
    (lambda c: c.score(QUERY, ["x"] * 9), "9 items > this server's limit of 8"),
    (lambda c: c.score(QUERY, ["spark " * 40]), r"item 0 is \d+ tokens > this server's limit of 32"),
    (lambda c: c.score("spark " * 70, ["x"]), r"the query is \d+ tokens > this server's limit of 64"),
    (lambda c: c.score(QUERY, ["x" * 5000]), "bytes > this server's limit of 4096"),
    (lambda c: c.logprobs("Query:", " x", top_k=10**9), "top_k 1000000000 is above this server's limit of 20"),
    (lambda c: c.logprobs("spark " * 70, " x"), r"the prompt is \d+ tokens"),
])
def test_limits_are_invalid_argument_naming_the_fault(torch_engine, call, message):
    limits = Limits(max_items=8, max_item_tokens=32, max_query_tokens=64, max_message_bytes=4096)
    server, addr = _server(torch_engine, limits=limits)
    try:
        with ScorerClient(addr) as c:
            with pytest.raises(ScorerError, match=message) as e:
                call(c)
            assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert len(c.score(QUERY, ITEMS[:2]).scores) == 2
    finally:
        server.stop(0).wait()
