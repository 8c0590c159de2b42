"""The round trip to serving: the toy teacher quantized to w8a8 in .venv-quant, served by vLLM's CPU
backend from .venv-vllm through slimkit's scorer (a real gRPC port), scores like the fp32 teacher.
One vLLM server for the module (start-up takes tens of seconds here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from slimkit.compress.quantize import ENVS, ROOT, quantize
from slimkit.serve.client import ScorerClient

VLLM_PY = ROOT / ".venv-vllm/bin/python"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (ROOT / ENVS["llm-compressor"] / "bin/python").exists(),
                       reason="no .venv-quant: run `make .venv-quant/.installed`"),
    pytest.mark.skipif(not VLLM_PY.exists(), reason="no .venv-vllm: run `make .venv-vllm/.installed`"),
]
sys.path.insert(0, str(Path(__file__).parents[1] / "serve"))    # the scorer tests' server helpers
from serve_data import start_server, stop_server  # noqa: E402

N = 32


@pytest.fixture(scope="module")
def w8a8(tmp_path_factory):
    return quantize("toy:teacher", "w8a8", tmp_path_factory.mktemp("w8a8") / "teacher-w8a8", n=64)


@pytest.fixture(scope="module")
def vllm_client(w8a8, tmp_path_factory):
    proc, addr = start_server([str(VLLM_PY), "-m", "slimkit.serve"], w8a8, "vllm", tmp_path_factory.mktemp("vllm"),
                              env={"VLLM_CPU_KVCACHE_SPACE": "1"})
    with ScorerClient(addr, timeout=300) as c:
        yield c
    stop_server(proc)


def test_w8a8_directory(w8a8):
    manifest = json.loads((w8a8 / "slimkit.json").read_text())
    assert manifest["stage"] == "quantize" and manifest["recipe"]["scheme"] == "w8a8"
    assert manifest["quantizer_versions"]["llmcompressor"].startswith("0.14")
    qcfg = json.loads((w8a8 / "config.json").read_text())["quantization_config"]
    assert qcfg["quant_method"] == "compressed-tensors" and qcfg["ignore"] == ["lm_head"]
    weights = qcfg["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["type"]) == (8, "int")
    assert (w8a8 / "tokenizer.json").read_bytes() == (ROOT / "slimkit/toy/world/teacher/tokenizer.json").read_bytes()


def test_vllm_serves_w8a8_like_fp32(vllm_client):
    from slimkit import toy
    from slimkit.serve.prompt import PromptTemplate
    from slimkit.serve.requests import make_job
    from slimkit.serve.torch_engine import TorchEngine
    from slimkit.tasks import get_task
    from slimkit.tasks.eval import auc

    assert vllm_client.model_info().engine == "vllm"
    fp32 = TorchEngine(toy.resolve("toy:teacher"))
    examples = get_task("jobs").split("test", N)
    served, want = [], []
    for ex in examples:
        q, item = ex.meta["query"], ex.meta["posting"]
        served.append(vllm_client.score(q, [item]).scores[0])
        job = make_job(fp32.tokenizer, PromptTemplate(), q, [item], normalization="labels",
                       vocab_size=fp32.vocab_size)
        want.append(float(np.exp(fp32.score([job])[0][0, 0])))
    diff = np.abs(np.array(served) - np.array(want))
    print(f"w8a8 on vLLM vs fp32: max |dP(yes)| {diff.max():.4f}, mean {diff.mean():.4f}")
    labels = [ex.meta["label"] for ex in examples]
    assert abs(auc(served, labels) - auc(want, labels)) <= 0.005
    assert diff.max() < 0.05 and diff.mean() < 0.005      # measured: 0.009 and 0.0002 (48 examples)
    assert diff.max() > 0                              # really quantized: not the fp32 model


def test_w4a16_on_a_cpu_without_its_kernel_is_one_clear_error_at_start(tmp_path):
    """vLLM-CPU serves int4 weights only with its AVX-512 kernels; elsewhere the server must refuse at
    start (it used to load and fail every request with INTERNAL)."""
    w4 = quantize("toy:teacher", "w4a16", tmp_path / "teacher-w4a16", n=32)
    if torch.cpu._is_avx512_supported():  # the kernel exists: it is served
        proc, addr = start_server([str(VLLM_PY), "-m", "slimkit.serve"], w4, "vllm", tmp_path,
                                  env={"VLLM_CPU_KVCACHE_SPACE": "1"}, args=("--dtype", "bfloat16"))
        try:
            with ScorerClient(addr, timeout=300) as c:
                assert 0 < c.score("nurse in Lisbon", ["Nurse, Lisbon clinic"]).scores[0] < 1
        finally:
            stop_server(proc)
        return
    r = subprocess.run([str(VLLM_PY), "-m", "slimkit.serve", str(w4), "--engine", "vllm", "--dtype", "bfloat16",
                        "--port", "0"], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: {w4} has int4 weights with 16-bit activations (w4a16), and vLLM's CPU kernels for this CPU (no "
        "AVX-512) have no int4 weight GEMM: serve it with vLLM on a GPU or an AVX-512 CPU, or quantize to w8a8 or "
        "onnx-int8 for this machine")
