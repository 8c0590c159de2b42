"""The gRPC server: the Scorer service, gRPC health checking and server reflection.

Requests are validated and tokenized in the handler threads; engine calls are serialized by a lock
(one request's items are batched inside the engine). Engines take lists of jobs, so a later
cross-request batcher can sit between the handlers and the engine without changing either.
Bad input (RequestError) is answered with INVALID_ARGUMENT and its message; the server keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures
from importlib import metadata

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from slimkit import artifacts
from slimkit.serve._proto import scorer_pb2 as pb
from slimkit.serve._proto import scorer_pb2_grpc as pb_grpc
from slimkit.serve.engine import Engine, LogProbsJob, check_score_job, item_scores
from slimkit.serve.prompt import (
    DEFAULT_LABELS,
    PromptTemplate,
    RequestError,
    encode,
    label_token_ids,
    make_job,
)

log = logging.getLogger("slimkit.serve")
SERVICE = "slimkit.v1.Scorer"
NORMS = {pb.NORMALIZATION_UNSPECIFIED: "labels", pb.LABELS: "labels", pb.VOCAB: "vocab",
         pb.LOGIT_DIFF: "logit_diff"}
MAX_MESSAGE = 64 << 20


class ScorerService(pb_grpc.ScorerServicer):
    def __init__(self, engine: Engine, template: PromptTemplate | None = None) -> None:
        self.engine = engine
        self.template = template or PromptTemplate()
        self.tok = engine.tokenizer
        self._lock = threading.Lock()
        self.template.split(self.tok, "q", "i")            # a bad template fails here, not per request
        if self.template.item_first_text is not None:
            self.template.split(self.tok, "q", "i", item_first=True)

    def _abort_bad(self, context: grpc.ServicerContext, e: RequestError):
        log.info("invalid request: %s", e)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

    def Score(self, request: pb.ScoreRequest, context: grpc.ServicerContext) -> pb.ScoreResponse:
        if request.normalization not in NORMS:
            self._abort_bad(context, RequestError(f"unknown normalization value {request.normalization}"))
        norm = NORMS[request.normalization]
        try:
            job = make_job(self.tok, self.template, request.query, list(request.items),
                           labels=list(request.labels), label_ids=list(request.label_token_ids),
                           normalization=norm, item_first=request.item_first,
                           vocab_size=self.engine.vocab_size)
            check_score_job(job, self.engine)
        except RequestError as e:
            self._abort_bad(context, e)
        try:
            with self._lock:
                t0 = time.perf_counter()
                (label_lp,) = self.engine.score([job])
                seconds = time.perf_counter() - t0
        except RequestError as e:
            self._abort_bad(context, e)
        scores = item_scores(label_lp, norm)
        return pb.ScoreResponse(
            scores=[pb.ItemScore(score=float(s), label_logprobs=[float(x) for x in row])
                    for s, row in zip(scores, label_lp, strict=True)],
            label_token_ids=job.label_ids, normalization=request.normalization or pb.LABELS,
            shared_tokens=len(job.shared_ids), item_tokens=[len(i) for i in job.item_ids],
            engine_seconds=seconds)

    def LogProbs(self, request: pb.LogProbsRequest, context: grpc.ServicerContext) -> pb.LogProbsResponse:
        job = LogProbsJob(encode(self.tok, request.prompt), encode(self.tok, request.continuation),
                          request.top_k)
        try:
            with self._lock:
                (res,) = self.engine.logprobs([job])
        except RequestError as e:
            self._abort_bad(context, e)

        def tlp(t: int, lp: float) -> pb.TokenLogProb:
            return pb.TokenLogProb(token_id=t, token=self.tok.decode([t]), logprob=lp)

        return pb.LogProbsResponse(
            tokens=[pb.PositionLogProbs(token=tlp(t, lp), top=[tlp(a, b) for a, b in
                                                               (res.top[i] if res.top else [])])
                    for i, (t, lp) in enumerate(zip(job.continuation_ids, res.logprobs, strict=True))],
            total=float(sum(res.logprobs)), prompt_tokens=len(job.prompt_ids))

    def ModelInfo(self, request: pb.ModelInfoRequest, context: grpc.ServicerContext) -> pb.ModelInfoResponse:
        manifest = artifacts.read_manifest(self.engine.model_dir)
        labels = label_token_ids(self.tok, None, None, self.engine.vocab_size)
        return pb.ModelInfoResponse(
            model=str(self.engine.model_dir), engine=self.engine.name, dtype=self.engine.dtype,
            vocab_size=self.engine.vocab_size, template=self.template.text,
            chat_template=self.template.chat and bool(getattr(self.tok, "chat_template", None)),
            default_labels=list(DEFAULT_LABELS), default_label_token_ids=labels,
            stage=str(manifest.get("stage") or ""), model_hash=str(manifest.get("hash") or ""),
            slimkit_version=metadata.version("slimkit"))


def make_server(engine: Engine, address: str = "127.0.0.1:0", *, template: PromptTemplate | None = None,
                workers: int = 8) -> tuple[grpc.Server, int]:
    """Create and start a server for `engine` on `address` ("host:port"; port 0 picks a free one).
    Returns (server, port). Stop it with `server.stop(grace)`."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scorer"),
                         options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                  ("grpc.max_send_message_length", MAX_MESSAGE)])
    pb_grpc.add_ScorerServicer_to_server(ScorerService(engine, template), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (pb.DESCRIPTOR.services_by_name["Scorer"].full_name, health.SERVICE_NAME,
             reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    server.start()
    for name in ("", SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port


def serve(model_dir: str, *, engine: str = "torch", host: str = "127.0.0.1", port: int = 50051,
          template: PromptTemplate | None = None, workers: int = 8, port_file: str | None = None,
          **engine_options) -> None:
    """Load the engine, serve until SIGINT/SIGTERM, then drain for up to 5 s and release the engine."""
    import signal

    from slimkit.serve.engine import load_engine

    eng = load_engine(engine, model_dir, **engine_options)
    server, bound = make_server(eng, f"{host}:{port}", template=template, workers=workers)
    if port_file:
        from pathlib import Path
        tmp = Path(port_file).with_suffix(".tmp")
        tmp.write_text(str(bound))
        tmp.replace(port_file)
    log.warning("slimkit scorer: %s (engine %s, %s) on %s:%d", model_dir, eng.name, eng.dtype, host, bound)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(5).wait()
    eng.close()
