"""Triton kernels: fused linear + online logsumexp / entropy / KL, and the recomputing gradient kernel.

Forward (`stats_kernel`, `jsd_kernel`): one program per block of BN token rows walks the vocabulary in
tiles of BV columns; each [BN, BV] logit tile is computed in registers (tl.dot over H in BK steps),
folded into running per-row statistics (online max / sum-exp, as in flash attention) and dropped, so
logits never reach global memory. Per row it writes: student lse L, E_p[z] (entropy = L - E_p[z]),
the target's logit, the teacher's lse Lt and the KL (forward: E_q[t - z] - Lt + L; reverse:
E_p[z - t] - L + Lt). JSD needs L and Lt first, so it is a second pass.

Backward (`grad_kernel`): recomputes one [BN, BV] logit tile (and the teacher's) per program and
writes d loss / d z for a block of rows into a workspace [rows, V]; the caller multiplies it with the
weight and hidden states (cuBLAS), one chunk of rows at a time, so the workspace stays bounded.

H, V and the block sizes are compile-time constants (one compilation per model shape; it also keeps
loops on plain ints, which Triton's CPU interpreter needs).
"""

from __future__ import annotations

import triton
import triton.language as tl

# Teacher kinds and gradient modes (compile-time constants).
T_NONE, T_LIVE, T_DENSE = 0, 1, 2
KL_NONE, KL_FORWARD, KL_REVERSE = 0, 1, 2
G_LINEAR, G_FORWARD, G_REVERSE, G_JSD = 0, 1, 2, 3


@triton.jit
def _logit_tile(h_ptr, w_ptr, b_ptr, rows, cols, row_ok, col_ok, inv_t,
                H: tl.constexpr, HAS_BIAS: tl.constexpr, BN: tl.constexpr, BV: tl.constexpr,
                BK: tl.constexpr, PRECISION: tl.constexpr):
    """[BN, BV] tile of (h @ w.T + b) * inv_t in fp32; -inf in columns past the vocabulary."""
    acc = tl.zeros((BN, BV), dtype=tl.float32)
    for k0 in range(0, H, BK):
        ks = k0 + tl.arange(0, BK)
        k_ok = ks < H
        # int64 offsets: N * H, V * H and N * V overflow int32 at LLM sizes
        a = tl.load(h_ptr + rows[:, None].to(tl.int64) * H + ks[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(w_ptr + cols[:, None].to(tl.int64) * H + ks[None, :],
                    mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        acc += tl.dot(a, tl.trans(b), input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    acc = acc * inv_t
    return tl.where(col_ok[None, :], acc, float("-inf"))


@triton.jit
def _teacher_tile(th_ptr, tw_ptr, tb_ptr, tlp_ptr, rows, cols, row_ok, col_ok, inv_t,
                  HT: tl.constexpr, VT_STRIDE: tl.constexpr, TEACHER: tl.constexpr, T_HAS_BIAS: tl.constexpr,
                  BN: tl.constexpr, BV: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr):
    if TEACHER == 1:
        t = _logit_tile(th_ptr, tw_ptr, tb_ptr, rows, cols, row_ok, col_ok, inv_t,
                        HT, T_HAS_BIAS, BN, BV, BK, PRECISION)
    else:
        t = tl.load(tlp_ptr + rows[:, None].to(tl.int64) * VT_STRIDE + cols[None, :],
                    mask=row_ok[:, None] & col_ok[None, :], other=float("-inf")).to(tl.float32) * inv_t
        t = tl.where(col_ok[None, :], t, float("-inf"))
    return t


@triton.jit
def _safe(m):
    """A running max usable as an offset: 0 while everything seen is -inf (avoids -inf - -inf)."""
    return tl.where(m > float("-inf"), m, 0.0)


@triton.jit
def _wsum(e, x):
    """sum over columns of e * x, with 0 where e == 0 (x may be -inf there)."""
    return tl.sum(tl.where(e > 0, e * x, 0.0), axis=1)


@triton.jit
def stats_kernel(h_ptr, w_ptr, b_ptr, tgt_ptr, th_ptr, tw_ptr, tb_ptr, tlp_ptr,
                 lse_ptr, ez_ptr, zt_ptr, tlse_ptr, kl_ptr, N, inv_t,
                 H: tl.constexpr, V: tl.constexpr, HT: tl.constexpr, VT_STRIDE: tl.constexpr,
                 HAS_BIAS: tl.constexpr, HAS_TARGETS: tl.constexpr, TEACHER: tl.constexpr,
                 T_HAS_BIAS: tl.constexpr, KL: tl.constexpr,
                 BN: tl.constexpr, BV: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr):
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    row_ok = rows < N
    m = tl.full((BN,), float("-inf"), tl.float32)   # student running max
    se = tl.zeros((BN,), tl.float32)                 # sum exp(z - m)
    a = tl.zeros((BN,), tl.float32)                  # sum exp(z - m) z
    mt = tl.full((BN,), float("-inf"), tl.float32)  # teacher running max
    lt = tl.zeros((BN,), tl.float32)                 # sum exp(t - mt)
    d = tl.zeros((BN,), tl.float32)                  # forward: sum exp(t - mt)(t - z); reverse: sum exp(z - m)(z - t)
    zt = tl.zeros((BN,), tl.float32)
    if HAS_TARGETS:
        tgt = tl.load(tgt_ptr + rows, mask=row_ok, other=0)
    for v0 in range(0, V, BV):
        cols = v0 + tl.arange(0, BV)
        col_ok = cols < V
        z = _logit_tile(h_ptr, w_ptr, b_ptr, rows, cols, row_ok, col_ok, inv_t, H, HAS_BIAS, BN, BV, BK, PRECISION)
        m_new = tl.maximum(m, tl.max(z, axis=1))
        alpha = tl.exp(m - _safe(m_new))
        e = tl.exp(z - _safe(m_new)[:, None])
        se = se * alpha + tl.sum(e, axis=1)
        a = a * alpha + _wsum(e, z)
        if HAS_TARGETS:
            zt += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), axis=1)
        if TEACHER != 0:
            t = _teacher_tile(th_ptr, tw_ptr, tb_ptr, tlp_ptr, rows, cols, row_ok, col_ok, inv_t,
                              HT, VT_STRIDE, TEACHER, T_HAS_BIAS, BN, BV, BK, PRECISION)
            mt_new = tl.maximum(mt, tl.max(t, axis=1))
            alpha_t = tl.exp(mt - _safe(mt_new))
            et = tl.exp(t - _safe(mt_new)[:, None])
            lt = lt * alpha_t + tl.sum(et, axis=1)
            if KL == 1:
                d = d * alpha_t + _wsum(et, t - tl.where(col_ok[None, :], z, 0.0))
            if KL == 2:
                d = d * alpha + _wsum(e, z - t)
            mt = mt_new
        m = m_new
    lse = _safe(m) + tl.log(se)
    tl.store(lse_ptr + rows, lse, mask=row_ok)
    tl.store(ez_ptr + rows, a / se, mask=row_ok)
    if HAS_TARGETS:
        tl.store(zt_ptr + rows, zt, mask=row_ok)
    if TEACHER != 0:
        tlse = _safe(mt) + tl.log(lt)
        tl.store(tlse_ptr + rows, tlse, mask=row_ok)
        if KL == 1:
            tl.store(kl_ptr + rows, d / lt - tlse + lse, mask=row_ok)
        if KL == 2:
            tl.store(kl_ptr + rows, d / se - lse + tlse, mask=row_ok)


@triton.jit
def jsd_kernel(h_ptr, w_ptr, b_ptr, th_ptr, tw_ptr, tb_ptr, tlp_ptr, lse_ptr, tlse_ptr,
               loss_ptr, klpm_ptr, N, inv_t, log_beta, log_1mbeta, beta,
               H: tl.constexpr, V: tl.constexpr, HT: tl.constexpr, VT_STRIDE: tl.constexpr,
               HAS_BIAS: tl.constexpr, TEACHER: tl.constexpr, T_HAS_BIAS: tl.constexpr,
               BN: tl.constexpr, BV: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr):
    """Second pass for JSD: beta KL(q||m) + (1-beta) KL(p||m) and KL(p||m), given both lse's."""
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    row_ok = rows < N
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    tlse = tl.load(tlse_ptr + rows, mask=row_ok, other=0.0)
    kq = tl.zeros((BN,), tl.float32)
    kp = tl.zeros((BN,), tl.float32)
    for v0 in range(0, V, BV):
        cols = v0 + tl.arange(0, BV)
        col_ok = cols < V
        s = _logit_tile(h_ptr, w_ptr, b_ptr, rows, cols, row_ok, col_ok, inv_t,
                        H, HAS_BIAS, BN, BV, BK, PRECISION) - lse[:, None]
        lq = _teacher_tile(th_ptr, tw_ptr, tb_ptr, tlp_ptr, rows, cols, row_ok, col_ok, inv_t,
                           HT, VT_STRIDE, TEACHER, T_HAS_BIAS, BN, BV, BK, PRECISION) - tlse[:, None]
        a = lq + log_beta
        b = s + log_1mbeta
        hi = tl.maximum(a, b)
        hi_safe = tl.where(hi > float("-inf"), hi, 0.0)
        lm = hi_safe + tl.log(tl.exp(a - hi_safe) + tl.exp(b - hi_safe))
        kq += _wsum(tl.exp(lq), lq - lm)
        kp += _wsum(tl.exp(s), s - lm)
    tl.store(loss_ptr + rows, beta * kq + (1.0 - beta) * kp, mask=row_ok)
    tl.store(klpm_ptr + rows, kp, mask=row_ok)


@triton.jit
def grad_kernel(h_ptr, w_ptr, b_ptr, th_ptr, tw_ptr, tb_ptr, tlp_ptr, lse_ptr, tlse_ptr,
                c0_ptr, c1_ptr, dz_ptr, N, inv_t, log_beta, log_1mbeta, one_m_beta,
                H: tl.constexpr, V: tl.constexpr, HT: tl.constexpr, VT_STRIDE: tl.constexpr,
                HAS_BIAS: tl.constexpr, TEACHER: tl.constexpr, T_HAS_BIAS: tl.constexpr, MODE: tl.constexpr,
                BN: tl.constexpr, BV: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr):
    """dz (d loss / d scaled logits, times inv_t: d loss / d raw logits) for one [BN, BV] tile.

    MODE 0 (linear): p (c0 + c1 z)               logprob, sparse-teacher buckets
    MODE 1 (forward): c0 (p - q)
    MODE 2 (reverse): c0 p (s - lq - c1)          c1 = per-row KL(p || q)
    MODE 3 (jsd):     c0 (1 - beta) p (s - lm - c1)  c1 = per-row KL(p || m)
    """
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    cols = tl.program_id(1) * BV + tl.arange(0, BV)
    row_ok = rows < N
    col_ok = cols < V
    z = _logit_tile(h_ptr, w_ptr, b_ptr, rows, cols, row_ok, col_ok, inv_t, H, HAS_BIAS, BN, BV, BK, PRECISION)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    c0 = tl.load(c0_ptr + rows, mask=row_ok, other=0.0)
    c1 = tl.load(c1_ptr + rows, mask=row_ok, other=0.0)
    s = z - lse[:, None]
    p = tl.exp(s)
    if MODE == 0:
        dz = p * (c0[:, None] + c1[:, None] * tl.where(col_ok[None, :], z, 0.0))
    else:
        tlse = tl.load(tlse_ptr + rows, mask=row_ok, other=0.0)
        lq = _teacher_tile(th_ptr, tw_ptr, tb_ptr, tlp_ptr, rows, cols, row_ok, col_ok, inv_t,
                           HT, VT_STRIDE, TEACHER, T_HAS_BIAS, BN, BV, BK, PRECISION) - tlse[:, None]
        if MODE == 1:
            dz = c0[:, None] * (p - tl.exp(lq))
        if MODE == 2:
            dz = c0[:, None] * tl.where(p > 0, p * (s - lq - c1[:, None]), 0.0)
        if MODE == 3:
            a = lq + log_beta
            b = s + log_1mbeta
            hi = tl.maximum(a, b)
            hi_safe = tl.where(hi > float("-inf"), hi, 0.0)
            lm = hi_safe + tl.log(tl.exp(a - hi_safe) + tl.exp(b - hi_safe))
            dz = (c0 * one_m_beta)[:, None] * tl.where(p > 0, p * (s - lm - c1[:, None]), 0.0)
    dz = dz * inv_t
    tl.store(dz_ptr + rows[:, None].to(tl.int64) * V + cols[None, :], dz.to(dz_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])
