"""Triton backend: autograd Functions around triton_kernels.

Forward: one fused kernel launch per op (two for JSD); only per-row statistics are written. Backward:
for each chunk of rows, `grad_kernel` recomputes the logits tile by tile and writes d loss / d logits
into a [chunk, V] workspace, which cuBLAS multiplies into the hidden, weight and bias gradients.
The sparse top-k teacher reads the student's K logits with a small gather-matmul in torch and takes
the student's tail mass as 1 - sum of its top-k probabilities (the kernels never hold the ids).
"""

from __future__ import annotations

import math
import os

import torch
import triton
from torch import Tensor

from slimkit.kernels import _math
from slimkit.kernels import triton_kernels as tk
from slimkit.kernels._checks import fail
from slimkit.kernels._teacher import TeacherRows, select
from slimkit.kernels.chunked import chunk_rows

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _blocks(n_vocab: int, teacher: bool = False) -> dict:
    """Tile sizes. Not autotuned: a common bf16 matmul configuration, half the rows when a live
    teacher's tile shares the registers. Env SLIMKIT_TRITON_BLOCKS="BN,BV,BK,num_warps,num_stages" overrides it for tuning."""
    if _INTERPRET:  # numpy does the work: few, large programs are fastest
        return {"BN": 32, "BV": 256 if n_vocab >= 4096 else 128, "BK": 32}
    if os.environ.get("SLIMKIT_TRITON_BLOCKS"):
        bn, bv, bk, warps, stages = (int(x) for x in os.environ["SLIMKIT_TRITON_BLOCKS"].split(","))
        return {"BN": bn, "BV": bv, "BK": bk, "num_warps": warps, "num_stages": stages}
    return {"BN": 64 if teacher else 128, "BV": 128, "BK": 64, "num_warps": 8, "num_stages": 3}


def _precision(x: Tensor) -> str:
    return "ieee" if x.dtype == torch.float32 else "tf32"


def _check(*xs: Tensor | None) -> None:
    for x in xs:
        if x is not None and x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            fail(f"the triton backend takes float32, float16 or bfloat16 tensors, got {x.dtype}")


def _teacher_args(t: TeacherRows | None, dummy: Tensor) -> dict:
    """Pointers and constants describing the teacher for the kernels."""
    if t is None or t.kind == "sparse":
        return dict(th=dummy, tw=dummy, tb=dummy, tlp=dummy, HT=16, VT_STRIDE=0, TEACHER=tk.T_NONE, T_HAS_BIAS=False)
    if t.kind == "live":
        return dict(th=t.hidden.contiguous(), tw=t.weight.contiguous(),
                    tb=dummy if t.bias is None else t.bias.contiguous(), tlp=dummy,
                    HT=t.hidden.shape[1], VT_STRIDE=0, TEACHER=tk.T_LIVE, T_HAS_BIAS=t.bias is not None)
    lp = t.logprobs if t.logprobs.stride(1) == 1 else t.logprobs.contiguous()
    return dict(th=dummy, tw=dummy, tb=dummy, tlp=lp, HT=16, VT_STRIDE=lp.stride(0),
                TEACHER=tk.T_DENSE, T_HAS_BIAS=False)


def _stats(h, w, b, temperature, targets=None, teacher=None, kl_mode=tk.KL_NONE):
    n, hsize = h.shape
    v = w.shape[0]
    f = dict(dtype=torch.float32, device=h.device)
    out = {k: torch.empty(n, **f) for k in ("lse", "ez", "zt", "tlse", "kl")}
    ta = _teacher_args(teacher, h)
    cfg = _blocks(v, ta["TEACHER"] != tk.T_NONE)
    grid = (triton.cdiv(n, cfg["BN"]),)
    tk.stats_kernel[grid](
        h, w, h if b is None else b, h if targets is None else targets,
        ta["th"], ta["tw"], ta["tb"], ta["tlp"],
        out["lse"], out["ez"], out["zt"], out["tlse"], out["kl"], n, 1.0 / temperature,
        H=hsize, V=v, HT=ta["HT"], VT_STRIDE=ta["VT_STRIDE"], HAS_BIAS=b is not None,
        HAS_TARGETS=targets is not None, TEACHER=ta["TEACHER"], T_HAS_BIAS=ta["T_HAS_BIAS"], KL=kl_mode,
        PRECISION=_precision(h), **cfg)
    return out


def _jsd(h, w, b, temperature, teacher, lse, tlse, beta):
    n, hsize = h.shape
    loss, klpm = torch.empty_like(lse), torch.empty_like(lse)
    ta = _teacher_args(teacher, h)
    cfg = _blocks(w.shape[0], True)
    tk.jsd_kernel[(triton.cdiv(n, cfg["BN"]),)](
        h, w, h if b is None else b, ta["th"], ta["tw"], ta["tb"], ta["tlp"], lse, tlse, loss, klpm, n,
        1.0 / temperature, math.log(beta), math.log1p(-beta), beta,
        H=hsize, V=w.shape[0], HT=ta["HT"], VT_STRIDE=ta["VT_STRIDE"], HAS_BIAS=b is not None,
        TEACHER=ta["TEACHER"], T_HAS_BIAS=ta["T_HAS_BIAS"], PRECISION=_precision(h), **cfg)
    return loss, klpm


def _backward(h, w, b, temperature, needs, mode, lse, c0, c1, teacher=None, tlse=None, beta=0.5,
              fix=None):
    """Gradients wrt (h, w, b) given per-row coefficients; `fix(dz, sl)` adds sparse corrections."""
    n, hsize = h.shape
    v = w.shape[0]
    acc = torch.float32
    dh = torch.empty(h.shape, dtype=h.dtype, device=h.device) if needs[0] else None
    dw = torch.zeros(w.shape, dtype=acc, device=w.device) if needs[1] else None
    db = torch.zeros(v, dtype=acc, device=w.device) if b is not None and needs[2] else None
    ta = _teacher_args(teacher, h)
    cfg = _blocks(v, ta["TEACHER"] != tk.T_NONE)
    work_dtype = torch.float32 if h.dtype == torch.float32 else h.dtype
    chunk = chunk_rows(n, hsize, v)
    inv_t = 1.0 / temperature
    for i in range(0, n, chunk):
        sl = slice(i, min(n, i + chunk))
        rows = sl.stop - sl.start
        dz = torch.empty(rows, v, dtype=work_dtype, device=h.device)
        hs = h[sl]
        grid = (triton.cdiv(rows, cfg["BN"]), triton.cdiv(v, cfg["BV"]))
        tk.grad_kernel[grid](
            hs, w, h if b is None else b, ta["th"][sl] if teacher is not None and teacher.kind == "live" else ta["th"],
            ta["tw"], ta["tb"], ta["tlp"][sl] if teacher is not None and teacher.kind == "dense" else ta["tlp"],
            lse[sl], (tlse if tlse is not None else lse)[sl], c0[sl], c1[sl], dz, rows, inv_t,
            math.log(beta), math.log1p(-beta), 1.0 - beta,
            H=hsize, V=v, HT=ta["HT"], VT_STRIDE=ta["VT_STRIDE"], HAS_BIAS=b is not None,
            TEACHER=ta["TEACHER"], T_HAS_BIAS=ta["T_HAS_BIAS"], MODE=mode, PRECISION=_precision(h), **cfg)
        if fix is not None:
            fix(dz, sl)
        if dh is not None:
            dh[sl] = dz.to(w.dtype) @ w
        if dw is not None:
            dw += (dz.T.to(h.dtype) @ hs).to(acc)
        if db is not None:
            db += dz.sum(0).to(acc)
    return tuple(None if g is None else g.to(x.dtype) for g, x in zip((dh, dw, db), (h, w, b), strict=True))


class _LogprobFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, b, targets, temperature):
        st = _stats(h, w, b, temperature, targets=targets)
        ctx.save_for_backward(h, w, b, targets, st["lse"], st["ez"])
        ctx.temperature = temperature
        return st["zt"] - st["lse"], st["lse"] - st["ez"], st["lse"]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_lp, g_ent, g_lse):
        h, w, b, targets, lse, ez = ctx.saved_tensors
        zero = torch.zeros_like(lse)
        g_lp, g_ent, g_lse = (zero if g is None else g.float() for g in (g_lp, g_ent, g_lse))
        c0 = (g_lse - g_lp + g_ent * ez).contiguous()
        c1 = (-g_ent).contiguous()
        inv_t = 1.0 / ctx.temperature

        def fix(dz, sl):
            dz.scatter_add_(1, targets[sl, None], (g_lp[sl, None] * inv_t).to(dz.dtype))

        grads = _backward(h, w, b, ctx.temperature, ctx.needs_input_grad[:3], tk.G_LINEAR, lse, c0, c1, fix=fix)
        return *grads, None, None


def logprob(h: Tensor, w: Tensor, b: Tensor | None, targets: Tensor, temperature: float,
            rows: Tensor | None = None):
    _check(h, w, b)
    h, _ = select(h, None, rows)
    return _LogprobFn.apply(h.contiguous(), w.contiguous(), b, targets.contiguous(), temperature)


def _student_topk_logits(h: Tensor, w: Tensor, b: Tensor | None, ids: Tensor, temperature: float) -> Tensor:
    """[N, K] student logits at the teacher's ids, gathered in row chunks (no [N, V] tensor)."""
    n, k = ids.shape
    out = torch.empty(n, k, dtype=torch.float32, device=h.device)
    step = max(1, (64 * 2**20) // max(1, k * h.shape[1] * h.element_size()))
    for i in range(0, n, step):
        sl = slice(i, i + step)
        out[sl] = torch.einsum("nkh,nh->nk", w[ids[sl]], h[sl]).float()
    if b is not None:
        out += b[ids].float()
    return out / temperature


class _KLFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, b, teacher, kind, beta, temperature):
        ctx.args = (teacher, kind, beta, temperature)
        if teacher.kind == "sparse":
            st = _stats(h, w, b, temperature)
            zk = _student_topk_logits(h, w, b, teacher.ids, temperature)
            pk = (zk - st["lse"][:, None]).exp()
            # Student tail mass 1 - sum(top-k probs): exact to rounding unless the top-k hold ~all mass.
            tail_lp = torch.log1p(-pk.sum(-1).clamp_max(1.0 - 2.0**-24))
            tail = tail_lp.exp()
            s = torch.cat([zk - st["lse"][:, None], tail_lp[:, None]], dim=1)
            loss, g = _math.kind_loss_and_grad(s, _math.teacher_buckets(teacher.logprobs.float()), kind, beta)
            ctx.save_for_backward(h, w, b, st["lse"], pk, tail, g)
            ent = st["lse"] - st["ez"]
        else:
            kl_mode = {"forward": tk.KL_FORWARD, "reverse": tk.KL_REVERSE}.get(kind, tk.KL_NONE)
            st = _stats(h, w, b, temperature, teacher=teacher, kl_mode=kl_mode)
            loss, c1 = st["kl"], st["kl"]
            if kind == "jsd":
                loss, c1 = _jsd(h, w, b, temperature, teacher, st["lse"], st["tlse"], beta)
            ctx.save_for_backward(h, w, b, st["lse"], st["tlse"], c1)
            ent = st["lse"] - st["ez"]
        ctx.mark_non_differentiable(ent)
        return loss, ent

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_kl, _g_ent):
        teacher, kind, beta, temperature = ctx.args
        needs = ctx.needs_input_grad[:3]
        g_kl = g_kl.float()
        if teacher.kind == "sparse":
            h, w, b, lse, pk, tail, g = ctx.saved_tensors
            gb = g * g_kl[:, None]
            ratio = gb[:, -1] / tail
            c0 = (ratio - gb.sum(-1)).contiguous()
            corr = (gb[:, :-1] - pk * ratio[:, None]) / temperature

            def fix(dz, sl):
                dz.scatter_add_(1, teacher.ids[sl], corr[sl].to(dz.dtype))

            grads = _backward(h, w, b, temperature, needs, tk.G_LINEAR, lse, c0, torch.zeros_like(c0), fix=fix)
        else:
            h, w, b, lse, tlse, c1 = ctx.saved_tensors
            mode = {"forward": tk.G_FORWARD, "reverse": tk.G_REVERSE, "jsd": tk.G_JSD}[kind]
            grads = _backward(h, w, b, temperature, needs, mode, lse, g_kl.contiguous(), c1,
                              teacher=teacher, tlse=tlse, beta=beta)
        return *grads, None, None, None, None


def kl(h: Tensor, w: Tensor, b: Tensor | None, teacher: TeacherRows, kind: str, beta: float,
       temperature: float, weights: Tensor | None, rows: Tensor | None = None) -> tuple[Tensor, ...]:
    _check(h, w, b, teacher.hidden, teacher.weight, teacher.bias)
    h, teacher = select(h, teacher, rows)
    if teacher.kind == "live":
        teacher = teacher._replace(hidden=teacher.hidden.contiguous(), weight=teacher.weight.contiguous())
    per_row, ent = _KLFn.apply(h.contiguous(), w.contiguous(), b, teacher, kind, beta, temperature)
    if weights is None:
        return per_row, ent
    return (per_row * weights.to(per_row.dtype)).sum(), per_row.detach(), ent
