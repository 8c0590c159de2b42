"""Python client for the slimkit scorer, sync and async.

    from slimkit.serve.client import ScorerClient
    with ScorerClient("127.0.0.1:50051") as c:
        res = c.score("python developer in berlin", ["posting 1", "posting 2"])
        res.scores               # [P(yes) per item]
        res.label_logprobs       # [[log P(yes), log P(no)] per item]

    async with AsyncScorerClient(addr) as c:
        res = await c.score(query, items, normalization="vocab")

Server-side errors surface as `ScorerError` (a SlimkitError) carrying the gRPC status code (and, for
RESOURCE_EXHAUSTED, the server's `retry_after` hint in seconds).

`address` is "host:port", or several joined by commas ("10.0.0.1:50051,10.0.0.2:50051"): the
channel balances calls over every address round-robin (gRPC's own client-side load balancing; a DNS
name that resolves to several addresses is balanced the same way). TLS: `tls_ca` (the server's CA,
PEM path; "system" for the system roots), `tls_cert`/`tls_key` for mutual TLS; `token`: the bearer
token of a server started with --auth-token-file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

from slimkit.errors import SlimkitError
from slimkit.serve._proto import scorer_pb2 as pb
from slimkit.serve._proto import scorer_pb2_grpc as pb_grpc

_NORMS = {"labels": pb.LABELS, "vocab": pb.VOCAB, "logit_diff": pb.LOGIT_DIFF}
_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20),
            ("grpc.lb_policy_name", "round_robin")]


class ScorerError(SlimkitError):
    def __init__(self, code: grpc.StatusCode, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code, self.details, self.retry_after = code, message, retry_after


@dataclass
class ScoreResult:
    scores: list[float]
    label_logprobs: list[list[float]]
    label_token_ids: list[int]
    shared_tokens: int
    item_tokens: list[int]
    engine_seconds: float
    queue_seconds: float = 0.0
    prefill_seconds: float = 0.0
    scoring_seconds: float = 0.0
    batch_requests: int = 1
    tokens_saved: int = 0                # item tokens the server's compression removed (--compress-items)


@dataclass
class TokenLogProb:
    token_id: int
    token: str
    logprob: float


@dataclass
class LogProbsResult:
    tokens: list[TokenLogProb]
    top: list[list[TokenLogProb]] = field(default_factory=list)
    total: float = 0.0
    prompt_tokens: int = 0


def _score_request(query: str, items: list[str], labels: list[str] | list[int] | None, normalization: str,
                   item_first: bool) -> pb.ScoreRequest:
    if normalization not in _NORMS:
        raise SlimkitError(f"unknown normalization {normalization!r}; choose one of {', '.join(_NORMS)}")
    labels = list(labels or [])
    ids = [int(x) for x in labels if isinstance(x, int)]
    strs = [x for x in labels if isinstance(x, str)]
    return pb.ScoreRequest(query=query, items=list(items), labels=strs, label_token_ids=ids,
                           normalization=_NORMS[normalization], item_first=item_first)


def _score_result(r: pb.ScoreResponse) -> ScoreResult:
    return ScoreResult([s.score for s in r.scores], [list(s.label_logprobs) for s in r.scores],
                       list(r.label_token_ids), r.shared_tokens, list(r.item_tokens), r.engine_seconds,
                       r.queue_seconds, r.prefill_seconds, r.scoring_seconds, r.batch_requests,
                       r.tokens_saved)


def _tlp(t: pb.TokenLogProb) -> TokenLogProb:
    return TokenLogProb(t.token_id, t.token, t.logprob)


def _logprobs_result(r: pb.LogProbsResponse) -> LogProbsResult:
    return LogProbsResult([_tlp(p.token) for p in r.tokens], [[_tlp(t) for t in p.top] for p in r.tokens],
                          r.total, r.prompt_tokens)


def _error(e: grpc.RpcError) -> ScorerError:
    trailing = dict(e.trailing_metadata() or ()) if hasattr(e, "trailing_metadata") else {}
    hint = trailing.get("retry-after-ms")
    return ScorerError(e.code(), e.details() or "", float(hint) / 1000 if hint else None)


def target(address: str | list[str]) -> str:
    """The gRPC target of one address or several (comma-separated or a list): "ipv4:a,b" / "ipv6:[a],[b]"."""
    parts = [a.strip() for a in (address.split(",") if isinstance(address, str) else address) if a.strip()]
    if len(parts) == 1:
        return parts[0]
    scheme = "ipv6" if all(p.startswith("[") for p in parts) else "ipv4"
    return f"{scheme}:{','.join(parts)}"


def _credentials(tls_ca: str | None, tls_cert: str | None, tls_key: str | None) -> grpc.ChannelCredentials | None:
    if tls_ca is None and tls_cert is None:
        return None
    from pathlib import Path

    def read(p):
        return None if p is None or p == "system" else Path(p).read_bytes()

    return grpc.ssl_channel_credentials(read(tls_ca), read(tls_key), read(tls_cert))


def _channel(grpc_mod, address, tls_ca, tls_cert, tls_key):
    creds = _credentials(tls_ca, tls_cert, tls_key)
    if creds is None:
        return grpc_mod.insecure_channel(target(address), options=_OPTIONS)
    return grpc_mod.secure_channel(target(address), creds, options=_OPTIONS)


class ScorerClient:
    """Blocking client. `address`: "host:port" or several (see above); `timeout`: the per-call deadline
    in seconds."""

    def __init__(self, address: str | list[str], *, timeout: float | None = 60.0, tls_ca: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None, token: str | None = None) -> None:
        self.address, self.timeout = address, timeout
        self.channel = _channel(grpc, address, tls_ca, tls_cert, tls_key)
        self.stub = pb_grpc.ScorerStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None

    def wait_ready(self, timeout: float = 30.0) -> None:
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise ScorerError(grpc.StatusCode.UNAVAILABLE, f"no server at {self.address}") from None

    def score(self, query: str, items: list[str], *, labels: list[str] | list[int] | None = None,
              normalization: str = "labels", item_first: bool = False) -> ScoreResult:
        try:
            r = self.stub.Score(_score_request(query, items, labels, normalization, item_first),
                                timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as e:
            raise _error(e) from None
        return _score_result(r)

    def logprobs(self, prompt: str, continuation: str, *, top_k: int = 0) -> LogProbsResult:
        try:
            r = self.stub.LogProbs(pb.LogProbsRequest(prompt=prompt, continuation=continuation, top_k=top_k),
                                   timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as e:
            raise _error(e) from None
        return _logprobs_result(r)

    def model_info(self) -> pb.ModelInfoResponse:
        try:
            return self.stub.ModelInfo(pb.ModelInfoRequest(), timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as e:
            raise _error(e) from None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> ScorerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncScorerClient:
    """asyncio client with the same methods as ScorerClient (awaitable)."""

    def __init__(self, address: str | list[str], *, timeout: float | None = 60.0, tls_ca: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None, token: str | None = None) -> None:
        self.address, self.timeout = address, timeout
        self.channel = _channel(grpc.aio, address, tls_ca, tls_cert, tls_key)
        self.stub = pb_grpc.ScorerStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None

    async def score(self, query: str, items: list[str], *, labels: list[str] | list[int] | None = None,
                    normalization: str = "labels", item_first: bool = False) -> ScoreResult:
        try:
            r = await self.stub.Score(_score_request(query, items, labels, normalization, item_first),
                                      timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as e:
            raise _error(e) from None
        return _score_result(r)

    async def logprobs(self, prompt: str, continuation: str, *, top_k: int = 0) -> LogProbsResult:
        try:
            r = await self.stub.LogProbs(pb.LogProbsRequest(prompt=prompt, continuation=continuation,
                                                            top_k=top_k), timeout=self.timeout,
                                         metadata=self.metadata)
        except grpc.RpcError as e:
            raise _error(e) from None
        return _logprobs_result(r)

    async def model_info(self) -> pb.ModelInfoResponse:
        try:
            return await self.stub.ModelInfo(pb.ModelInfoRequest(), timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as e:
            raise _error(e) from None

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncScorerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def read_items(path: str) -> list[str]:
    """Items from a file: one per line (blank lines skipped), or JSONL of strings / {"item": ...};
    '-' reads stdin."""
    import json
    import sys
    from pathlib import Path

    if path == "-":
        text = sys.stdin.read()
    else:
        p = Path(path)
        if not p.is_file():
            raise SlimkitError(f"items file {p} does not exist")
        text = p.read_text()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if path.endswith(".jsonl"):
        out = []
        for n, ln in enumerate(lines, 1):
            try:
                obj = json.loads(ln)
            except json.JSONDecodeError as e:
                raise SlimkitError(f"{path}:{n}: not JSON: {e}") from None
            if isinstance(obj, dict) and isinstance(obj.get("item"), str):
                obj = obj["item"]
            if not isinstance(obj, str):
                raise SlimkitError(f'{path}:{n}: expected a string or {{"item": "..."}}')
            out.append(obj)
        lines = out
    if not lines:
        raise SlimkitError(f"no items in {path}")
    return lines
