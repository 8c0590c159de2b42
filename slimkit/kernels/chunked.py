"""Chunked backend: torch, one block of token rows at a time, so no [N, V] tensor ever exists.

Each chunk computes its [chunk, V] logits, reduces them to per-row results and drops them. Two modes:
- recompute (per-row outputs: `linear_logprob`, `linear_kl(reduction="none")`): the forward keeps only
  per-row stats (lse, entropy); the backward recomputes each chunk's logits and builds the gradient.
- eager (`linear_kl` with reduction "sum"/"mean", whose loss is a known weighted sum of rows): the
  forward builds the gradients chunk by chunk while the logits are at hand (no second pass over the
  vocabulary); the backward only scales them by the incoming scalar gradient. Same memory, 2 fewer
  matmuls than recompute.
Chunk size: `chunk_rows(...)`.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

from slimkit.kernels import _math
from slimkit.kernels._teacher import Teacher

# How many [chunk, V] fp32 temporaries one chunk holds at once: 3-4 on the live-teacher forward / reverse
# KL path (the common one); the general path (dense / sparse teacher, JSD, logprob) holds a few more.
_TEMPS = 4


def chunk_rows(n: int, hidden: int, vocab: int, budget_mb: float | None = None) -> int:
    """Rows per chunk: the [chunk, V] block holds about 12x as many numbers as the hidden states [N, H]
    (so the workspace is O(N * H) like the inputs and shrinks with `rows`, as in Liger-Kernel), at least
    32 rows (smaller matmuls waste the CPU), and its fp32 temporaries stay under `budget_mb` MiB
    (default: env SLIMKIT_KERNEL_CHUNK_MB, else 384). Env SLIMKIT_KERNEL_CHUNK_ROWS fixes the rows
    instead (bigger chunks run faster on CPUs; the workspace then no longer shrinks with `rows`)."""
    if os.environ.get("SLIMKIT_KERNEL_CHUNK_ROWS"):
        return max(1, min(n, int(os.environ["SLIMKIT_KERNEL_CHUNK_ROWS"])))
    if budget_mb is None:
        budget_mb = float(os.environ.get("SLIMKIT_KERNEL_CHUNK_MB", "384"))
    cap = max(1, int(budget_mb * 2**20 // (_TEMPS * 4 * vocab)))
    rows = max(32, math.ceil(12 * n * hidden / vocab))
    return max(1, min(n, rows, cap))


def _dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _logits(h: Tensor, w: Tensor, b: Tensor | None, temperature: float) -> Tensor:
    z = (h @ w.T).to(_dtype(h))
    if b is not None:
        z += b.to(z.dtype)
    if temperature != 1.0:
        z /= temperature
    return z


def _teacher_logprobs(t: Teacher, temperature: float, dtype: torch.dtype) -> Tensor:
    if t.kind == "live":
        z = _logits(t.hidden, t.weight, t.bias, temperature)
        return z.sub_(z.logsumexp(-1, keepdim=True))
    if t.kind == "dense":
        return torch.log_softmax(t.logprobs.to(dtype) / temperature, -1)
    return _math.teacher_buckets(t.logprobs.to(dtype))


def _add_grads(dz: Tensor, h: Tensor, w: Tensor, temperature: float, grads: list, sl: slice) -> None:
    """Accumulate the gradients of one chunk: dz is d loss / d (scaled logits) [chunk, V]."""
    if temperature != 1.0:
        dz /= temperature
    dh, dw, db = grads
    if dh is not None:
        dh[sl] = (dz.to(w.dtype) @ w).to(dh.dtype)
    if dw is not None:
        dw.addmm_(dz.T, h[sl].to(dw.dtype))
    if db is not None:
        db += dz.sum(0)


def _grad_buffers(h: Tensor, w: Tensor, b: Tensor | None, needs: tuple[bool, bool, bool]) -> list:
    acc = _dtype(h)
    return [torch.empty(h.shape, dtype=acc, device=h.device) if needs[0] else None,
            torch.zeros(w.shape, dtype=acc, device=w.device) if needs[1] else None,
            torch.zeros(b.shape, dtype=acc, device=b.device) if b is not None and needs[2] else None]


def _cast(grads: list, like: tuple) -> tuple:
    return tuple(None if g is None else g.to(x.dtype) for g, x in zip(grads, like, strict=True))


# ---------------------------------------------------------------------------------------------- logprob


class _LogprobFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, b, targets, temperature, chunk):
        n = h.shape[0]
        lp = torch.empty(n, dtype=_dtype(h), device=h.device)
        ent, lse = torch.empty_like(lp), torch.empty_like(lp)
        for i in range(0, n, chunk):
            sl = slice(i, i + chunk)
            z = _logits(h[sl], w, b, temperature)
            lse[sl] = z.logsumexp(-1)
            z -= lse[sl, None]  # z is now the log-probs s
            lp[sl] = z.gather(1, targets[sl, None])[:, 0]
            ent[sl] = -(z.exp() * z).sum(-1)
        ctx.save_for_backward(h, w, b, targets, lse, ent)
        ctx.temperature, ctx.chunk = temperature, chunk
        return lp, ent, lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_lp, g_ent, g_lse):
        h, w, b, targets, lse, ent = ctx.saved_tensors
        grads = _grad_buffers(h, w, b, ctx.needs_input_grad[:3])
        zeros = torch.zeros_like(lse)
        g_lp, g_ent, g_lse = (zeros if g is None else g.to(lse.dtype) for g in (g_lp, g_ent, g_lse))
        for i in range(0, h.shape[0], ctx.chunk):
            sl = slice(i, i + ctx.chunk)
            s = _logits(h[sl], w, b, ctx.temperature).sub_(lse[sl, None])
            p = s.exp()
            # d lp/dz = onehot - p; d ent/dz = -p (s + ent); d lse/dz = p
            dz = s.add_(ent[sl, None]).mul_(p).mul_(-g_ent[sl, None]).add_(p * (g_lse[sl] - g_lp[sl])[:, None])
            dz.scatter_add_(1, targets[sl, None], g_lp[sl, None])
            _add_grads(dz, h, w, ctx.temperature, grads, sl)
        return *_cast(grads, (h, w, b)), None, None, None


def logprob(h: Tensor, w: Tensor, b: Tensor | None, targets: Tensor, temperature: float,
            chunk: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    chunk = chunk or chunk_rows(h.shape[0], h.shape[1], w.shape[0])
    return _LogprobFn.apply(h, w, b, targets, temperature, chunk)


# --------------------------------------------------------------------------------------------------- kl


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """sum(a * b, -1) without a [rows, V] temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def _softmax_(z: Tensor) -> tuple[Tensor, Tensor]:
    """z -> log_softmax(z) in place; returns (softmax, lse) with one exp pass."""
    m = z.amax(-1, keepdim=True)
    z.sub_(m)
    p = z.exp()
    se = p.sum(-1, keepdim=True)
    p.div_(se)
    log_se = se.log_()
    z.sub_(log_se)
    return p, (m + log_se).view(-1)


def _kl_chunk_live(h, w, b, tc: Teacher, kind, temperature, sl, row_grad, grads):
    """Forward / reverse KL against a live teacher: no -inf anywhere, so fewer passes and temporaries
    (at most 3 [chunk, V] blocks for forward KL, 4 for reverse)."""
    lq = _logits(tc.hidden, tc.weight, tc.bias, temperature)
    q, _ = _softmax_(lq)
    if kind == "forward":  # sum q (lq - s); dz = p - q
        q_lq = _rowdot(q, lq)
        del lq
    s = _logits(h[sl], w, b, temperature)
    p, _ = _softmax_(s)
    ent = -_rowdot(p, s)
    if kind == "forward":
        loss = q_lq - _rowdot(q, s)
        del s
        dz = p.sub_(q) if row_grad is not None else None
    else:  # sum p (s - lq); dz = p (s - lq - kl)
        del q
        d = lq.neg_().add_(s)
        loss = _rowdot(p, d)
        del s
        dz = d.sub_(loss[:, None]).mul_(p) if row_grad is not None else None
    if dz is not None:
        del p
        dz.mul_(row_grad[:, None])
        _add_grads(dz, h, w, temperature, grads, sl)
    return loss, ent


def _kl_chunk(h, w, b, t: Teacher, kind, beta, temperature, sl, row_grad, grads):
    """One chunk of rows: per-row loss and entropy; with row_grad (d out / d loss_row) also add the
    gradient contributions of these rows to `grads`."""
    tc = t.rows(sl.start, sl.stop)
    if t.kind == "live" and kind != "jsd":
        return _kl_chunk_live(h, w, b, tc, kind, temperature, sl, row_grad, grads)
    z = _logits(h[sl], w, b, temperature)
    lse = z.logsumexp(-1)
    lq = _teacher_logprobs(tc, temperature, z.dtype)
    if t.kind == "sparse":
        s, tail = _math.sparse_buckets(z, lse, tc.ids)
        p = (z - lse[:, None]).exp_()
        ent = _math.entropy(z, lse, p)
        p = None
        loss, g = _math.kind_loss_and_grad(s, lq, kind, beta)
        if row_grad is not None:
            dz = _math.bucket_logit_grad(z, lse, tail, tc.ids, g * row_grad[:, None])
    else:
        s = z.sub_(lse[:, None])
        p = s.exp()
        ent = -_rowdot(p, s)
        loss, g = _math.kind_loss_and_grad(s, lq, kind, beta)
        del lq
        if row_grad is not None:
            g *= row_grad[:, None]
            dz = _math.dense_logit_grad(p, g)
    if row_grad is not None:
        del g, s, p, z
        _add_grads(dz, h, w, temperature, grads, sl)
    return loss, ent


class _KLRecomputeFn(torch.autograd.Function):
    """Per-row KL (differentiable) and entropy (not); the backward recomputes the logits."""

    @staticmethod
    def forward(ctx, h, w, b, teacher, kind, beta, temperature, chunk):
        n = h.shape[0]
        kl = torch.empty(n, dtype=_dtype(h), device=h.device)
        ent = torch.empty_like(kl)
        with torch.no_grad():
            for i in range(0, n, chunk):
                sl = slice(i, i + chunk)
                kl[sl], ent[sl] = _kl_chunk(h, w, b, teacher, kind, beta, temperature, sl, None, None)
        ctx.save_for_backward(h, w, b)
        ctx.args = (teacher, kind, beta, temperature, chunk)
        ctx.mark_non_differentiable(ent)
        return kl, ent

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_kl, _g_ent):
        h, w, b = ctx.saved_tensors
        teacher, kind, beta, temperature, chunk = ctx.args
        grads = _grad_buffers(h, w, b, ctx.needs_input_grad[:3])
        g_kl = g_kl.to(_dtype(h))
        for i in range(0, h.shape[0], chunk):
            sl = slice(i, i + chunk)
            _kl_chunk(h, w, b, teacher, kind, beta, temperature, sl, g_kl[sl], grads)
        return *_cast(grads, (h, w, b)), None, None, None, None, None


class _KLEagerFn(torch.autograd.Function):
    """loss = sum_i weights_i * kl_i; gradients built in the forward, scaled in the backward."""

    @staticmethod
    def forward(ctx, h, w, b, teacher, kind, beta, temperature, chunk, weights, grad_enabled):
        n = h.shape[0]
        kl = torch.empty(n, dtype=_dtype(h), device=h.device)
        ent = torch.empty_like(kl)
        # needs_input_grad stays True under torch.no_grad(): don't build gradients nobody will use.
        needs = tuple(grad_enabled and x for x in ctx.needs_input_grad[:3])
        grads = _grad_buffers(h, w, b, needs) if any(needs) else None
        weights = weights.to(kl.dtype)
        for i in range(0, n, chunk):
            sl = slice(i, i + chunk)
            kl[sl], ent[sl] = _kl_chunk(h, w, b, teacher, kind, beta, temperature, sl,
                                        weights[sl] if grads else None, grads)
        ctx.grads = _cast(grads, (h, w, b)) if grads else (None, None, None)
        ctx.mark_non_differentiable(kl, ent)
        return (kl * weights).sum(), kl, ent

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_loss, _g_kl, _g_ent):
        # Scale the gradients built in the forward in place: they are released here (ctx.grads = None),
        # so no second [V, H] buffer is ever allocated for the weight gradient.
        grads = tuple(None if g is None else g.mul_(g_loss.to(g.dtype)) for g in ctx.grads)
        ctx.grads = None
        return *grads, None, None, None, None, None, None, None


def kl(h: Tensor, w: Tensor, b: Tensor | None, teacher: Teacher, kind: str, beta: float,
       temperature: float, weights: Tensor | None, chunk: int | None = None) -> tuple[Tensor, ...]:
    chunk = chunk or chunk_rows(h.shape[0], h.shape[1], w.shape[0])
    if weights is None:
        return _KLRecomputeFn.apply(h, w, b, teacher, kind, beta, temperature, chunk)
    return _KLEagerFn.apply(h, w, b, teacher, kind, beta, temperature, chunk, weights, torch.is_grad_enabled())
