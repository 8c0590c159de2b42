"""A cached sparse top-k teacher: for every supervised token of a fixed rollout set, the teacher's K
most likely ids and their log-probs (at the loss temperature), fp16 on disk, reusable across runs.

The remaining mass 1 - sum(exp(logprobs)) is the tail bucket the kernels compare the student's
remaining mass against. A fingerprint of teacher weights, the rollouts' token ids, K and temperature is
stored beside the arrays; a cache made for anything else is refused, never silently reused.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch

from slimkit.artifacts import atomic_dir
from slimkit.compress.distill.losses import last_hidden, lm_head, targets
from slimkit.compress.distill.rollouts import DatasetSource, Rollout, collate
from slimkit.errors import SlimkitError

_MAX_MASS = math.log1p(-1e-4)  # fp16 rounding must not make the top-k mass reach 1 (empty tail)


def fingerprint(teacher_hash: str, rollouts: list[Rollout], k: int, temperature: float) -> str:
    h = hashlib.sha256(json.dumps({"teacher": teacher_hash, "k": k, "t": temperature}).encode())
    for r in rollouts:
        h.update(np.asarray(r.prompt_ids + [-1] + r.completion_ids + [-2], dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def topk_rows(hidden: torch.Tensor, weight: torch.Tensor, k: int, temperature: float,
              budget_mb: float = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (ids, log-probs) per row of `hidden` [N, H], in chunks of rows ([chunk, V] <= budget)."""
    chunk = max(1, int(budget_mb * 2**20 // (4 * weight.shape[0] * 3)))
    ids, lps = [], []
    for i in range(0, hidden.shape[0], chunk):
        z = (hidden[i : i + chunk].float() @ weight.float().T) / temperature
        lp = torch.log_softmax(z, -1)
        v, j = lp.topk(k, -1)
        ids.append(j)
        lps.append(v)
    if not ids:
        return torch.empty(0, k, dtype=torch.long), torch.empty(0, k)
    return torch.cat(ids), torch.cat(lps)


class TopKCache:
    def __init__(self, path: Path, meta: dict):
        self.path, self.meta = path, meta
        self.ids = np.load(path / "ids.npy", mmap_mode="r")
        self.logprobs = np.load(path / "logprobs.npy", mmap_mode="r")
        self.offsets = np.load(path / "offsets.npy")

    @classmethod
    def build_or_load(cls, path: Path, teacher, source: DatasetSource, *, k: int, temperature: float,
                      pad_id: int, teacher_hash: str, batch: int = 16) -> TopKCache:
        rollouts = source.all()
        k = min(k, lm_head(teacher)[0].shape[0])
        fp = fingerprint(teacher_hash, rollouts, k, temperature)
        meta_file = path / "meta.json"
        if meta_file.is_file():
            meta = json.loads(meta_file.read_text())
            if meta.get("fingerprint") != fp:
                raise SlimkitError(f"top-k teacher cache {path} was made for another teacher, rollouts, K or "
                                   f"temperature (fingerprint {meta.get('fingerprint')} != {fp}); delete it or set "
                                   "loss.topk_cache to a new path")
            return cls(path, meta)
        w = lm_head(teacher)[0]
        device = w.device
        all_ids, all_lps, offsets = [], [], [0]
        for i in range(0, len(rollouts), batch):
            part = rollouts[i : i + batch]
            b = collate(part, pad_id, device)
            ids, lps = topk_rows(targets(last_hidden(teacher, b), b), w, k, temperature)
            all_ids.append(ids.to(torch.int32).cpu().numpy())
            all_lps.append(lps.to(torch.float16).cpu().numpy())
            for r in part:
                offsets.append(offsets[-1] + len(r.completion_ids))
        meta = {"fingerprint": fp, "k": k, "temperature": temperature, "rollouts": len(rollouts),
                "rows": offsets[-1]}
        with atomic_dir(path) as tmp:
            np.save(tmp / "ids.npy", np.concatenate(all_ids))
            np.save(tmp / "logprobs.npy", np.concatenate(all_lps))
            np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        return cls(path, meta)

    def rows(self, rollouts: list[Rollout], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [N, K] long, logprobs [N, K] fp32) for the supervised tokens of `rollouts`, in batch order."""
        parts = [slice(self.offsets[r.key], self.offsets[r.key + 1]) for r in rollouts]
        ids = torch.from_numpy(np.concatenate([self.ids[s] for s in parts])).long()
        lps = torch.from_numpy(np.concatenate([self.logprobs[s] for s in parts]).astype(np.float32))
        excess = (lps.logsumexp(-1, keepdim=True) - _MAX_MASS).clamp_min(0)
        return ids.to(device), (lps - excess).to(device)
