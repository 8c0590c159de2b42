"""Small fp32 problems and their fp64 twins for comparing backends with the reference."""

from __future__ import annotations

import torch

from slimkit.kernels import LiveTeacher, SparseTeacher


def close(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-4, what: str = "") -> None:
    """got (fp32) vs want (fp64 reference): elementwise rtol, plus rtol * max|want| absolute slack
    (entries near zero are differences of O(max) terms)."""
    got, want = got.detach().double(), want.detach().double()
    assert got.shape == want.shape, (what, got.shape, want.shape)
    atol = rtol * float(want.abs().max()) if want.numel() else 0.0
    err = (got - want).abs() - rtol * want.abs()
    assert bool((err <= atol).all()), f"{what}: max err {float((got - want).abs().max()):.3g}, max |want| {atol / rtol:.3g}"


def student(n: int, h: int, v_rows: int, seed: int, bias: bool = True, scale: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g)
    weight = torch.randn(v_rows, h, generator=g) * scale
    b = torch.randn(v_rows, generator=g) if bias else None
    return hidden, weight, b


def leaves(*xs, dtype=torch.float64):
    """Fresh leaf copies (requires_grad) of xs in dtype (None stays None)."""
    return [None if x is None else x.detach().to(dtype).clone().requires_grad_() for x in xs]


def teacher(kind: str, n: int, v_rows: int, vocab: int, seed: int, k: int = 8, ht: int = 24):
    """(teacher for fp32, teacher for fp64): live, dense or sparse (top-k of a random teacher)."""
    g = torch.Generator().manual_seed(seed + 1000)
    th = torch.randn(n, ht, generator=g)
    tw = torch.randn(v_rows, ht, generator=g) * 0.7
    if kind == "live":
        return LiveTeacher(th, tw), LiveTeacher(th.double(), tw.double())
    lp = torch.log_softmax((th @ tw.T)[:, :vocab].double(), -1)
    if kind == "dense":
        pad = torch.full((n, v_rows - vocab), -30.0, dtype=torch.float64)
        dense = torch.cat([lp, pad], dim=1).float()
        return dense, dense.double()
    vals, ids = lp.topk(k, -1)
    return SparseTeacher(ids, vals.float()), SparseTeacher(ids, vals.float().double())
