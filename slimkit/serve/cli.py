"""The `serve` command, defined once: `slimkit serve` registers it and `python -m slimkit.serve` runs it
on its own (see __main__.py). Each flag is defined here only; the defaults of the limits, the
scheduler and the server are those of `slimkit.serve.options`. Heavy imports happen when it runs, so that
`--help` is instant."""

from __future__ import annotations

import typer

from slimkit.errors import SlimkitError
from slimkit.serve import ENGINES
from slimkit.serve.options import Limits, SchedulerConfig, ServerOptions

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="markdown")
_L, _S = Limits(), SchedulerConfig()
_BATCH, _LIMITS, _SEC = "Batching and queue", "Request limits", "Security and operations"


@app.command("serve")
def serve_cmd(
    model_dir: str = typer.Argument(..., help="model directory (HF format; an ONNX export for onnxruntime)"),
    engine: str = typer.Option("torch", help=f"{' | '.join(ENGINES)} (vllm: run inside .venv-vllm)"),
    host: str = typer.Option("127.0.0.1", help="address to listen on; a non-loopback one needs TLS or --allow-insecure"),
    port: int = typer.Option(50051, min=0, max=65535, help="port; 0 picks a free one (see --port-file)"),
    port_file: str = typer.Option(None, help="write the bound port to this file once serving"),
    dtype: str = typer.Option(None, help="torch/vllm: float32 (default) | bfloat16 | float16; onnxruntime: the export's"),
    device: str = typer.Option(None, help="torch engine: cpu (default) | cuda | cuda:N"),
    max_batch: int = typer.Option(64, min=1, help="items per engine forward pass"),
    workers: int = typer.Option(None, min=1, help="gRPC handler threads (default: queue + batch requests + 8)"),
    template: str = typer.Option(None, help="user-prompt template with {query} and {item} (default: jobs)"),
    template_item_first: str = typer.Option(None, help="with --template: its item-first variant"),
    no_chat: bool = typer.Option(False, "--no-chat", help="do not wrap the template in the chat template"),
    max_batch_tokens: int = typer.Option(_S.max_batch_tokens, min=1, rich_help_panel=_BATCH,
                                         help="tokens per engine call, from several requests"),
    max_batch_requests: int = typer.Option(_S.max_batch_requests, min=1, rich_help_panel=_BATCH,
                                           help="requests per engine call; 1: one request at a time"),
    max_queue_delay_ms: float = typer.Option(_S.max_queue_delay * 1000, min=0, rich_help_panel=_BATCH,
                                             help="how long a request may wait for others to batch with"),
    max_queue_requests: int = typer.Option(_S.max_queue_requests, min=1, rich_help_panel=_BATCH,
                                           help="queued requests; beyond: RESOURCE_EXHAUSTED with retry-after-ms"),
    max_queue_tokens: int = typer.Option(_S.max_queue_tokens, min=1, rich_help_panel=_BATCH,
                                         help="queued tokens; beyond: RESOURCE_EXHAUSTED with retry-after-ms"),
    max_items: int = typer.Option(_L.max_items, min=1, rich_help_panel=_LIMITS, help="items per Score request"),
    max_item_tokens: int = typer.Option(_L.max_item_tokens, min=1, rich_help_panel=_LIMITS, help="tokens per item"),
    max_query_tokens: int = typer.Option(_L.max_query_tokens, min=1, rich_help_panel=_LIMITS,
                                         help="tokens per query (LogProbs: per prompt and continuation)"),
    max_message_bytes: int = typer.Option(_L.max_message_bytes, min=1024, rich_help_panel=_LIMITS,
                                          help="request size in bytes"),
    max_top_k: int = typer.Option(_L.max_top_k, min=0, rich_help_panel=_LIMITS, help="LogProbs top_k"),
    tls_cert: str = typer.Option(None, rich_help_panel=_SEC, help="server certificate chain (PEM)"),
    tls_key: str = typer.Option(None, rich_help_panel=_SEC, help="server private key (PEM)"),
    tls_client_ca: str = typer.Option(None, rich_help_panel=_SEC, help="CA of client certificates: mutual TLS"),
    auth_token_file: str = typer.Option(None, rich_help_panel=_SEC,
                                        help="file holding a bearer token every call must carry (health excepted)"),
    allow_insecure: bool = typer.Option(False, "--allow-insecure", rich_help_panel=_SEC,
                                        help="allow plaintext on a non-loopback --host"),
    reuse_port: bool = typer.Option(False, "--reuse-port", rich_help_panel=_SEC,
                                    help="share --port with other scorer processes (SO_REUSEPORT)"),
    metrics_port: int = typer.Option(None, min=0, max=65535, rich_help_panel=_SEC,
                                     help="serve Prometheus metrics on this port (/metrics)"),
    metrics_host: str = typer.Option("127.0.0.1", rich_help_panel=_SEC, help="address of the metrics port"),
    drain_seconds: float = typer.Option(30.0, min=0, rich_help_panel=_SEC,
                                        help="on SIGTERM: how long to answer accepted requests before stopping"),
    compress_items: float = typer.Option(None, help="compress each item to this fraction of its tokens before "
                                         "scoring, in (0, 1] (0.25 = 4x)"),
    compressor: str = typer.Option(None, help="with --compress-items: a compressor dir (a causal LM or a "
                                   "trained classifier; default: the served model)"),
    compress_with_query: bool = typer.Option(False, "--compress-with-query", help="with --compress-items: "
                                             "question-aware compression (keeps the query's terms)"),
) -> None:
    """Serve a model over gRPC (slimkit.v1.Scorer: Score, LogProbs, ModelInfo; health; reflection).

    Examples:

        slimkit serve toy:teacher --port 50051

        slimkit serve out/student --dtype bfloat16 --device cuda --metrics-port 9090

        slimkit serve out/student --host 0.0.0.0 --tls-cert cert.pem --tls-key key.pem --auth-token-file token

        .venv-vllm/bin/python -m slimkit.serve out/student --engine vllm --port 50052
    """
    import logging

    from slimkit.serve.prompt import PromptTemplate
    from slimkit.serve.server import read_token, serve

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    tpl = PromptTemplate.from_options(template, template_item_first, chat=not no_chat)
    if (compressor is not None or compress_with_query) and compress_items is None:
        raise SlimkitError("--compressor and --compress-with-query need --compress-items RATE")
    compression = None
    if compress_items is not None:
        from slimkit.serve.compression import ItemCompression

        compression = ItemCompression.load(compressor or model_dir, compress_items, with_query=compress_with_query)
    options = ServerOptions(
        limits=Limits(max_items, max_item_tokens, max_query_tokens, max_message_bytes, max_top_k),
        scheduler=SchedulerConfig(max_batch_tokens, max_batch_requests, max_queue_delay_ms / 1000,
                                  max_queue_requests, max_queue_tokens),
        workers=workers, tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_client_ca,
        auth_token=read_token(auth_token_file), allow_insecure=allow_insecure, reuse_port=reuse_port,
        metrics_port=metrics_port, metrics_host=metrics_host, compression=compression)
    serve(model_dir, engine=engine, host=host, port=port, template=tpl, options=options, port_file=port_file,
          drain_seconds=drain_seconds, dtype=dtype, device=device, max_batch=max_batch)
