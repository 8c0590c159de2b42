"""Chunked backend: torch, one block of token rows at a time, so no [N, V] tensor ever exists.

Each chunk computes its [chunk, V] logits, reduces them to per-row results and drops them. Two modes:
- recompute (per-row outputs: `linear_logprob`, `linear_kl(reduction="none")`): the forward keeps only
  per-row stats (lse, entropy); the backward recomputes each chunk's logits and builds the gradient.
- eager (`linear_kl` with reduction "sum"/"mean", whose loss is a known weighted sum of rows): the
  forward builds the gradients chunk by chunk while the logits are at hand (no second pass over the
  vocabulary); the backward only scales them by the incoming scalar gradient. Same memory, 2 fewer
  matmuls than recompute. With `weight_grad` (a caller's fp32 buffer, e.g. the weight's persistent
  .grad) the weight gradient is accumulated straight into that buffer chunk by chunk, so no [V, H]
  gradient is allocated at all; autograd then returns None for the weight, and the backward checks
  that the incoming gradient is exactly 1 (the buffer already holds d loss / d W unscaled).
`rows` (an int64 index into the flattened positions, any order, repeats allowed) is gathered chunk by
chunk: each chunk reads h[rows[i:j]] and the teacher's same rows, so no [len(rows), H] copy of the
student or teacher hidden states exists. The hidden gradient is built for the selected rows
([len(rows), H]) and scattered to all of h's rows (0 elsewhere, summed over repeats) only at the end of
the backward, after the chunk temporaries are gone.
Chunk size: `chunk_rows(...)`.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

from slimkit.kernels import _math
from slimkit.kernels._teacher import TeacherRows

# How many [chunk, V] fp32 temporaries one chunk holds at once: 3 on the live-teacher forward / reverse
# KL path (the common one); the general path (dense / sparse teacher, JSD, logprob) holds a few more.
_TEMPS = 4


# See chunk_rows. 13: chunks as big as possible (bigger ones run faster on CPUs) while linear_kl's extra
# memory stays, with some margin, within a tenth of the reference backend's, and at half the rows within
# 60% of its own all-rows peak (the numbers: benchmarks/results/kernels.md). The byte budget is a cap for
# huge vocabularies: at common shapes it must not bind, or the chunk would stop shrinking with `rows`.
_RATIO = 13


def chunk_rows(n: int, hidden: int, vocab: int) -> int:
    """Rows per chunk for n selected rows: the [chunk, V] block holds about _RATIO x as many numbers
    as the selected hidden states [n, H] (so the workspace is O(n * H) like the inputs and shrinks with
    `rows`, as in Liger-Kernel), at least 32 rows (smaller matmuls waste the CPU), and its fp32
    temporaries stay under env SLIMKIT_KERNEL_CHUNK_MB MiB (default 512). Env
    SLIMKIT_KERNEL_CHUNK_ROWS fixes the rows instead (bigger chunks run faster on CPUs; the workspace
    then no longer shrinks with `rows`)."""
    if os.environ.get("SLIMKIT_KERNEL_CHUNK_ROWS"):
        return max(1, min(n, int(os.environ["SLIMKIT_KERNEL_CHUNK_ROWS"])))
    budget_mb = float(os.environ.get("SLIMKIT_KERNEL_CHUNK_MB", "512"))
    cap = max(1, int(budget_mb * 2**20 // (_TEMPS * 4 * vocab)))
    rows = max(32, math.ceil(_RATIO * n * hidden / vocab))
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


def _teacher_logprobs(t: TeacherRows, temperature: float, dtype: torch.dtype) -> Tensor:
    if t.kind == "live":
        z = _logits(t.hidden, t.weight, t.bias, temperature)
        return z.sub_(z.logsumexp(-1, keepdim=True))
    if t.kind == "dense":
        return torch.log_softmax(t.logprobs.to(dtype) / temperature, -1)
    return _math.teacher_buckets(t.logprobs.to(dtype))


def _chunks(n: int, chunk: int, idx: Tensor | None):
    """Per chunk: (sl, r) = the slice of the n selected rows (outputs, dH rows), and the rows of h and
    of the teacher it reads (the same slice, or the index entries idx[sl])."""
    for i in range(0, n, chunk):
        sl = slice(i, min(n, i + chunk))
        yield sl, sl if idx is None else idx[sl]


def _add_grads(dz: Tensor, hc: Tensor, w: Tensor, temperature: float, grads: list, sl: slice) -> None:
    """Accumulate the gradients of one chunk: dz is d loss / d (scaled logits) [chunk, V], hc the chunk's
    hidden rows, sl its rows in the selected-rows dH."""
    if temperature != 1.0:
        dz /= temperature
    dh, dw, db = grads
    if dh is not None:
        dh[sl] = (dz.to(w.dtype) @ w).to(dh.dtype)
    if dw is not None:
        dw.addmm_(dz.T, hc.to(dw.dtype))
    if db is not None:
        db += dz.sum(0)


def _grad_buffers(n: int, h: Tensor, w: Tensor, b: Tensor | None, needs: tuple[bool, bool, bool]) -> list:
    """dH for the n selected rows, dW, db (accumulated in fp32, or fp64 for fp64 inputs)."""
    acc = _dtype(h)
    return [torch.empty(n, h.shape[1], dtype=acc, device=h.device) if needs[0] else None,
            torch.zeros(w.shape, dtype=acc, device=w.device) if needs[1] else None,
            torch.zeros(b.shape, dtype=acc, device=b.device) if b is not None and needs[2] else None]


def _cast(grads: list, like: tuple) -> tuple:
    return tuple(None if g is None else g.to(x.dtype) for g, x in zip(grads, like, strict=True))


def _scatter(grads: tuple, idx: Tensor | None, n_rows: int) -> tuple:
    """dH of the selected rows -> dH of all n_rows rows of h: 0 on unselected rows, summed over repeats."""
    dh, dw, db = grads
    if dh is not None and idx is not None:
        # index_put_(accumulate=True) sums repeats like index_add_, and is the faster of the two on CPU
        dh = dh.new_zeros(n_rows, dh.shape[1]).index_put_((idx,), dh, accumulate=True)
    return dh, dw, db


# ---------------------------------------------------------------------------------------------- logprob


class _LogprobFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, b, targets, temperature, chunk, idx):
        n = targets.shape[0]
        lp = torch.empty(n, dtype=_dtype(h), device=h.device)
        ent, lse = torch.empty_like(lp), torch.empty_like(lp)
        for sl, r in _chunks(n, chunk, idx):
            z = _logits(h[r], w, b, temperature)
            lse[sl] = z.logsumexp(-1)
            z -= lse[sl, None]  # z is now the log-probs s
            lp[sl] = z.gather(1, targets[sl, None])[:, 0]
            ent[sl] = -(z.exp() * z).sum(-1)
        ctx.save_for_backward(h, w, b, targets, lse, ent, idx)
        ctx.temperature, ctx.chunk = temperature, chunk
        return lp, ent, lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_lp, g_ent, g_lse):
        h, w, b, targets, lse, ent, idx = ctx.saved_tensors
        grads = _grad_buffers(lse.shape[0], h, w, b, ctx.needs_input_grad[:3])
        with_ent = g_ent is not None  # the entropy's term only when something reads the entropy
        zeros = torch.zeros_like(lse)
        g_lp, g_ent, g_lse = (zeros if g is None else g.to(lse.dtype) for g in (g_lp, g_ent, g_lse))
        for sl, r in _chunks(lse.shape[0], ctx.chunk, idx):
            hc = h[r]
            s = _logits(hc, w, b, ctx.temperature).sub_(lse[sl, None])
            # d lp/dz = onehot - p; d ent/dz = -p (s + ent); d lse/dz = p
            if with_ent:
                p = s.exp()
                dz = s.add_(ent[sl, None]).mul_(p).mul_(-g_ent[sl, None]).add_(p * (g_lse[sl] - g_lp[sl])[:, None])
                del p
            else:
                dz = s.exp_().mul_((g_lse[sl] - g_lp[sl])[:, None])
            dz.scatter_add_(1, targets[sl, None], g_lp[sl, None])
            del s
            _add_grads(dz, hc, w, ctx.temperature, grads, sl)
        return *_scatter(_cast(grads, (h, w, b)), idx, h.shape[0]), None, None, None, None


def logprob(h: Tensor, w: Tensor, b: Tensor | None, targets: Tensor, temperature: float,
            rows: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """h [N, H]; targets [n] for the n selected rows (`rows`, or all N)."""
    chunk = chunk_rows(targets.shape[0], h.shape[1], w.shape[0])
    return _LogprobFn.apply(h, w, b, targets, temperature, chunk, rows)


# --------------------------------------------------------------------------------------------------- kl


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """sum(a * b, -1) without a [rows, V] temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def _log_softmax(z: Tensor) -> Tensor:
    """log_softmax over the vocabulary: one fused op (one parallel region instead of the several of an
    in-place version, which matters on a busy CPU), at the price of a second [chunk, V] block while z
    is alive (the callers pass a temporary, freed on return)."""
    return torch.log_softmax(z, -1)


def _jsd_live_nograd(hc, w, b, tc: TeacherRows, beta, temperature):
    """JSD(beta) against a live teacher, values only (the scoring pass): at most 4 [chunk, V] blocks
    (the general path holds about 10). Live logits are finite, so no 0 * -inf guards are needed: the
    mixture's log-prob lm is taken in log space (logaddexp) and stays finite where both p and q underflow.
    loss = beta * sum q (lq - lm) + (1 - beta) * sum p (s - lm)."""
    lq = _log_softmax(_logits(tc.hidden, tc.weight, tc.bias, temperature))
    s = _log_softmax(_logits(hc, w, b, temperature))
    p, q = s.exp(), lq.exp()
    p_s, q_lq = _rowdot(p, s), _rowdot(q, lq)
    lm = torch.logaddexp(lq.add_(math.log(beta)), s.add_(math.log1p(-beta)), out=lq)
    del s
    loss = beta * (q_lq - _rowdot(q, lm)) + (1.0 - beta) * (p_s - _rowdot(p, lm))
    return loss, -p_s


def _lp_term(s: Tensor, p: Tensor, lp) -> tuple[Tensor, Tensor]:
    """The target log-prob term sum_i c_i log p_i(t_i) of one chunk (lp = (targets, c)): its per-row values
    c_i s_i(t_i) and d/dz = c (onehot(t) - p)."""
    t, c = lp
    dz = p * -c[:, None]
    dz.scatter_add_(1, t[:, None], c[:, None].to(dz.dtype))
    return c * s.gather(1, t[:, None])[:, 0], dz


def _kl_chunk_live(hc, w, b, tc: TeacherRows, kind, temperature, sl, row_grad, grads, lp=None):
    """Forward / reverse KL against a live teacher: no -inf anywhere, so fewer passes and temporaries
    (at most 3 [chunk, V] blocks; one more with `lp`)."""
    lq = _log_softmax(_logits(tc.hidden, tc.weight, tc.bias, temperature))
    if kind == "forward":  # sum q (lq - s); dz = p - q
        q = lq.exp()
        q_lq = _rowdot(q, lq)
        del lq
    s = _log_softmax(_logits(hc, w, b, temperature))
    p = s.exp()
    ent = -_rowdot(p, s)
    lp_rows, lp_dz = _lp_term(s, p, lp) if lp is not None else (None, None)
    if kind == "forward":
        loss = q_lq - _rowdot(q, s)
        del s
        dz = p.sub_(q) if row_grad is not None else None
    else:  # sum p (s - lq); dz = p (s - lq - kl)
        d = lq.neg_().add_(s)
        loss = _rowdot(p, d)
        del s
        dz = d.sub_(loss[:, None]).mul_(p) if row_grad is not None else None
    if dz is not None:
        del p
        dz.mul_(row_grad[:, None])
        if lp_dz is not None:
            dz.add_(lp_dz)
            del lp_dz
        _add_grads(dz, hc, w, temperature, grads, sl)
    return (loss, ent) if lp is None else (loss, ent, lp_rows)


def _kl_chunk(hc, w, b, tc: TeacherRows, kind, beta, temperature, sl, row_grad, grads, lp=None):
    """One chunk: hc [chunk, H] student hidden rows and tc the teacher at the same rows; per-row loss and
    entropy; with row_grad (d out / d loss_row) also add these rows' gradient contributions to `grads`
    (sl: their rows in the selected-rows dH). lp = (targets, c) (with row_grad only): also the term
    c * log p(target) per row, its values returned third and its gradient added to `grads`."""
    if tc.kind == "live" and kind != "jsd":
        return _kl_chunk_live(hc, w, b, tc, kind, temperature, sl, row_grad, grads, lp)
    if tc.kind == "live" and row_grad is None:
        return _jsd_live_nograd(hc, w, b, tc, beta, temperature)
    z = _logits(hc, w, b, temperature)
    lse = z.logsumexp(-1)
    lq = _teacher_logprobs(tc, temperature, z.dtype)
    lp_rows = lp_dz = None
    if tc.kind == "sparse":
        s, tail = _math.sparse_buckets(z, lse, tc.ids)
        p = (z - lse[:, None]).exp_()
        ent = _math.entropy(z, lse, p)
        if lp is not None:
            lp_rows, lp_dz = _lp_term(z - lse[:, None], p, lp)
        p = None
        loss, g = _math.kind_loss_and_grad(s, lq, kind, beta)
        if row_grad is not None:
            dz = _math.bucket_logit_grad(z, lse, tail, tc.ids, g * row_grad[:, None])
    else:
        s = z.sub_(lse[:, None])
        p = s.exp()
        ent = -_rowdot(p, s)
        if lp is not None:
            lp_rows, lp_dz = _lp_term(s, p, lp)
        loss, g = _math.kind_loss_and_grad(s, lq, kind, beta)
        del lq
        if row_grad is not None:
            g *= row_grad[:, None]
            dz = _math.dense_logit_grad(p, g)
    if row_grad is not None:
        del g, s, p, z
        if lp_dz is not None:
            dz.add_(lp_dz)
            del lp_dz
        _add_grads(dz, hc, w, temperature, grads, sl)
    return (loss, ent) if lp is None else (loss, ent, lp_rows)


class _KLRecomputeFn(torch.autograd.Function):
    """Per-row KL (differentiable) and entropy (not); the backward recomputes the logits."""

    @staticmethod
    def forward(ctx, h, w, b, teacher, kind, beta, temperature, chunk, n, idx):
        kl = torch.empty(n, dtype=_dtype(h), device=h.device)
        ent = torch.empty_like(kl)
        with torch.no_grad():
            for sl, r in _chunks(n, chunk, idx):
                kl[sl], ent[sl] = _kl_chunk(h[r], w, b, teacher.take(r), kind, beta, temperature, sl, None, None)
        ctx.save_for_backward(h, w, b, idx)
        ctx.args = (teacher, kind, beta, temperature, chunk)
        ctx.mark_non_differentiable(ent)
        return kl, ent

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_kl, _g_ent):
        h, w, b, idx = ctx.saved_tensors
        teacher, kind, beta, temperature, chunk = ctx.args
        n = g_kl.shape[0]
        grads = _grad_buffers(n, h, w, b, ctx.needs_input_grad[:3])
        g_kl = g_kl.to(_dtype(h))
        for sl, r in _chunks(n, chunk, idx):
            _kl_chunk(h[r], w, b, teacher.take(r), kind, beta, temperature, sl, g_kl[sl], grads)
        return *_scatter(_cast(grads, (h, w, b)), idx, h.shape[0]), None, None, None, None, None, None, None


class _KLEagerFn(torch.autograd.Function):
    """loss = sum_i weights_i * kl_i; gradients built in the forward, scaled in the backward. With
    `weight_grad`, the weight gradient goes into that buffer in the forward instead (see the module
    docstring)."""

    @staticmethod
    def forward(ctx, h, w, b, teacher, kind, beta, temperature, chunk, weights, grad_enabled, idx, weight_grad,
                lp=None):
        n = weights.shape[0]
        kl = torch.empty(n, dtype=_dtype(h), device=h.device)
        ent = torch.empty_like(kl)
        lp_sum = kl.new_zeros(())
        # needs_input_grad stays True under torch.no_grad(): don't build gradients nobody will use.
        needs = tuple(grad_enabled and x for x in ctx.needs_input_grad[:3])
        into = weight_grad is not None and needs[1]
        grads = _grad_buffers(n, h, w, b, (needs[0], needs[1] and not into, needs[2])) if any(needs) else None
        if into:
            grads[1] = weight_grad
        weights = weights.to(kl.dtype)
        for sl, r in _chunks(n, chunk, idx):
            if lp is None:
                kl[sl], ent[sl] = _kl_chunk(h[r], w, b, teacher.take(r), kind, beta, temperature, sl,
                                            weights[sl] if grads else None, grads)
                continue
            # the target log-prob term: d/dz is built with the KL's in the same pass (grads needed)
            row_grad = weights[sl] if grads else torch.zeros_like(weights[sl])
            kl[sl], ent[sl], lp_rows = _kl_chunk(h[r], w, b, teacher.take(r), kind, beta, temperature, sl,
                                                 row_grad, grads or _grad_buffers(n, h, w, b, (False,) * 3),
                                                 (lp[0][sl], lp[1][sl].to(kl.dtype)))
            lp_sum += lp_rows.sum()
        if into:
            grads[1] = None  # already where it belongs: autograd returns None for the weight
        # dH stays [n, H] (selected rows) here; the backward scatters it to h's rows.
        ctx.grads = _cast(grads, (h, w, b)) if grads else (None, None, None)
        ctx.idx, ctx.n_rows, ctx.into = idx, h.shape[0], into
        ctx.mark_non_differentiable(kl, ent)
        return (kl * weights).sum() + lp_sum, kl, ent

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_loss, _g_kl, _g_ent):
        if ctx.into and bool(g_loss != 1):
            raise RuntimeError(
                "linear_kl(weight_grad_into=...) added d loss / d weight to the buffer during the forward, "
                f"so the loss must be backpropagated with gradient 1 (loss.backward()), got {float(g_loss)}; "
                "scale the gradients after the backward instead")
        # Scale the gradients built in the forward in place: they are released here (ctx.grads = None),
        # so no second [V, H] buffer is ever allocated for the weight gradient.
        grads = tuple(None if g is None else g.mul_(g_loss.to(g.dtype)) for g in ctx.grads)
        ctx.grads = None
        return *_scatter(grads, ctx.idx, ctx.n_rows), None, None, None, None, None, None, None, None, None, None


def kl(h: Tensor, w: Tensor, b: Tensor | None, teacher: TeacherRows, kind: str, beta: float,
       temperature: float, weights: Tensor | None, rows: Tensor | None = None,
       weight_grad: Tensor | None = None, lp: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, ...]:
    """h [N, H] and the teacher's per-row tensors [N, ...]; outputs (and `weights`) are for the n
    selected rows (`rows`, or all N). weight_grad: a buffer of w's shape in the accumulation dtype
    (eager mode only) that receives d loss / d w during the forward. lp = (targets [n], c [n]) (eager
    mode only): the loss also holds sum c * log p(target), built in the same pass as the KL."""
    n = h.shape[0] if rows is None else rows.shape[0]
    chunk = chunk_rows(n, h.shape[1], w.shape[0])
    if weights is None:
        return _KLRecomputeFn.apply(h, w, b, teacher, kind, beta, temperature, chunk, n, rows)
    return _KLEagerFn.apply(h, w, b, teacher, kind, beta, temperature, chunk, weights, torch.is_grad_enabled(),
                            rows, weight_grad, lp)
