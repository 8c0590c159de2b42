"""Fuzz: 10,000 random and malformed requests (hypothesis) against a real server. Every answer is a
status that names its fault (never UNKNOWN; INTERNAL only where gRPC cannot decode the bytes), no
call hangs, and a valid request's scores are the same after as before."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from serve_data import ITEMS, QUERY

from slimkit.serve._proto import scorer_pb2 as pb
from slimkit.serve.client import ScorerClient
from slimkit.serve.options import Limits, SchedulerConfig, ServerOptions
from slimkit.serve.server import make_server

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

pytestmark = pytest.mark.slow
BATCH, EXAMPLES = 50, 200                      # 10,000 requests, 50 in flight at a time
INT32 = st.integers(-(2**31), 2**31 - 1)
ANSWERS = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}
text = st.text(max_size=40) | st.text(max_size=3000) | st.sampled_from(["", " ", "yes", "no", "\x00", "{item}"])

score_requests = st.builds(
    pb.ScoreRequest, query=text, items=st.lists(text, max_size=4) | st.lists(text, min_size=30, max_size=40),
    labels=st.just([]) | st.lists(text, max_size=3) | st.just(["no", "yes"]),
    label_token_ids=st.just([]) | st.lists(INT32, max_size=3) | st.lists(st.integers(0, 300), max_size=3),
    normalization=st.sampled_from([0, 1, 2, 3]) | INT32, item_first=st.booleans())
logprobs_requests = st.builds(pb.LogProbsRequest, prompt=text, continuation=text,
                              top_k=st.integers(-2, 25) | INT32)
raw = st.binary(max_size=200)
calls = st.one_of(st.tuples(st.just("Score"), score_requests), st.tuples(st.just("LogProbs"), logprobs_requests),
                  st.tuples(st.just("ModelInfo"), st.builds(pb.ModelInfoRequest)),
                  st.tuples(st.sampled_from(["raw Score", "raw LogProbs"]), raw))


@pytest.fixture(scope="module")
def fuzz_server(torch_engine):
    opts = ServerOptions(limits=Limits(max_items=32, max_message_bytes=64 << 10),
                         scheduler=SchedulerConfig(max_queue_delay=0.0, max_queue_requests=4 * BATCH))
    server, port = make_server(torch_engine, "127.0.0.1:0", options=opts)
    yield f"127.0.0.1:{port}"
    server.stop(0).wait()


def test_random_and_malformed_requests(fuzz_server):
    channel = grpc.insecure_channel(fuzz_server, options=[("grpc.max_send_message_length", 64 << 20)])
    methods = {name: channel.unary_unary(f"/slimkit.v1.Scorer/{name}", request_serializer=lambda m: m.SerializeToString(),
                                         response_deserializer=None) for name in ("Score", "LogProbs", "ModelInfo")}
    methods |= {f"raw {name}": channel.unary_unary(f"/slimkit.v1.Scorer/{name}") for name in ("Score", "LogProbs")}
    with ScorerClient(fuzz_server) as c:
        before = c.score(QUERY, ITEMS, normalization="vocab").label_logprobs
    seen: dict[str, int] = {}

    @hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(st.lists(calls, min_size=BATCH, max_size=BATCH))
    def batch(requests):
        # Every other call without a deadline: a hang shows as the client's own wait running out.
        futures = [(name, methods[name].future(req, timeout=None if i % 2 else 60))
                   for i, (name, req) in enumerate(requests)]
        for name, fut in futures:
            try:
                fut.result(timeout=90)
                code = grpc.StatusCode.OK
            except grpc.FutureTimeoutError:
                raise AssertionError(f"{name} hung") from None
            except grpc.RpcError as e:
                code = e.code()
                assert code != grpc.StatusCode.DEADLINE_EXCEEDED, f"{name} hung"
                assert code in ANSWERS or (code == grpc.StatusCode.INTERNAL and name.startswith("raw")), \
                    f"{name}: {code} {e.details()}"
                assert code == grpc.StatusCode.OK or e.details(), f"{name}: {code} without a message"
            seen[code.name] = seen.get(code.name, 0) + 1

    batch()
    assert sum(seen.values()) >= 10_000 and seen["OK"] > 1000 and seen["INVALID_ARGUMENT"] > 1000, seen
    with ScorerClient(fuzz_server) as c:
        after = c.score(QUERY, ITEMS, normalization="vocab").label_logprobs
    np.testing.assert_allclose(after, before, atol=1e-6, rtol=0)
