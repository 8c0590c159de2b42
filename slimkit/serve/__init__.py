"""gRPC scoring: `scorer.proto` (slimkit.v1.Scorer), engines (torch, vllm, onnxruntime), server, client.

    slimkit serve MODEL_DIR --port 50051            # or: python -m slimkit.serve MODEL_DIR
    slimkit score --server 127.0.0.1:50051 --query "python developer" --items postings.txt

Heavy modules are imported lazily: `from slimkit.serve.client import ScorerClient` needs only grpc.
"""

# The engines `load_engine` builds, by name (here, so that the CLI lists them without importing one).
ENGINES = ("torch", "vllm", "onnxruntime")
