"""Prometheus metrics of one scorer, in its own registry, served on a separate port (`--metrics-port`).

    slimkit_requests_total{method,code}      answered requests by gRPC status
    slimkit_items_total, slimkit_tokens_total  scored items, tokens computed
    slimkit_request_seconds{method}          latency in the handler (histogram)
    slimkit_queue_seconds                    time from submit to the engine call (histogram)
    slimkit_batch_requests, slimkit_batch_tokens  requests and tokens per engine call (histograms)
    slimkit_engine_seconds                   engine call time (histogram)
    slimkit_rejected_total{reason}           queue_full | draining | loading
    slimkit_deadline_dropped_total           jobs dropped before compute because their deadline passed
    slimkit_queue_requests, slimkit_queue_tokens  queued now (gauges)
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TOKENS = (64, 256, 1024, 4096, 16384, 65536, 262144)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("slimkit_requests", "answered requests", ["method", "code"], registry=r)
        self.items = Counter("slimkit_items", "scored items", registry=r)
        self.tokens = Counter("slimkit_tokens", "tokens computed by the engine", registry=r)
        self.latency = Histogram("slimkit_request_seconds", "request latency in the server", ["method"],
                                 buckets=_SECONDS, registry=r)
        self.queue_seconds = Histogram("slimkit_queue_seconds", "time queued before the engine call",
                                       buckets=_SECONDS, registry=r)
        self.batch_requests = Histogram("slimkit_batch_requests", "requests per engine call", buckets=_COUNTS,
                                        registry=r)
        self.batch_tokens = Histogram("slimkit_batch_tokens", "tokens per engine call", buckets=_TOKENS, registry=r)
        self.engine_seconds = Histogram("slimkit_engine_seconds", "engine call time", buckets=_SECONDS, registry=r)
        self.rejected = Counter("slimkit_rejected", "requests refused before queueing", ["reason"], registry=r)
        self.deadline_dropped = Counter("slimkit_deadline_dropped", "jobs dropped unrun: deadline passed",
                                        registry=r)
        self.queue_requests = Gauge("slimkit_queue_requests", "requests queued", registry=r)
        self.queue_tokens = Gauge("slimkit_queue_tokens", "tokens queued", registry=r)

    def batch(self, tickets, tokens: int) -> None:
        """One engine call's figures (called by the scheduler)."""
        self.batch_requests.observe(len(tickets))
        self.batch_tokens.observe(tokens)
        self.tokens.inc(tokens)
        self.engine_seconds.observe(tickets[0].timing.get("engine", 0.0))
        for t in tickets:
            self.queue_seconds.observe(t.timing.get("queue", 0.0))
            if t.kind == "score":
                self.items.inc(len(t.job.item_ids))

    def serve(self, host: str, port: int):
        """Start the HTTP exporter; returns (http server, its port)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server, server.server_address[1]
