"""`python -m slimkit.serve MODEL_DIR [--engine torch|vllm|onnxruntime] [--port N]`: run the scorer.

The same as `slimkit serve`, without the CLI's dependencies; this is how the vllm engine is started
from its own environment (`.venv-vllm/bin/python -m slimkit.serve ... --engine vllm`). vLLM spawns
worker processes, hence the `__main__` guard.
"""

from __future__ import annotations

import argparse
import logging


def main() -> None:
    from slimkit.serve.prompt import PromptTemplate
    from slimkit.serve.server import serve

    ap = argparse.ArgumentParser(prog="python -m slimkit.serve", description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--engine", default="torch", choices=["torch", "vllm", "onnxruntime"])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=50051, help="0 picks a free port (see --port-file)")
    ap.add_argument("--port-file", help="write the bound port here once serving")
    ap.add_argument("--dtype", help="torch/vllm: float32 (default), bfloat16, float16; onnxruntime: the export's")
    ap.add_argument("--device", help="torch engine: cpu (default), cuda or cuda:N")
    ap.add_argument("--max-batch", type=int, default=64, help="items per engine batch")
    ap.add_argument("--workers", type=int, default=8, help="gRPC handler threads")
    ap.add_argument("--template", help="user-prompt template with {query} and {item}")
    ap.add_argument("--template-item-first", help="with --template: its item-first variant")
    ap.add_argument("--no-chat", action="store_true", help="do not wrap the template in the chat template")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    tpl = PromptTemplate.from_options(args.template, args.template_item_first, chat=not args.no_chat)
    serve(args.model_dir, engine=args.engine, host=args.host, port=args.port, template=tpl,
          workers=args.workers, port_file=args.port_file, dtype=args.dtype, device=args.device,
          max_batch=args.max_batch)


if __name__ == "__main__":
    import sys

    from slimkit.errors import SlimkitError
    try:
        main()
    except SlimkitError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
