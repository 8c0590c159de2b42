"""The `serve` command, defined once: `slimkit serve` registers it and `python -m slimkit.serve` runs it
on its own (see __main__.py). Heavy imports happen when it runs, so that `--help` is instant."""

from __future__ import annotations

import typer

from slimkit.errors import SlimkitError
from slimkit.serve import ENGINES

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="markdown")


@app.command("serve")
def serve_cmd(
    model_dir: str = typer.Argument(..., help="model directory (HF format; an ONNX export for onnxruntime)"),
    engine: str = typer.Option("torch", help=f"{' | '.join(ENGINES)} (vllm: run inside .venv-vllm)"),
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(50051, min=0, max=65535, help="port; 0 picks a free one (see --port-file)"),
    port_file: str = typer.Option(None, help="write the bound port to this file once serving"),
    dtype: str = typer.Option(None, help="torch/vllm: float32 (default) | bfloat16 | float16; onnxruntime: the export's"),
    device: str = typer.Option(None, help="torch engine: cpu (default) | cuda | cuda:N"),
    max_batch: int = typer.Option(64, min=1, help="items per engine batch"),
    workers: int = typer.Option(8, min=1, help="gRPC handler threads"),
    template: str = typer.Option(None, help="user-prompt template with {query} and {item} (default: jobs)"),
    template_item_first: str = typer.Option(None, help="with --template: its item-first variant"),
    no_chat: bool = typer.Option(False, "--no-chat", help="do not wrap the template in the chat template"),
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

        slimkit serve out/student --dtype bfloat16 --device cuda

        .venv-vllm/bin/python -m slimkit.serve out/student --engine vllm --port 50052
    """
    import logging

    from slimkit.serve.prompt import PromptTemplate
    from slimkit.serve.server import serve

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    tpl = PromptTemplate.from_options(template, template_item_first, chat=not no_chat)
    if (compressor is not None or compress_with_query) and compress_items is None:
        raise SlimkitError("--compressor and --compress-with-query need --compress-items RATE")
    compression = None
    if compress_items is not None:
        from slimkit.serve.compression import ItemCompression

        compression = ItemCompression.load(compressor or model_dir, compress_items, with_query=compress_with_query)
    serve(model_dir, engine=engine, host=host, port=port, template=tpl, workers=workers,
          port_file=port_file, dtype=dtype, device=device, max_batch=max_batch, compression=compression)
