"""The scorer's configuration, in one place: request limits, the scheduler's batching and queue, and
how the server listens. `slimkit serve` (serve/cli.py) maps one flag to each field; the defaults are
these. Light to import (the CLI's --help reads it)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Limits:
    """What one request may ask of the server (`slimkit serve --max-...`)."""
    max_items: int = 1024                # items per Score request
    max_item_tokens: int = 2048          # tokens per item (its part after the shared prefix)
    max_query_tokens: int = 4096         # tokens of the query; of LogProbs' prompt and continuation each
    max_message_bytes: int = 4 << 20     # serialized request size
    max_top_k: int = 20                  # LogProbs alternatives per position


@dataclass
class SchedulerConfig:
    """Cross-request batching and the bounded queue (`slimkit.serve.scheduler`)."""
    max_batch_tokens: int = 16384       # tokens per engine call (a single larger job still runs alone)
    max_batch_requests: int = 64        # requests per engine call; 1: one request at a time
    max_queue_delay: float = 0.005      # seconds the oldest queued job waits for more on their way in
    max_queue_requests: int = 256       # queued requests beyond which new ones are refused
    max_queue_tokens: int = 262144      # queued tokens beyond which new jobs are refused


@dataclass
class ServerOptions:
    """How a scorer listens and what it accepts."""
    limits: Limits = field(default_factory=Limits)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    workers: int | None = None          # handler threads; None: enough for a full queue and batch
    tls_cert: str | None = None         # server certificate chain (PEM)
    tls_key: str | None = None          # its private key (PEM)
    tls_client_ca: str | None = None    # CA of client certificates: mutual TLS
    auth_token: str | None = None       # bearer token every call but health checks must carry
    allow_insecure: bool = False        # plaintext on a non-loopback address
    reuse_port: bool = False            # share the port with other scorer processes (SO_REUSEPORT)
    metrics_port: int | None = None     # Prometheus exporter port (None: off; 0: a free one)
    metrics_host: str = "127.0.0.1"
    compression: object | None = None   # --compress-items: a slimkit.serve.compression.ItemCompression
