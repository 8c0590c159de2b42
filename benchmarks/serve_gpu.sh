#!/usr/bin/env bash
# The scorer on a GPU, in a few minutes: the torch engine in bf16 on a random-init model of Qwen3-0.6B's
# shape (no download), 1 query (~300 tokens) x 10 items (~100 tokens) per request, open-loop load for
# cross-request batching and for one request at a time; the headline is items/s at p99 <= 500 ms.
# Results go to benchmarks/results/serve.{json,md,png} (rows keyed by device and shape).
#   bash benchmarks/serve_gpu.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
$PY benchmarks/serve.py --workload load --device cuda --max-batch 256 --seconds 10 --warmup 20 \
    --capacity-concurrency 64 --max-batch-tokens 65536 --p99-ms 500
