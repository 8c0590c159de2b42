"""The gRPC server: the Scorer service, gRPC health checking and server reflection.

Requests are validated and tokenized in the handler threads (`slimkit.serve.requests`, the one
validation layer); engine calls are serialized by a lock (one request's items are batched inside the
engine). Engines take lists of jobs, so a later cross-request batcher can sit between the handlers
and the engine without changing either.

Every handler answers through `_answer`: a bad request (RequestError) with INVALID_ARGUMENT, a request
this server's configuration cannot serve (PreconditionError) with FAILED_PRECONDITION, a bug with
INTERNAL (its traceback in the server's log); the server keeps serving. Misconfiguration that no
request can fix (a bad template, an address that cannot be bound) stops the server at start.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
from concurrent import futures
from importlib import metadata
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from slimkit import artifacts
from slimkit.errors import PreconditionError, RequestError, SlimkitError
from slimkit.serve._proto import scorer_pb2 as pb
from slimkit.serve._proto import scorer_pb2_grpc as pb_grpc
from slimkit.serve.engine import Engine, item_scores
from slimkit.serve.prompt import DEFAULT_LABELS, PromptTemplate
from slimkit.serve.requests import Requests

log = logging.getLogger("slimkit.serve")
SERVICE = "slimkit.v1.Scorer"
MAX_MESSAGE = 64 << 20


def _answer(handler):
    """Wrap a handler so that every error it meets becomes a named gRPC status."""
    @functools.wraps(handler)
    def wrapped(self, request, context: grpc.ServicerContext):
        try:
            return handler(self, request, context)
        except RequestError as e:
            log.info("invalid request to %s: %s", handler.__name__, e)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except PreconditionError as e:
            log.info("failed precondition in %s: %s", handler.__name__, e)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except Exception:
            log.exception("internal error in %s", handler.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {handler.__name__} (see the server log)")
    return wrapped


class ScorerService(pb_grpc.ScorerServicer):
    def __init__(self, engine: Engine, template: PromptTemplate | None = None, compression=None) -> None:
        self.engine = engine
        self.requests = Requests(engine, template, compression)   # checks the configuration once, here
        self.template = self.requests.template
        self.tok = engine.tokenizer
        self._lock = threading.Lock()

    @_answer
    def Score(self, request: pb.ScoreRequest, context: grpc.ServicerContext) -> pb.ScoreResponse:
        job = self.requests.score(request)
        with self._lock:
            t0 = time.perf_counter()
            (label_lp,) = self.engine.score([job])
            seconds = time.perf_counter() - t0
        scores = item_scores(label_lp, job.normalization)
        return pb.ScoreResponse(
            scores=[pb.ItemScore(score=float(s), label_logprobs=[float(x) for x in row])
                    for s, row in zip(scores, label_lp, strict=True)],
            label_token_ids=job.label_ids, normalization=request.normalization or pb.LABELS,
            shared_tokens=len(job.shared_ids), item_tokens=[len(i) for i in job.item_ids],
            engine_seconds=seconds, tokens_saved=job.tokens_saved)

    @_answer
    def LogProbs(self, request: pb.LogProbsRequest, context: grpc.ServicerContext) -> pb.LogProbsResponse:
        job = self.requests.logprobs(request)
        with self._lock:
            (res,) = self.engine.logprobs([job])

        def tlp(t: int, lp: float) -> pb.TokenLogProb:
            return pb.TokenLogProb(token_id=t, token=self.tok.decode([t]), logprob=lp)

        return pb.LogProbsResponse(
            tokens=[pb.PositionLogProbs(token=tlp(t, lp), top=[tlp(a, b) for a, b in
                                                               (res.top[i] if res.top else [])])
                    for i, (t, lp) in enumerate(zip(job.continuation_ids, res.logprobs, strict=True))],
            total=float(sum(res.logprobs)), prompt_tokens=len(job.prompt_ids))

    @_answer
    def ModelInfo(self, request: pb.ModelInfoRequest, context: grpc.ServicerContext) -> pb.ModelInfoResponse:
        manifest = artifacts.read_manifest(self.engine.model_dir)
        return pb.ModelInfoResponse(
            model=str(self.engine.model_dir), engine=self.engine.name, dtype=self.engine.dtype,
            vocab_size=self.engine.vocab_size, template=self.template.text,
            chat_template=self.template.chat and bool(getattr(self.tok, "chat_template", None)),
            default_labels=list(DEFAULT_LABELS), default_label_token_ids=self.requests.default_label_ids,
            stage=str(manifest.get("stage") or ""), model_hash=str(manifest.get("hash") or ""),
            slimkit_version=metadata.version("slimkit"))


def check_address(address: str) -> None:
    """Fail at start, in one line, where `address` ("host:port") cannot be listened on: a bad port, a
    host that does not resolve, a port already in use (checked with a plain socket before grpc tries,
    whose own failure is a bare RuntimeError after a log line of its C core)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise SlimkitError(f"cannot listen on {address!r}: give host:port with a port in 0..65535")
    host, port = host.strip("[]") or "0.0.0.0", int(port_text)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise SlimkitError(f"cannot listen on {address}: {e.strerror}") from None
    if port == 0:
        return
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(sockaddr)
        except OSError as e:
            raise SlimkitError(f"cannot listen on {address}: {e.strerror}") from None


def make_server(engine: Engine, address: str = "127.0.0.1:0", *, template: PromptTemplate | None = None,
                workers: int = 8, compression=None) -> tuple[grpc.Server, int]:
    """Create and start a server for `engine` on `address` ("host:port"; port 0 picks a free one).
    Returns (server, port). Stop it with `server.stop(grace)`."""
    check_address(address)
    service = ScorerService(engine, template, compression)
    # so_reuseport off: a second server on a port in use is an error, not a silent share of the port.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scorer"),
                         options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                  ("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.so_reuseport", 0)])
    pb_grpc.add_ScorerServicer_to_server(service, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (pb.DESCRIPTOR.services_by_name["Scorer"].full_name, health.SERVICE_NAME,
             reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        server.stop(None)
        raise SlimkitError(f"cannot listen on {address}")
    server.start()
    for name in ("", SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port


def _is_port_file(path: Path) -> bool:
    return path.is_file() and path.read_text().strip().isdigit()


def serve(model_dir: str, *, engine: str = "torch", host: str = "127.0.0.1", port: int = 50051,
          template: PromptTemplate | None = None, workers: int = 8, port_file: str | None = None,
          compression=None, **engine_options) -> None:
    """Load the engine, serve until SIGINT/SIGTERM, then drain for up to 5 s and release the engine.
    `port_file` receives the bound port; an existing one is replaced only if it holds just a port
    number (an earlier server's), never a user's file."""
    import signal

    from slimkit.serve.engine import load_engine

    address = f"{host}:{port}"
    check_address(address)                          # before the (slow) engine load
    if port_file:
        artifacts.check_target(port_file, overwrite=True, is_own=_is_port_file)
    eng = load_engine(engine, model_dir, **engine_options)
    server, bound = make_server(eng, address, template=template, workers=workers, compression=compression)
    if port_file:
        artifacts.atomic_write_text(port_file, str(bound), overwrite=True, is_own=_is_port_file)
    log.warning("slimkit scorer: %s (engine %s, %s) on %s:%d", model_dir, eng.name, eng.dtype, host, bound)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(5).wait()
    eng.close()
