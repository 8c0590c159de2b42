"""A pruned model served by vLLM's CPU backend agrees with transformers (runs only where vllm imports,
i.e. from .venv-vllm, which `make test` does): .venv-vllm/bin/python -m pytest tests/prune/test_prune_vllm.py
One engine for the module (start-up takes tens of seconds here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("vllm")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pruned(parent, tmp_path_factory):
    from slimkit.compress.prune import prune

    out = tmp_path_factory.mktemp("vllm") / "pruned"
    prune(str(parent), out, hidden=96, heads=2, mlp=128, layers=2, calib_n=8)   # hidden != heads x head_dim
    return out


@pytest.fixture(scope="module")
def engine(pruned):
    from slimkit.serve.vllm_engine import VllmEngine

    eng = VllmEngine(pruned, kv_cache_gb=1)
    yield eng
    eng.close()


def test_vllm_serves_the_pruned_model_like_transformers(pruned, engine):
    from transformers import AutoModelForCausalLM

    from slimkit.serve.engine import LogProbsJob

    cfg = engine.llm.llm_engine.model_config.hf_config
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size,
            cfg.num_hidden_layers) == (96, 2, 1, 128, 2)
    tok = engine.tokenizer
    prompt = tok("Query:\npython developer in Berlin", add_special_tokens=False).input_ids
    cont = tok(" yes, a match", add_special_tokens=False).input_ids
    (got,) = engine.logprobs([LogProbsJob(prompt, cont, top_k=3)])
    model = AutoModelForCausalLM.from_pretrained(pruned, dtype=torch.float32).eval()
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([prompt + cont])).logits[0].float(), -1)
    ref = [float(lp[len(prompt) + i - 1, t]) for i, t in enumerate(cont)]
    np.testing.assert_allclose(got.logprobs, ref, atol=1e-3)
