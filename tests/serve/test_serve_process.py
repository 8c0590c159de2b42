"""The scorer as a process: SIGTERM under load drains (health NOT_SERVING first, every accepted
request answered, exit 0); two processes share one port (SO_REUSEPORT); a client balances calls
round-robin over several servers."""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serve_data import QUERY, many_items, start_server, stop_server

from slimkit.serve.client import ScorerClient, ScorerError
from slimkit.serve.options import ServerOptions
from slimkit.serve.server import make_server

SERVE = [sys.executable, "-m", "slimkit.serve"]


@pytest.mark.slow
def test_sigterm_under_load_answers_every_accepted_request_and_exits_0(tiny_dir, tmp_path):
    proc, addr = start_server(SERVE, tiny_dir, "torch", tmp_path, timeout=180)
    health: list[tuple[float, int]] = []
    outcomes: list[tuple[float, float, str]] = []                      # (sent, answered, what)
    lock = threading.Lock()

    def watch():
        with grpc.insecure_channel(addr) as ch:
            try:
                for r in health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""), timeout=120):
                    health.append((time.monotonic(), r.status))
            except grpc.RpcError:
                pass                                                     # the server went away

    def load(seed):
        with ScorerClient(addr, timeout=60) as c:
            while True:
                t0 = time.monotonic()
                try:
                    c.score(QUERY, many_items(8 + seed))
                    what = "ok"
                except ScorerError as e:
                    what = "refused" if "shutting down" in e.details else \
                        "unavailable" if e.code == grpc.StatusCode.UNAVAILABLE else f"{e.code.name}: {e.details}"
                with lock:
                    outcomes.append((t0, time.monotonic(), what))
                if what != "ok":
                    return

    threads = [threading.Thread(target=watch)] + [threading.Thread(target=load, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    time.sleep(3)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 0
    for t in threads:
        t.join(60)
    # A request is answered, or refused before it is accepted (UNAVAILABLE "shutting down": it reached
    # the scheduler after the drain began); one sent after SIGTERM may also find the server gone once it
    # has drained (UNAVAILABLE), or arrive while gRPC shuts the drained server down, which cancels calls
    # that never reached a handler (CANCELLED: never accepted). No request sent before SIGTERM is cut off.
    before = [w for t0, _, w in outcomes if t0 < signalled]
    after = [w for t0, _, w in outcomes if t0 >= signalled]
    assert set(before) <= {"ok", "refused"}, before
    assert set(after) <= {"ok", "refused", "unavailable", "CANCELLED: CANCELLED"}, after
    assert sum(end > signalled for t0, end, w in outcomes if t0 < signalled) > 0   # in flight at SIGTERM
    first_refusal = min((end for _, end, w in outcomes if w != "ok"), default=float("inf"))
    not_serving = [t for t, s in health if s == health_pb2.HealthCheckResponse.NOT_SERVING and t > signalled]
    assert health[0][1] == health_pb2.HealthCheckResponse.SERVING and not_serving
    assert not_serving[0] <= first_refusal


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_share_a_port(tiny_dir, tmp_path):
    port = _free_port()
    for i in range(2):
        (tmp_path / str(i)).mkdir()
    with ThreadPoolExecutor(2) as pool:                                  # both start at once
        procs = [proc for proc, _ in pool.map(lambda i: start_server(
            SERVE, tiny_dir, "torch", tmp_path / str(i), port=port, args=("--reuse-port",), timeout=180), range(2))]
    try:
        pids = set()
        for _ in range(40):                                              # new connections, spread by the kernel
            with ScorerClient(f"127.0.0.1:{port}") as c:
                pids.add(c.model_info().process_id)
                assert len(c.score(QUERY, many_items(2)).scores) == 2
            if len(pids) == 2:
                break
        assert pids == {p.pid for p in procs}
    finally:
        for p in procs:
            stop_server(p)
    assert [p.returncode for p in procs] == [0, 0]


def test_client_round_robin_over_two_servers(torch_engine):
    servers = [make_server(torch_engine, "127.0.0.1:0", options=ServerOptions(metrics_port=0))[0] for _ in range(2)]
    try:
        with ScorerClient(",".join(f"127.0.0.1:{s.port}" for s in servers)) as c:
            c.wait_ready()
            for _ in range(8):
                assert len(c.score(QUERY, many_items(2)).scores) == 2
        for s in servers:
            body = urllib.request.urlopen(f"http://127.0.0.1:{s.metrics_port}/metrics", timeout=10).read().decode()
            line = next(ln for ln in body.splitlines() if ln.startswith('slimkit_requests_total{code="OK"'))
            assert float(line.split()[-1]) >= 2, line                    # both servers took calls
    finally:
        for s in servers:
            s.stop(0).wait()


def test_reuse_port_needs_a_fixed_port(torch_engine):
    from slimkit.errors import SlimkitError

    with pytest.raises(SlimkitError, match="--reuse-port needs a fixed --port"):
        make_server(torch_engine, "127.0.0.1:0", options=ServerOptions(reuse_port=True))
