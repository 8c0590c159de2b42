"""Reference backend: plain torch with autograd, materializing the full [N, V] logits.

It is the test oracle (run it on float64 inputs) and the baseline of benchmarks/kernels.py. Inputs are
already validated and prepared by `slimkit.kernels` (padded vocab sliced off); `rows` (an int64 index
into the flattened positions, or None) is gathered up front, which autograd scatters back.
"""

from __future__ import annotations

import torch
from torch import Tensor

from slimkit.kernels import _math
from slimkit.kernels._teacher import TeacherRows, select


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _logits(h: Tensor, w: Tensor, b: Tensor | None, temperature: float) -> Tensor:
    z = (h @ w.T).to(_compute_dtype(h))
    if b is not None:
        z = z + b.to(z.dtype)
    return z / temperature


def logprob(h: Tensor, w: Tensor, b: Tensor | None, targets: Tensor, temperature: float,
            rows: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    h, _ = select(h, None, rows)
    z = _logits(h, w, b, temperature)
    lse = z.logsumexp(-1)
    s = z - lse[:, None]
    ent = -(s.exp() * s).sum(-1)
    return s.gather(1, targets[:, None])[:, 0], ent, lse


def kl(h: Tensor, w: Tensor, b: Tensor | None, teacher: TeacherRows, kind: str, beta: float,
       temperature: float, weights: Tensor | None, rows: Tensor | None = None) -> tuple[Tensor, ...]:
    h, teacher = select(h, teacher, rows)
    z = _logits(h, w, b, temperature)
    s = torch.log_softmax(z, -1)
    ent = -(s.exp() * s).sum(-1)
    with torch.no_grad():
        if teacher.kind == "live":
            lq = torch.log_softmax(_logits(teacher.hidden, teacher.weight, teacher.bias, temperature), -1)
        elif teacher.kind == "dense":
            lq = torch.log_softmax(teacher.logprobs.to(z.dtype) / temperature, -1)
        else:
            lq = _math.teacher_buckets(teacher.logprobs.to(z.dtype))
    if teacher.kind == "sparse":
        # Student buckets: the K ids, and the exact log of the remaining mass.
        tail = s.scatter(1, teacher.ids, float("-inf")).logsumexp(-1)
        s = torch.cat([s.gather(1, teacher.ids), tail[:, None]], dim=1)
    per_row, _ = _math.kind_loss_and_grad(s, lq, kind, beta)
    if weights is None:
        return per_row, ent.detach()
    return (per_row * weights.to(per_row.dtype)).sum(), per_row.detach(), ent.detach()
