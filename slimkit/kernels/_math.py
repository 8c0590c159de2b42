"""Per-row math shared by every backend: the KL kinds on log-probabilities and their gradients.

Everything here works on one block of rows: `s` (student log-probs) and `lq` (teacher log-probs) of the
same shape [rows, C], where C is either the vocabulary (dense teacher) or K+1 buckets (sparse top-k
teacher: K ids and one tail bucket). Results are per row.

`kind_loss_and_grad(s, lq, kind, beta)` returns the per-row loss and g = d loss / d s, taking `s` as
free variables, up to a multiple of p = exp(s) per row (the softmax Jacobian maps c * p to 0, for
dense rows and buckets alike); the gradient wrt the logits z then follows from the softmax Jacobian:
dense: dz = g - p * sum(g); buckets: see `bucket_logit_grad`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _mul_where(w: Tensor, x: Tensor) -> Tensor:
    """w * x with 0 * anything = 0 (so that zero-probability teacher entries never give NaN)."""
    return torch.where(w != 0, w * x, torch.zeros((), dtype=x.dtype, device=x.device))  # NaN stays NaN


def kind_loss_and_grad(s: Tensor, lq: Tensor, kind: str, beta: float) -> tuple[Tensor, Tensor]:
    """Per-row divergence between student log-probs `s` and teacher log-probs `lq`, and d/ds.

    forward: KL(teacher || student) = sum q (lq - s)
    reverse: KL(student || teacher) = sum p (s - lq)
    jsd:     beta * KL(teacher || m) + (1 - beta) * KL(student || m),  m = beta * q + (1 - beta) * p
    """
    if kind == "forward":
        q = lq.exp()
        loss = _mul_where(q, lq - s).sum(-1)
        return loss, -q
    p = s.exp()
    if kind == "reverse":
        d = s - lq
        loss = _mul_where(p, d).sum(-1)
        # d/ds is p (d + 1); the p * 1 part is dropped (see module docstring): it cancels in the
        # softmax Jacobian, and keeping it costs precision (1 + small - (1 + small')).
        return loss, _mul_where(p, d)
    if kind == "jsd":
        lm = torch.logaddexp(lq + math.log(beta), s + math.log1p(-beta))
        q = lq.exp()
        d = s - lm
        loss = beta * _mul_where(q, lq - lm).sum(-1) + (1.0 - beta) * _mul_where(p, d).sum(-1)
        return loss, (1.0 - beta) * _mul_where(p, d)
    raise ValueError(f"unknown kind {kind!r}")


def dense_logit_grad(p: Tensor, g: Tensor) -> Tensor:
    """d loss / d z for s = log_softmax(z), given g = d loss / d s (free) and p = softmax(z)."""
    return g - p * g.sum(-1, keepdim=True)


def sparse_buckets(z: Tensor, lse: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Student bucket log-probs [rows, K+1] (K ids, then the tail) from full logits z [rows, V].

    Also returns the tail's log-prob. It is log1p(-sum of the K probs) where that sum is below 1/2 (the
    usual case; exact to fp32 rounding), else the masked logsumexp over the other ids minus lse (no
    1 - sum cancellation when the tail is small)."""
    sk = z.gather(1, ids) - lse[:, None]
    top = sk.exp().sum(-1)
    masked = z.scatter(1, ids, float("-inf")).logsumexp(-1) - lse
    tail = torch.where(top < 0.5, torch.log1p(-top.clamp_max(0.5)), masked)
    return torch.cat([sk, tail[:, None]], dim=1), tail


def teacher_buckets(logprobs: Tensor) -> Tensor:
    """Teacher bucket log-probs [rows, K+1]: the K given log-probs and log of the remaining mass.

    The tail mass is 1 - sum(exp(logprobs)), clamped at 0 (a teacher whose top-k mass reaches 1 has an
    empty tail: log 0 = -inf, which makes reverse KL infinite where the student puts mass there)."""
    tail = (1.0 - logprobs.exp().sum(-1)).clamp_min(0.0).log()
    return torch.cat([logprobs, tail[:, None]], dim=1)


def bucket_logit_grad(z: Tensor, lse: Tensor, tail: Tensor, ids: Tensor, g: Tensor) -> Tensor:
    """d loss / d z [rows, V] given g = d loss / d buckets [rows, K+1] (buckets taken as free) and the
    student's tail log-prob.

    For j in ids: g_j - p_j * sum(g); elsewhere: p_j / p_tail * g_tail - p_j * sum(g)."""
    gsum = g.sum(-1, keepdim=True)
    p = (z - lse[:, None]).exp_()
    pk = p.gather(1, ids)
    dz = p.mul_(g[:, -1:] / tail.exp()[:, None] - gsum)
    return dz.scatter_(1, ids, g[:, :-1] - pk * gsum)


def entropy(z: Tensor, lse: Tensor, p: Tensor) -> Tensor:
    """Entropy of softmax(z) per row: lse - sum p z."""
    return lse - (p * z).sum(-1)
