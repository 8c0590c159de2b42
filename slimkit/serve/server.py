"""The gRPC server: the Scorer service, gRPC health checking, server reflection, metrics, security.

Requests are validated and tokenized in the handler threads (`slimkit.serve.requests`, the one
validation layer, within the server's `Limits`); the scheduler (`slimkit.serve.scheduler`) batches
the checked jobs of concurrent requests into engine calls, drops those whose deadline passes, and
refuses work beyond its bounded queue.

Lifecycle: the server listens and answers health checks (NOT_SERVING) while the model loads; it
turns SERVING once the engine is attached; on drain it turns NOT_SERVING first, refuses new work
with UNAVAILABLE and answers every accepted request before it stops.

Every handler answers through `_answer`: a bad request (RequestError) with INVALID_ARGUMENT, a request
this server's configuration cannot serve (PreconditionError) with FAILED_PRECONDITION, a full queue
with RESOURCE_EXHAUSTED and a retry hint in the trailing metadata (`retry-after-ms`), a passed
deadline with DEADLINE_EXCEEDED, loading or draining with UNAVAILABLE, a bug with INTERNAL (its
traceback in the server's log); the server keeps serving. Misconfiguration that no request can fix
(a bad template, an address that cannot be bound, a missing certificate) stops the server at start.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
import os
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
from slimkit.serve.options import ServerOptions
from slimkit.serve.prompt import DEFAULT_LABELS, PromptTemplate
from slimkit.serve.requests import Requests
from slimkit.serve.scheduler import Cancelled, DeadlineExceeded, Draining, Overloaded, Scheduler

log = logging.getLogger("slimkit.serve")
SERVICE = "slimkit.v1.Scorer"
RETRY_AFTER = "retry-after-ms"          # trailing metadata of RESOURCE_EXHAUSTED: when to try again
_HEALTH_PREFIX = "/grpc.health.v1.Health/"
_NO_DEADLINE = 1e8                      # seconds: a longer time_remaining() means the call has no deadline


# -- answers --------------------------------------------------------------------------------------
_STATUS = [(RequestError, grpc.StatusCode.INVALID_ARGUMENT), (PreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
           (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED), (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
           (Draining, grpc.StatusCode.UNAVAILABLE), (Cancelled, grpc.StatusCode.CANCELLED)]


def _answer(handler):
    """Wrap a handler so that every error it meets becomes a named gRPC status (and a metric)."""
    @functools.wraps(handler)
    def wrapped(self: ScorerService, request, context: grpc.ServicerContext):
        t0 = time.perf_counter()
        code, message = grpc.StatusCode.OK, ""
        try:
            return handler(self, request, context)
        except Exception as e:
            code = next((c for kind, c in _STATUS if isinstance(e, kind)), grpc.StatusCode.INTERNAL)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("internal error in %s", handler.__name__)
                message = f"internal error in {handler.__name__} (see the server log)"
            else:
                log.info("%s in %s: %s", code.name, handler.__name__, e)
                message = str(e)
            if isinstance(e, Overloaded):
                context.set_trailing_metadata(((RETRY_AFTER, str(max(1, round(e.retry_after * 1000)))),))
            if self.metrics and isinstance(e, Overloaded | Draining):
                reason = "queue_full" if isinstance(e, Overloaded) else "loading" if self.engine is None else "draining"
                self.metrics.rejected.labels(reason).inc()
        finally:
            if self.metrics:
                self.metrics.requests.labels(handler.__name__, code.name).inc()
                self.metrics.latency.labels(handler.__name__).observe(time.perf_counter() - t0)
        context.abort(code, message)
    return wrapped


class ScorerService(pb_grpc.ScorerServicer):
    """The Scorer service; `attach` gives it its engine (until then it answers UNAVAILABLE)."""

    def __init__(self, options: ServerOptions, template: PromptTemplate | None = None, metrics=None) -> None:
        self.options, self.template, self.metrics = options, template, metrics
        self.engine: Engine | None = None
        self.scheduler: Scheduler | None = None

    def attach(self, engine: Engine) -> None:
        self.requests = Requests(engine, self.template, self.options.limits, self.options.compression)   # checks the configuration once
        self.template, self.tok = self.requests.template, engine.tokenizer
        self.scheduler = Scheduler(engine, self.options.scheduler, self.metrics)
        self.engine = engine

    def _run(self, kind: str, job, tokens: int, context: grpc.ServicerContext):
        """Queue the job, free its slot if the call goes away, wait for its result (or deadline)."""
        if self.scheduler is None:
            raise Draining("the model is still loading: retry shortly")
        left = context.time_remaining()                 # a call without a deadline: its "infinite future"
        ticket = self.scheduler.submit(kind, job, tokens, left if left is not None and left < _NO_DEADLINE else None)
        if not context.add_callback(lambda: self.scheduler.cancel(ticket)):
            self.scheduler.cancel(ticket)                   # the call ended already
        return self.scheduler.wait(ticket), ticket.timing

    @_answer
    def Score(self, request: pb.ScoreRequest, context: grpc.ServicerContext) -> pb.ScoreResponse:
        self._ready()
        with self.scheduler.arriving():                 # the scheduler waits for company only while some arrive
            job = self.requests.score(request)
        tokens = len(job.shared_ids) + sum(len(i) for i in job.item_ids)
        label_lp, timing = self._run("score", job, tokens, context)
        scores = item_scores(label_lp, job.normalization)
        return pb.ScoreResponse(
            scores=[pb.ItemScore(score=float(s), label_logprobs=[float(x) for x in row])
                    for s, row in zip(scores, label_lp, strict=True)],
            label_token_ids=job.label_ids, normalization=request.normalization or pb.LABELS,
            shared_tokens=len(job.shared_ids), item_tokens=[len(i) for i in job.item_ids],
            engine_seconds=timing.get("engine", 0.0), queue_seconds=timing.get("queue", 0.0),
            prefill_seconds=timing.get("prefill", 0.0), scoring_seconds=timing.get("scoring", 0.0),
            batch_requests=int(timing.get("batch_requests", 1)),
            tokens_saved=job.tokens_saved)

    @_answer
    def LogProbs(self, request: pb.LogProbsRequest, context: grpc.ServicerContext) -> pb.LogProbsResponse:
        self._ready()
        with self.scheduler.arriving():
            job = self.requests.logprobs(request)
        res, timing = self._run("logprobs", job, len(job.prompt_ids) + len(job.continuation_ids), context)

        def tlp(t: int, lp: float) -> pb.TokenLogProb:
            return pb.TokenLogProb(token_id=t, token=self.tok.decode([t]), logprob=lp)

        return pb.LogProbsResponse(
            tokens=[pb.PositionLogProbs(token=tlp(t, lp), top=[tlp(a, b) for a, b in
                                                               (res.top[i] if res.top else [])])
                    for i, (t, lp) in enumerate(zip(job.continuation_ids, res.logprobs, strict=True))],
            total=float(sum(res.logprobs)), prompt_tokens=len(job.prompt_ids),
            queue_seconds=timing.get("queue", 0.0), engine_seconds=timing.get("engine", 0.0))

    @_answer
    def ModelInfo(self, request: pb.ModelInfoRequest, context: grpc.ServicerContext) -> pb.ModelInfoResponse:
        self._ready()
        manifest = artifacts.read_manifest(self.engine.model_dir)
        return pb.ModelInfoResponse(
            model=str(self.engine.model_dir), engine=self.engine.name, dtype=self.engine.dtype,
            vocab_size=self.engine.vocab_size, template=self.template.text,
            chat_template=self.template.chat and bool(getattr(self.tok, "chat_template", None)),
            default_labels=list(DEFAULT_LABELS), default_label_token_ids=self.requests.default_label_ids,
            stage=str(manifest.get("stage") or ""), model_hash=str(manifest.get("hash") or ""),
            slimkit_version=metadata.version("slimkit"), process_id=os.getpid())

    def _ready(self) -> None:
        if self.engine is None:
            raise Draining("the model is still loading: retry shortly")


# -- security -------------------------------------------------------------------------------------
class _BearerToken(grpc.ServerInterceptor):
    """Every call but health checks carries `authorization: Bearer <token>`, else UNAUTHENTICATED."""

    def __init__(self, token: str) -> None:
        self._want = f"Bearer {token}".encode()

    def intercept_service(self, continuation, details):
        if details.method.startswith(_HEALTH_PREFIX):
            return continuation(details)
        got = dict(details.invocation_metadata).get("authorization", "")
        if hmac.compare_digest(got.encode() if isinstance(got, str) else got, self._want):
            return continuation(details)
        handler = continuation(details)

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token (authorization metadata)")

        if handler is None or not handler.request_streaming:
            return grpc.unary_unary_rpc_method_handler(deny)
        return grpc.stream_stream_rpc_method_handler(deny)


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise SlimkitError(f"{what} {p} does not exist")
    return p.read_bytes()


def read_token(path: str | None) -> str | None:
    """The bearer token in a file (its first line); None without a file."""
    data = _read(path, "token file")
    if data is None:
        return None
    token = data.decode().strip()
    if not token or "\n" in token:
        raise SlimkitError(f"token file {path} must hold one non-empty line")
    return token


def credentials(options: ServerOptions) -> grpc.ServerCredentials | None:
    """TLS credentials from the options (None: plaintext); mutual TLS with a client CA."""
    if (options.tls_cert is None) != (options.tls_key is None):
        raise SlimkitError("TLS needs both --tls-cert and --tls-key")
    if options.tls_cert is None:
        if options.tls_client_ca:
            raise SlimkitError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    ca = _read(options.tls_client_ca, "client CA file")
    return grpc.ssl_server_credentials([(_read(options.tls_key, "TLS key file"), _read(options.tls_cert, "TLS certificate file"))],
                                       root_certificates=ca, require_client_auth=ca is not None)


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def check_address(address: str, *, reuse_port: bool = False) -> None:
    """Fail at start, in one line, where `address` ("host:port") cannot be listened on: a bad port, a
    host that does not resolve, a port already in use (checked with a plain socket before grpc tries,
    whose own failure is a bare RuntimeError after a log line of its C core). With `reuse_port`, a
    port held by other SO_REUSEPORT sockets (other scorers) is fine."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise SlimkitError(f"cannot listen on {address!r}: give host:port with a port in 0..65535")
    host, port = host.strip("[]") or "0.0.0.0", int(port_text)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise SlimkitError(f"cannot listen on {address}: {e.strerror}") from None
    if port == 0:
        if reuse_port:
            raise SlimkitError("--reuse-port needs a fixed --port (the processes share it)")
        return
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            s.bind(sockaddr)
        except OSError as e:
            raise SlimkitError(f"cannot listen on {address}: {e.strerror}") from None


# -- the server -----------------------------------------------------------------------------------
class ScorerServer:
    """A started gRPC server (health NOT_SERVING until `attach`); `drain`, then `stop`."""

    def __init__(self, address: str, options: ServerOptions | None = None, *,
                 template: PromptTemplate | None = None) -> None:
        self.options = opts = options or ServerOptions()
        host = address.rpartition(":")[0]
        creds = credentials(opts)
        if creds is None and not is_loopback(host) and not opts.allow_insecure:
            raise SlimkitError(f"refusing to serve plaintext on {host or 'all interfaces'}: give --tls-cert and "
                               "--tls-key, or --allow-insecure to accept unencrypted traffic from other machines")
        check_address(address, reuse_port=opts.reuse_port)
        self.metrics = None
        if opts.metrics_port is not None:
            from slimkit.serve.metrics import Metrics

            self.metrics = Metrics()
        self.service = ScorerService(opts, template, self.metrics)
        cfg = opts.scheduler
        workers = opts.workers or cfg.max_queue_requests + cfg.max_batch_requests + 8
        # Beyond `workers` concurrent calls gRPC itself answers RESOURCE_EXHAUSTED: never an unbounded wait.
        size = opts.limits.max_message_bytes
        self.grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scorer"),
            interceptors=[_BearerToken(opts.auth_token)] if opts.auth_token else [],
            maximum_concurrent_rpcs=workers,
            # Up to 4x the limit reaches the handler, which names the size (INVALID_ARGUMENT); beyond, gRPC refuses.
            options=[("grpc.max_receive_message_length", 4 * size), ("grpc.max_send_message_length", 64 << 20),
                     ("grpc.so_reuseport", int(opts.reuse_port))])
        pb_grpc.add_ScorerServicer_to_server(self.service, self.grpc)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        names = (pb.DESCRIPTOR.services_by_name["Scorer"].full_name, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.grpc)
        try:
            self.port = self.grpc.add_secure_port(address, creds) if creds else self.grpc.add_insecure_port(address)
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            self.grpc.stop(None)
            raise SlimkitError(f"cannot listen on {address}")
        self._http = None
        self.metrics_port = None
        if self.metrics:
            self._http, self.metrics_port = self.metrics.serve(opts.metrics_host, opts.metrics_port)
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.grpc.start()
        self.security = ("TLS" + (" with client certificates" if opts.tls_client_ca else "") if creds else
                         "no TLS: plaintext, " + ("loopback only" if is_loopback(host) else
                                                  "reachable from other machines (--allow-insecure)"))
        self.security += ", bearer token required" if opts.auth_token else ""

    def _set_health(self, status) -> None:
        for name in ("", SERVICE):
            self.health.set(name, status)

    def attach(self, engine: Engine) -> None:
        """Serve `engine`: health turns SERVING."""
        self.service.attach(engine)
        self._set_health(health_pb2.HealthCheckResponse.SERVING)

    def drain(self, timeout: float | None = None) -> bool:
        """Health NOT_SERVING first, then refuse new work and answer every accepted request."""
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        sched = self.service.scheduler
        return sched.drain(timeout) if sched else True

    def stop(self, grace: float | None = None) -> threading.Event:
        """Stop the gRPC server (in-flight handlers get `grace` seconds), the scheduler and the exporter."""
        done = self.grpc.stop(grace)
        if self.service.scheduler:
            self.service.scheduler.close()
        if self._http:
            self._http.shutdown()
        return done


def make_server(engine: Engine, address: str = "127.0.0.1:0", *, template: PromptTemplate | None = None,
                options: ServerOptions | None = None, workers: int | None = None, compression=None) -> tuple[ScorerServer, int]:
    """Create and start a server for `engine` on `address` ("host:port"; port 0 picks a free one).
    Returns (server, port). Stop it with `server.stop(grace)`."""
    options = options or ServerOptions()
    if workers is not None:
        options.workers = workers
    if compression is not None:
        options.compression = compression
    server = ScorerServer(address, options, template=template)
    try:
        server.attach(engine)
    except BaseException:
        server.stop(None)
        raise
    return server, server.port


def _is_port_file(path: Path) -> bool:
    return path.is_file() and path.read_text().strip().isdigit()


def serve(model_dir: str, *, engine: str = "torch", host: str = "127.0.0.1", port: int = 50051,
          template: PromptTemplate | None = None, options: ServerOptions | None = None,
          port_file: str | None = None, drain_seconds: float = 30.0, **engine_options) -> None:
    """Listen (health NOT_SERVING), load the engine, serve until SIGINT/SIGTERM; then drain: health
    NOT_SERVING, new requests UNAVAILABLE, every accepted request answered (up to `drain_seconds`),
    and release the engine. `port_file` receives the bound port once serving; an existing one is
    replaced only if it holds just a port number (an earlier server's), never a user's file."""
    import signal

    from slimkit.serve.engine import load_engine

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if port_file:
        artifacts.check_target(port_file, overwrite=True, is_own=_is_port_file)
    server = ScorerServer(f"{host}:{port}", options, template=template)    # before the (slow) engine load
    eng = None
    try:
        eng = load_engine(engine, model_dir, **engine_options)
        if stop.is_set():                               # stopped while loading: never turn SERVING
            return
        server.attach(eng)
        if port_file:
            artifacts.atomic_write_text(port_file, str(server.port), overwrite=True, is_own=_is_port_file)
        metrics = f"; metrics on http://{server.options.metrics_host}:{server.metrics_port}/metrics" \
            if server.metrics_port else ""
        log.warning("slimkit scorer: %s (engine %s, %s) on %s:%d (%s)%s", model_dir, eng.name, eng.dtype, host,
                    server.port, server.security, metrics)
        stop.wait()
        log.warning("draining: health NOT_SERVING, answering the accepted requests")
        if not server.drain(drain_seconds):
            log.warning("drain: requests still queued after %.0f s; stopping anyway", drain_seconds)
    finally:
        server.stop(5).wait()
        if eng is not None:
            eng.close()
