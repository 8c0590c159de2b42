"""The onnxruntime engine: an ONNX export with KV-cache inputs, fp32 or int8, as written by
`slimkit quantize MODEL --scheme onnx-fp32|onnx-int8 --out DIR` (slimkit/compress/quantize.py).

Shared-prefix scoring as in the torch engine: the shared ids run once with an empty past; their
`present.*` tensors are repeated over each batch of items (`slimkit.serve.batching`). The exported
graph returns logits for
every input position (optimum's text-generation export has no last-position-only output), so only
the items' tokens, not the prefix, pay for the LM head; label log-probs are taken at each item's last
token in float64.

fp32 exports give the same scores with or without prefix sharing and in any batch; so do int8 ones,
whose activation scales are static (calibrated when quantized), not taken from each batch's range.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from slimkit import artifacts
from slimkit.errors import SlimkitError
from slimkit.serve.batching import Batch, batches
from slimkit.serve.engine import Engine, LogProbsJob, LogProbsResult
from slimkit.serve.prompt import ScoreJob

_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))


class OnnxEngine(Engine):
    name = "onnxruntime"

    def __init__(self, model_dir: str | Path, *, dtype: str | None = None, max_batch: int = 64,
                 share_prefix: bool = True, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.model_dir = Path(model_dir)
        path = self.model_dir / "model.onnx"
        if not path.is_file():
            raise SlimkitError(f"{self.model_dir} has no model.onnx: export it with "
                               "`slimkit quantize SRC --scheme onnx-fp32 --out DIR` (or onnx-int8)")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.tokenizer = artifacts.load_tokenizer(self.model_dir)
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = sorted((n for n in inputs if n.startswith("past_key_values.")),
                                 key=lambda n: (int(n.split(".")[1]), n.endswith("value")))
        if not self.past_names or "position_ids" not in inputs:
            raise SlimkitError(f"{path} has no KV-cache/position inputs: export with task text-generation-with-past")
        first = inputs[self.past_names[0]]
        self.kv_heads, self.head_dim = int(first.shape[1]), int(first.shape[3])
        self.past_dtype = _NP[first.type]
        cfg = json.loads((self.model_dir / "config.json").read_text())
        self.vocab_size = int(cfg["vocab_size"])
        self.max_len = cfg.get("max_position_embeddings")
        manifest = artifacts.read_manifest(self.model_dir)
        # The precision is the export's own; a different --dtype would not be applied, so it is refused.
        own = "int8" if manifest.get("recipe", {}).get("int8") else str(np.dtype(self.past_dtype))
        if dtype is not None and dtype != own:
            raise SlimkitError(f"{self.model_dir} is a {own} ONNX export: the onnxruntime engine runs it as exported "
                               f"and cannot apply --dtype {dtype} (quantize again with another --scheme, or drop --dtype)")
        self.dtype = own
        self.max_batch, self.share_prefix = max_batch, share_prefix

    def _run(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray, past: list[np.ndarray] | None):
        b = ids.shape[0]
        if past is None:
            past = [np.zeros((b, self.kv_heads, 0, self.head_dim), self.past_dtype)] * len(self.past_names)
        feed = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
        feed.update(zip(self.past_names, past, strict=True))
        logits, *present = self.session.run(None, feed)
        return logits, present

    def _last_logits(self, batch: Batch, prefix: list[np.ndarray] | None) -> np.ndarray:
        ids = np.array(batch.ids, np.int64)
        b = ids.shape[0]
        pos = np.broadcast_to(np.array(batch.positions, np.int64), ids.shape).copy()
        past = None if prefix is None else [np.repeat(p, b, axis=0) for p in prefix]
        logits, _ = self._run(ids, np.array(batch.mask, np.int64), pos, past)
        return logits[np.arange(b), batch.last, :self.vocab_size]

    def score(self, jobs: list[ScoreJob]) -> list[np.ndarray]:
        return [self._score_job(job) for job in jobs]

    def _score_job(self, job: ScoreJob) -> np.ndarray:
        share, plen = self.share_prefix and bool(job.shared_ids), len(job.shared_ids)
        prefix = None
        if share:
            ids = np.array([job.shared_ids], np.int64)
            _, prefix = self._run(ids, np.ones_like(ids), np.arange(plen, dtype=np.int64)[None], None)
        out = np.empty((len(job.item_ids), len(job.label_ids)))
        for batch in batches(job, self.max_batch, prefix=share):
            z = self._last_logits(batch, prefix).astype(np.float64)
            if job.normalization == "labels":
                out[batch.rows] = _log_softmax(z[:, job.label_ids])
            else:
                out[batch.rows] = _log_softmax(z)[:, job.label_ids]
        return out

    def logprobs(self, jobs: list[LogProbsJob]) -> list[LogProbsResult]:
        results = []
        for job in jobs:
            seq = job.prompt_ids + job.continuation_ids
            p, c = len(job.prompt_ids), len(job.continuation_ids)
            ids = np.array([seq], np.int64)
            logits, _ = self._run(ids, np.ones_like(ids), np.arange(len(seq), dtype=np.int64)[None], None)
            lp = _log_softmax(logits[0, p - 1:p + c - 1, :self.vocab_size])
            lps = [float(lp[i, t]) for i, t in enumerate(job.continuation_ids)]
            top = []
            if job.top_k:
                for row in lp:
                    idx = np.argsort(-row, kind="stable")[:job.top_k]
                    top.append([(int(t), float(row[t])) for t in idx])
            results.append(LogProbsResult(lps, top))
        return results
