"""The engine interface: every engine scores tokenized requests (`ScoreJob`s) and continuation
log-probabilities, in lists, so that a batcher can hand it several requests at once.

Engines return *label log-probabilities* per item: for `labels` normalization normalized over the label
tokens, for `vocab` and `logit_diff` over the full vocabulary. `item_scores` turns them into the
per-item score of the protocol. Engines that only see vocabulary log-probabilities (vLLM) convert
with `from_vocab`: log-softmax over the labels of log P(label) equals log-softmax over their logits.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.errors import SlimkitError
from slimkit.serve import ENGINES
from slimkit.serve.prompt import ScoreJob


@dataclass
class LogProbsJob:
    prompt_ids: list[int]
    continuation_ids: list[int]
    top_k: int = 0


@dataclass
class LogProbsResult:
    logprobs: list[float]                                    # one per continuation token
    top: list[list[tuple[int, float]]] = field(default_factory=list)  # per position, best first


def from_vocab(vocab_logprobs: np.ndarray, normalization: str) -> np.ndarray:
    """Label log-probabilities for `normalization` from log P(label) over the vocabulary [n, K]."""
    lp = np.asarray(vocab_logprobs, dtype=np.float64)
    if normalization == "labels":
        m = lp.max(axis=1, keepdims=True)
        return lp - (m + np.log(np.exp(lp - m).sum(axis=1, keepdims=True)))
    return lp


def item_scores(label_logprobs: np.ndarray, normalization: str) -> np.ndarray:
    """The per-item score: P(label 0) for labels/vocab, logit(label 0) - logit(label 1) for logit_diff."""
    lp = np.asarray(label_logprobs, dtype=np.float64)
    if normalization == "logit_diff":
        return lp[:, 0] - lp[:, 1]
    return np.exp(lp[:, 0])


class Engine(abc.ABC):
    """Holds a model and its tokenizer. Not thread-safe: the server serializes calls. Jobs arrive
    checked (`slimkit.serve.requests`): engines do not validate them."""

    name: str = ""
    model_dir: Path
    tokenizer: Any
    vocab_size: int
    dtype: str
    max_top_k: int | None = None            # the largest top_k LogProbs can return (None: no limit)
    max_len: int | None = None              # the longest sequence the model takes (None: no limit)
    timing: dict[str, float] = {}           # the last score call's phases ("prefill", "scoring"), if measured

    @abc.abstractmethod
    def score(self, jobs: list[ScoreJob]) -> list[np.ndarray]:
        """For each job, label log-probabilities [len(job.item_ids), len(job.label_ids)]."""

    @abc.abstractmethod
    def logprobs(self, jobs: list[LogProbsJob]) -> list[LogProbsResult]:
        """For each job, the log-probability of every continuation token (and top-k alternatives)."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release the model (processes, memory)."""


def load_engine(name: str, model_dir: str | Path, *, dtype: str | None = None, device: str | None = None,
                **options: Any) -> Engine:
    """Build an engine by name: `torch` (default), `vllm` (runs in .venv-vllm), `onnxruntime`.
    `dtype` None: the engine's default (float32; onnxruntime: the export's own precision). `device`:
    the torch engine's only (the others choose their own)."""
    if name not in ENGINES:
        raise SlimkitError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    if options.get("max_batch", 1) < 1:
        raise SlimkitError(f"max_batch must be >= 1, got {options['max_batch']}")
    if device is not None and name != "torch":
        raise SlimkitError(f"--device applies to the torch engine only; the {name} engine chooses its own device")
    if name == "torch":
        from slimkit.serve.torch_engine import TorchEngine
        return TorchEngine(model_dir, dtype=dtype or "float32", device=device or "cpu", **options)
    if name == "vllm":
        from slimkit.serve.vllm_engine import VllmEngine
        return VllmEngine(model_dir, dtype=dtype or "float32", **options)
    from slimkit.serve.onnx_engine import OnnxEngine
    return OnnxEngine(model_dir, dtype=dtype, **options)
