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

from slimkit import kernels
from slimkit.artifacts import atomic_dir
from slimkit.compress.distill.hidden import last_hidden, supervised
from slimkit.compress.distill.rollouts import DatasetSource, Rollout, collate
from slimkit.errors import SlimkitError

_MAX_MASS = math.log1p(-1e-4)  # fp16 rounding must not make the top-k mass reach 1 (empty tail)


def fingerprint(teacher_hash: str, rollouts: list[Rollout], k: int, temperature: float) -> str:
    h = hashlib.sha256(json.dumps({"teacher": teacher_hash, "k": k, "t": temperature}).encode())
    for r in rollouts:
        h.update(np.asarray(r.prompt_ids + [-1] + r.completion_ids + [-2], dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


_CHUNK_MB = 64  # the [chunk, V] fp32 temporaries of `sparse_topk`
_BATCH = 16  # sequences per teacher forward while the cache is built


@torch.no_grad()
def sparse_topk(teacher: kernels.LiveTeacher, k: int, temperature: float,
                vocab_size: int | None = None) -> kernels.SparseTeacher:
    """The K most likely ids of a live teacher [N, H] per row and their log-probs at `temperature`
    over its first `vocab_size` ids (the lm_head's padding rows take no part), in chunks of rows (no
    [N, V] tensor)."""
    hidden, weight = teacher.hidden, teacher.weight[:vocab_size]
    chunk = max(1, int(_CHUNK_MB * 2**20 // (4 * weight.shape[0] * 3)))
    ids, lps = [], []
    for i in range(0, hidden.shape[0], chunk):
        z = (hidden[i : i + chunk].float() @ weight.float().T) / temperature
        lp = torch.log_softmax(z, -1)
        v, j = lp.topk(k, -1)
        ids.append(j)
        lps.append(v)
    if not ids:
        return kernels.SparseTeacher(torch.empty(0, k, dtype=torch.long), torch.empty(0, k))
    return kernels.SparseTeacher(torch.cat(ids), torch.cat(lps))


class TopKCache:
    def __init__(self, path: Path):
        self.ids = np.load(path / "ids.npy", mmap_mode="r")
        self.logprobs = np.load(path / "logprobs.npy", mmap_mode="r")
        self.offsets = np.load(path / "offsets.npy")

    @classmethod
    def build_or_load(cls, path: Path, teacher, source: DatasetSource, *, k: int, temperature: float,
                      vocab_size: int, pad_id: int, teacher_hash: str, setting: str = "loss.topk_cache") -> TopKCache:
        rollouts = source.all()
        weight = teacher.get_output_embeddings().weight
        k = min(k, vocab_size - 1)
        fp = fingerprint(teacher_hash, rollouts, k, temperature)
        meta_file = path / "meta.json"
        if meta_file.is_file():
            meta = json.loads(meta_file.read_text())
            if meta.get("fingerprint") != fp:
                raise SlimkitError(f"top-k teacher cache {path} was made for another teacher, rollouts, K or "
                                   f"temperature (fingerprint {meta.get('fingerprint')} != {fp}); delete it or set "
                                   f"{setting} to a new path")
            return cls(path)
        all_ids, all_lps, offsets = [], [], [0]
        for i in range(0, len(rollouts), _BATCH):
            part = rollouts[i : i + _BATCH]
            b = collate(part, pad_id, weight.device)
            ids, lps = sparse_topk(kernels.LiveTeacher(supervised(last_hidden(teacher, b), b), weight), k, temperature, vocab_size)
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
        return cls(path)

    def rows(self, rollouts: list[Rollout], device: torch.device) -> kernels.SparseTeacher:
        """The teacher (ids [N, K] long, logprobs [N, K] fp32) at the supervised tokens of `rollouts`, in
        batch order."""
        parts = [slice(self.offsets[r.key], self.offsets[r.key + 1]) for r in rollouts]
        ids = torch.from_numpy(np.concatenate([self.ids[s] for s in parts])).long()
        lps = torch.from_numpy(np.concatenate([self.logprobs[s] for s in parts]).astype(np.float32))
        excess = (lps.logsumexp(-1, keepdim=True) - _MAX_MASS).clamp_min(0)
        return kernels.SparseTeacher(ids.to(device), (lps - excess).to(device))
