"""Input validation for the public kernels: one clear ValueError per problem."""

from __future__ import annotations

from typing import NoReturn

import torch
from torch import Tensor

from slimkit.errors import SlimkitError


class KernelInputError(SlimkitError, ValueError):
    """Bad input to a slimkit kernel (shape, dtype, value): a SlimkitError and a ValueError."""


def fail(msg: str) -> NoReturn:
    raise KernelInputError(msg)


def float_tensor(name: str, x: object, ndim: int | None = None) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        fail(f"{name} must be a floating-point tensor, got {type(x).__name__}"
             f"{'' if not isinstance(x, Tensor) else ' of ' + str(x.dtype)}")
    if ndim is not None and x.dim() != ndim:
        fail(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if ndim is None and x.dim() < 1:
        fail(f"{name} must have at least 1 dimension, got a scalar")
    return x


def int_tensor(name: str, x: object, shape: tuple[int, ...] | None = None) -> Tensor:
    if not isinstance(x, Tensor) or x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        fail(f"{name} must be an integer tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if shape is not None and tuple(x.shape) != tuple(shape):
        fail(f"{name} has shape {tuple(x.shape)}, expected {tuple(shape)}")
    return x


def same_device(**tensors: Tensor | None) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        fail("inputs are on different devices: " + ", ".join(f"{k}={v}" for k, v in devices.items()))


def in_range(name: str, x: Tensor, hi: int, allowed: int | None = None) -> None:
    """All values of integer tensor x are in [0, hi) (or equal to `allowed`)."""
    if x.numel() == 0:
        return
    bad = (x < 0) | (x >= hi)
    if allowed is not None:
        bad &= x != allowed
    if bool(bad.any()):
        v = int(x[bad][0])
        fail(f"{name} contains {v}, outside [0, {hi})" + ("" if allowed is None else f" and not {allowed}"))


def temperature(t: float) -> float:
    t = float(t)
    if not (t > 0 and t < float("inf")):
        fail(f"temperature must be a positive finite number, got {t}")
    return t


def finite(name: str, x: Tensor | None, allow_neg_inf: bool = False) -> None:
    """Raise if x holds NaN or inf (or only NaN / +inf when allow_neg_inf)."""
    if x is None:
        return
    bad = torch.isnan(x) | (x == float("inf")) if allow_neg_inf else ~torch.isfinite(x)
    if bool(bad.any()):
        fail(f"{name} contains NaN or inf")


def rows_index(rows: Tensor | None, lead: tuple[int, ...], device: torch.device) -> Tensor | None:
    """`rows` as a 1-D int64 index into the flattened positions (a bool mask of shape `lead` too)."""
    if rows is None:
        return None
    n = 1
    for d in lead:
        n *= d
    if isinstance(rows, Tensor) and rows.dtype == torch.bool:
        if tuple(rows.shape) != lead:
            fail(f"rows mask has shape {tuple(rows.shape)}, expected {lead}")
        return rows.reshape(-1).nonzero()[:, 0].to(device)
    rows = int_tensor("rows", rows)
    if rows.dim() != 1:
        fail(f"rows must be a 1-D index tensor or a bool mask, got shape {tuple(rows.shape)}")
    in_range("rows", rows, n)
    return rows.to(device=device, dtype=torch.long)
