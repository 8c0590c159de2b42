"""Fused linear -> log-prob / entropy / KL over the whole vocabulary, without [N, V] logits.

Two ops, autograd-aware, with the same semantics on every backend:

``linear_logprob(hidden, weight, targets, *, temperature=1.0, rows=None, bias=None, ignore_index=-100,
vocab_size=None, backend=None) -> LogprobOutput(logprob, entropy, lse)``

    z = (hidden @ weight.T + bias) / temperature over the first `vocab_size` ids, per position:
    logprob = log_softmax(z)[target], entropy = -sum softmax(z) * log_softmax(z), lse = logsumexp(z).
    All three are differentiable wrt hidden, weight and bias. Where target == ignore_index, logprob is
    0 (no gradient); entropy and lse are still computed there.

``linear_kl(student_hidden, student_weight, teacher, *, kind="forward", beta=0.5, temperature=1.0,
rows=None, reduction="sum", ignore_index=-100, labels=None, student_bias=None, vocab_size=None,
backend=None, weight_grad_into=None) -> KLOutput(loss, kl, entropy)``

    Student log-probs s = log_softmax((student_hidden @ student_weight.T + student_bias) / temperature),
    teacher log-probs lq, per position:
    - kind="forward": KL(teacher || student) = sum q (lq - s)   (mode covering; classic distillation)
    - kind="reverse": KL(student || teacher) = sum p (s - lq)   (mode seeking)
    - kind="jsd": beta * KL(teacher || m) + (1 - beta) * KL(student || m), m = beta q + (1 - beta) p,
      0 < beta < 1 (beta = 0.5 is the symmetric Jensen-Shannon divergence).
    No temperature**2 factor is applied: multiply the loss yourself if you want it.

    `teacher` is one of:
    - a live teacher: ``LiveTeacher(hidden [..., Ht], weight [Vt, Ht], bias=None)`` (or a plain tuple
      of two float tensors): lq = log_softmax((hidden @ weight.T + bias) / temperature). Never
      differentiated (no gradient flows to the teacher).
    - dense teacher log-probs: a float tensor [..., Vt]: lq = log_softmax(logprobs / temperature)
      over the first vocab_size ids, so it equals the live teacher that produced them at any
      temperature (-inf entries are allowed).
    - a sparse top-k teacher: ``SparseTeacher(ids [..., K], logprobs [..., K])`` (or a tuple (int
      tensor, float tensor)): K distinct ids < vocab_size, 1 <= K < vocab_size. The divergence is taken
      between the K+1 buckets "each of the K ids" and "everything else": teacher tail mass
      1 - sum(exp(logprobs)) (clamped at 0), student tail mass = its exact mass outside ids. The given
      logprobs are used as they are: `temperature` divides the student logits only (the top-k of a
      re-tempered distribution cannot be derived from the top-k alone; produce them at that temperature).
    Teacher tensors are aligned with the student's positions (same leading shape); `rows` and
    `labels` apply to both.

    Returns KLOutput: `loss` (differentiable wrt student hidden, weight, bias), and detached per-token
    `kl` (the divergence above, 0 at ignored positions) and `entropy` (of the student, at every selected
    position, ignored ones included). reduction="none": loss = the per-token divergence (0 at ignored
    positions), differentiable; "sum": its sum over the selected positions; "mean": the sum divided by
    the number of selected positions whose label != ignore_index (0 if there are none). For distillation
    with gradient accumulation use reduction="sum" and divide by the total token count yourself.
    Positions are ignored where `labels == ignore_index` (labels: int tensor of the leading shape);
    without labels nothing is ignored.

    weight_grad_into (reduction "sum"/"mean" only): a float32 tensor of student_weight's shape (float64
    for float64 inputs), typically the weight's persistent `.grad` (gradient-accumulation fusion, as in
    Megatron-LM). d loss / d student_weight is added to it instead of being returned through autograd,
    so no [V, H] weight gradient is ever allocated; the weight gets no autograd gradient from this call.
    Contract: backpropagate `loss` once, with gradient 1 (`loss.backward()`; scale the gradients
    afterwards if you need a normalization). The chunked backend adds the gradient during the forward
    (while it builds it chunk by chunk) and its backward raises RuntimeError if the incoming gradient is
    not exactly 1; a loss that is never backpropagated leaves its gradient in the buffer all the same.
    The reference and triton backends add the (correctly scaled) gradient during the backward, through a
    detached copy of the weight, so they allocate the [V, H] gradient as usual.

Shared arguments:
- hidden [..., H] with any leading shape; targets/labels have that leading shape. Outputs have the
  leading shape, or [len(rows)] when `rows` is given.
- rows: a 1-D int index into the flattened positions (or a bool mask of the leading shape), any order,
  repeats allowed. Only those positions are computed; outputs are for the selected rows only, in `rows`
  order (a mask selects in position order). Gradients reach only the selected rows (summed over
  repeats). chunked gathers the selected rows of the student and teacher chunk by chunk (no
  [len(rows), H] copies), reference and triton up front.
- vocab_size: the true vocabulary size when weight (or the teacher) has padding rows past it (e.g.
  151936 vs 152064, or 1000 vs 1024). Ids >= vocab_size get probability 0 (logits masked to -inf,
  implemented by leaving those rows of weight out; their gradient is 0). Default: weight.shape[0], and
  for linear_kl the smallest vocabulary among student and teacher.
- backend: "reference" (plain torch, materializes [N, V]; the fp64 test oracle), "chunked" (torch,
  chunks of token rows; the CPU path) or "triton" (CUDA tiles with an online logsumexp; on CPU only
  under TRITON_INTERPRET=1). Default: env SLIMKIT_KERNEL_BACKEND, else triton for CUDA tensors when
  triton imports, else chunked.
  - chunked: rows per chunk from `chunked.chunk_rows` (the [chunk, V] block about 13x the size of the
    selected hidden states, >= 32 rows, under env SLIMKIT_KERNEL_CHUNK_MB MiB, default 512); env
    SLIMKIT_KERNEL_CHUNK_ROWS fixes it. linear_kl with reduction "sum"/"mean" builds its gradients
    during the forward (one pass over the vocabulary); "none" and linear_logprob keep per-row
    statistics and recompute the logits in the backward.
  - triton: the forward never writes logits to memory; the backward recomputes them tile by tile into
    a [chunk, V] workspace (same chunk rule) that cuBLAS multiplies into the gradients. For a sparse
    teacher it takes the student's tail mass as 1 - sum of its top-k probabilities (exact to fp32
    rounding unless the top-k hold nearly all the mass); chunked and reference compute the tail
    exactly. Accepts float32 / float16 / bfloat16 (no float64).
- Results are float32 (float64 for float64 inputs); gradients come back in the inputs' dtypes.
- Bad input (shapes, dtypes, ids out of range, NaN/inf in what was used) raises KernelInputError, a
  slimkit.errors.SlimkitError and a ValueError.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
from torch import Tensor

from slimkit.kernels import _checks as chk
from slimkit.kernels._checks import KernelInputError
from slimkit.kernels._teacher import LiveTeacher, SparseTeacher, TeacherRows

__all__ = ["KLOutput", "KernelInputError", "LiveTeacher", "LogprobOutput", "SparseTeacher",
           "linear_kl", "linear_logprob", "resolve_backend"]

BACKENDS = ("reference", "chunked", "triton")
KINDS = ("forward", "reverse", "jsd")
REDUCTIONS = ("sum", "mean", "none")


class LogprobOutput(NamedTuple):
    logprob: Tensor
    entropy: Tensor
    lse: Tensor


class KLOutput(NamedTuple):
    loss: Tensor
    kl: Tensor
    entropy: Tensor


def _triton_usable(device: torch.device) -> bool:
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """The backend a call uses: the argument, else SLIMKIT_KERNEL_BACKEND, else triton on CUDA."""
    choice = backend or os.environ.get("SLIMKIT_KERNEL_BACKEND") or None
    if choice is None:
        return "triton" if device.type == "cuda" and _triton_usable(device) else "chunked"
    if choice not in BACKENDS:
        chk.fail(f"unknown kernel backend {choice!r}; choose one of {', '.join(BACKENDS)}")
    if choice == "triton" and not _triton_usable(device):
        chk.fail(f"the triton backend needs CUDA tensors (or TRITON_INTERPRET=1) and triton installed; "
                 f"got tensors on {device}")
    return choice


def _module(backend: str):
    if backend == "reference":
        from slimkit.kernels import reference as mod
    elif backend == "chunked":
        from slimkit.kernels import chunked as mod
    else:
        from slimkit.kernels import triton_ops as mod
    return mod


def _vocab(vocab_size: int | None, sizes: list[int]) -> int:
    v = min(sizes) if vocab_size is None else int(vocab_size)
    if not 1 <= v <= min(sizes):
        chk.fail(f"vocab_size {v} must be between 1 and the smallest vocabulary given ({min(sizes)})")
    return v


def _student(hidden: Tensor, weight: Tensor, bias: Tensor | None, names: tuple[str, str, str]):
    hidden = chk.float_tensor(names[0], hidden)
    weight = chk.float_tensor(names[1], weight, ndim=2)
    if weight.shape[1] != hidden.shape[-1]:
        chk.fail(f"{names[0]} has hidden size {hidden.shape[-1]} but {names[1]} has shape "
                 f"{tuple(weight.shape)} (expected [V, {hidden.shape[-1]}])")
    if hidden.dtype != weight.dtype:
        chk.fail(f"{names[0]} is {hidden.dtype} but {names[1]} is {weight.dtype}")
    if bias is not None:
        chk.float_tensor(names[2], bias, ndim=1)
        if bias.shape[0] != weight.shape[0]:
            chk.fail(f"{names[2]} has {bias.shape[0]} entries, {names[1]} has {weight.shape[0]} rows")
    chk.same_device(**{names[0]: hidden, names[1]: weight, names[2]: bias})
    return hidden, weight


def _flat(x: Tensor, lead: tuple[int, ...]) -> Tensor:
    """Flatten the leading dims of x ([*lead, ...] -> [N, ...])."""
    return x.reshape(-1, *x.shape[len(lead):])


def _select(x: Tensor, lead: tuple[int, ...], idx: Tensor | None) -> Tensor:
    """Flatten the leading dims of x and keep the selected rows (small per-row tensors only: the
    hidden states go to the backends whole, with the index)."""
    x = _flat(x, lead)
    return x if idx is None else x.index_select(0, idx)


def _vocab_rows(x: Tensor | None, v: int) -> Tensor | None:
    """The first v rows of a weight / bias (x itself when that is all of it: a slice would make autograd
    copy the gradient into a new [V, H] buffer)."""
    return x if x is None or x.shape[0] == v else x[:v]


def _out_shape(lead: tuple[int, ...], idx: Tensor | None) -> tuple[int, ...]:
    return lead if idx is None else (idx.numel(),)


def _check_outputs(outputs: list[Tensor], idx: Tensor | None,
                   inputs: dict[str, tuple[Tensor | None, bool, bool]]) -> None:
    """Cheap path: only when an output is non-finite, look for the input that caused it. inputs: name ->
    (tensor, -inf allowed, per-row tensor [N, ...] of which only the `idx` rows were used)."""
    if all(bool(torch.isfinite(o).all()) for o in outputs):
        return
    for name, (x, allow_neg_inf, per_row) in inputs.items():
        chk.finite(name, x[idx] if x is not None and per_row and idx is not None else x, allow_neg_inf)


def linear_logprob(hidden: Tensor, weight: Tensor, targets: Tensor, *, temperature: float = 1.0,
                   rows: Tensor | None = None, bias: Tensor | None = None, ignore_index: int = -100,
                   vocab_size: int | None = None, backend: str | None = None) -> LogprobOutput:
    """Log-prob of `targets`, entropy and logsumexp of softmax((hidden @ weight.T + bias) / temperature)
    per position, never materializing [N, V] logits. See the module docstring for exact semantics.

    >>> out = linear_logprob(h, lm_head.weight, next_ids, rows=answer_positions)
    >>> out.logprob.sum().backward()
    """
    hidden, weight = _student(hidden, weight, bias, ("hidden", "weight", "bias"))
    lead = tuple(hidden.shape[:-1])
    targets = chk.int_tensor("targets", targets, lead)
    chk.same_device(hidden=hidden, targets=targets)
    t = chk.temperature(temperature)
    v = _vocab(vocab_size, [weight.shape[0]])
    idx = chk.rows_index(rows, lead, hidden.device)
    h = _flat(hidden, lead)
    tg = _select(targets, lead, idx).long()
    chk.in_range("targets", tg, v, allowed=ignore_index)
    ignored = tg == ignore_index
    tg = tg.masked_fill(ignored, 0)
    mod = _module(resolve_backend(backend, hidden.device))
    w, b = _vocab_rows(weight, v), _vocab_rows(bias, v)
    lp, ent, lse = mod.logprob(h, w, b, tg, t, idx)
    _check_outputs([lse], idx, {"hidden": (h, False, True), "weight": (w, False, False), "bias": (b, False, False)})
    lp = lp.masked_fill(ignored, 0.0)
    shape = _out_shape(lead, idx)
    return LogprobOutput(lp.reshape(shape), ent.reshape(shape), lse.reshape(shape))


def _teacher(teacher: object, lead: tuple[int, ...], idx: Tensor | None, student_vocab: int,
             vocab_size: int | None) -> tuple[TeacherRows, int]:
    """Normalize the teacher argument: flatten the leading dims, slice the vocabulary, validate (the
    sparse ids and logprobs at the selected rows). Rows are selected by the backend."""
    if isinstance(teacher, tuple) and len(teacher) in (2, 3) and not isinstance(teacher, SparseTeacher):
        first = teacher[0]
        if isinstance(first, Tensor) and not first.is_floating_point():
            teacher = SparseTeacher(*teacher)
        elif not isinstance(teacher, LiveTeacher):
            teacher = LiveTeacher(*teacher)
    if isinstance(teacher, LiveTeacher):
        th, tw = _student(teacher.hidden, teacher.weight, teacher.bias,
                          ("teacher hidden", "teacher weight", "teacher bias"))
        if tuple(th.shape[:-1]) != lead:
            chk.fail(f"teacher hidden has leading shape {tuple(th.shape[:-1])}, student has {lead}")
        v = _vocab(vocab_size, [student_vocab, tw.shape[0]])
        tb = None if teacher.bias is None else teacher.bias[:v].detach()
        return TeacherRows("live", hidden=_flat(th.detach(), lead), weight=tw[:v].detach(), bias=tb), v
    if isinstance(teacher, SparseTeacher):
        ids = chk.int_tensor("teacher ids", teacher.ids)
        lp = chk.float_tensor("teacher logprobs", teacher.logprobs)
        if tuple(ids.shape[:-1]) != lead or ids.shape != lp.shape or ids.dim() != len(lead) + 1:
            chk.fail(f"sparse teacher ids {tuple(ids.shape)} and logprobs {tuple(lp.shape)} must both be "
                     f"[{', '.join(map(str, lead))}, K]")
        v = _vocab(vocab_size, [student_vocab])
        if not 1 <= ids.shape[-1] < v:
            chk.fail(f"sparse teacher K={ids.shape[-1]} must be between 1 and vocab_size - 1 ({v - 1})")
        ids, lp = _flat(ids, lead).long(), _flat(lp.detach(), lead)
        sel_ids, sel_lp = (ids, lp) if idx is None else (ids[idx], lp[idx])
        chk.in_range("teacher ids", sel_ids, v)
        chk.finite("teacher logprobs", sel_lp, allow_neg_inf=True)
        if bool((sel_lp > 1e-4).any()):
            chk.fail("teacher logprobs must be log-probabilities (<= 0); got positive values")
        return TeacherRows("sparse", ids=ids, logprobs=lp), v
    if isinstance(teacher, Tensor):
        lp = chk.float_tensor("teacher logprobs", teacher)
        if tuple(lp.shape[:-1]) != lead:
            chk.fail(f"dense teacher logprobs have shape {tuple(lp.shape)}, expected [{', '.join(map(str, lead))}, V]")
        v = _vocab(vocab_size, [student_vocab, lp.shape[-1]])
        return TeacherRows("dense", logprobs=_flat(lp.detach(), lead)[:, :v]), v
    chk.fail("teacher must be LiveTeacher(hidden, weight[, bias]), a dense logprob tensor [..., V], or "
             f"SparseTeacher(ids, logprobs); got {type(teacher).__name__}")


def _weight_grad_buffer(buf: Tensor, weight: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        chk.fail("weight_grad_into needs reduction 'sum' or 'mean' (a scalar loss)")
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
    if not isinstance(buf, Tensor) or buf.shape != weight.shape or buf.dtype != acc:
        got = f"{tuple(buf.shape)} {buf.dtype}" if isinstance(buf, Tensor) else type(buf).__name__
        chk.fail(f"weight_grad_into must be a {acc} tensor of student_weight's shape {tuple(weight.shape)}, got {got}")
    if buf.device != weight.device or buf.requires_grad:
        chk.fail("weight_grad_into must be on student_weight's device and not require grad")
    return buf


def _grad_through_hook(weight: Tensor, into: Tensor) -> Tensor:
    """A detached copy of the weight whose gradient, once autograd has accumulated it, is added to the
    first rows of `into` and dropped (the fallback of backends without a fused weight-gradient path)."""
    leaf = weight.detach().requires_grad_(weight.requires_grad)
    if leaf.requires_grad:
        def add(p: Tensor) -> None:
            into.add_(p.grad[: into.shape[0]].to(into.dtype))
            p.grad = None

        leaf.register_post_accumulate_grad_hook(add)
    return leaf


def linear_kl(student_hidden: Tensor, student_weight: Tensor, teacher: object, *, kind: str = "forward",
              beta: float = 0.5, temperature: float = 1.0, rows: Tensor | None = None,
              reduction: str = "sum", ignore_index: int = -100, labels: Tensor | None = None,
              student_bias: Tensor | None = None, vocab_size: int | None = None,
              backend: str | None = None, weight_grad_into: Tensor | None = None,
              logprob_targets: Tensor | None = None, logprob_coef: Tensor | None = None) -> KLOutput:
    """Divergence between the student's softmax((h @ W.T + b) / T) and a teacher, per position, never
    materializing [N, V] logits. See the module docstring for exact semantics.

    >>> out = linear_kl(h_s, student.lm_head.weight, LiveTeacher(h_t, teacher.lm_head.weight),
    ...                 kind="forward", labels=labels, reduction="sum")
    >>> (out.loss / n_tokens).backward(); log(out.kl.mean(), out.entropy.mean())

    `logprob_targets` and `logprob_coef` (both [...], reduction 'sum'): the loss also holds
    sum_i coef_i * log p_i(target_i), the student's log-prob of a target per row times a constant (e.g.
    a DPO term's d loss / d log-prob, from a no-grad `linear_logprob` pass). The chunked backend builds
    its gradient in the same pass over the vocabulary as the KL's; the others add a `linear_logprob`.
    """
    hidden, weight = _student(student_hidden, student_weight, student_bias,
                              ("student_hidden", "student_weight", "student_bias"))
    if kind not in KINDS:
        chk.fail(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    if reduction not in REDUCTIONS:
        chk.fail(f"unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")
    beta = float(beta)
    if kind == "jsd" and not 0.0 < beta < 1.0:
        chk.fail(f"jsd needs 0 < beta < 1, got {beta} (use kind='forward' or 'reverse' for the ends)")
    t = chk.temperature(temperature)
    lead = tuple(hidden.shape[:-1])
    idx = chk.rows_index(rows, lead, hidden.device)
    tch, v = _teacher(teacher, lead, idx, weight.shape[0], vocab_size)
    chk.same_device(student_hidden=hidden, teacher=next(x for x in (tch.hidden, tch.logprobs) if x is not None))
    h = _flat(hidden, lead)
    n = h.shape[0] if idx is None else idx.shape[0]
    if labels is not None:
        labels = chk.int_tensor("labels", labels, lead)
        valid = _select(labels, lead, idx).to(hidden.device) != ignore_index
    else:
        valid = torch.ones(n, dtype=torch.bool, device=hidden.device)
    name = resolve_backend(backend, hidden.device)
    mod = _module(name)
    into = None
    if weight_grad_into is not None:
        into = _weight_grad_buffer(weight_grad_into, weight, reduction)[:v]
        if name != "chunked":
            weight, into = _grad_through_hook(weight, into), None
    w, b = _vocab_rows(weight, v), _vocab_rows(student_bias, v)
    shape = _out_shape(lead, idx)
    lp = None
    if (logprob_targets is None) != (logprob_coef is None):
        chk.fail("logprob_targets and logprob_coef go together")
    if logprob_targets is not None:
        if reduction != "sum":
            chk.fail(f"logprob_targets needs reduction 'sum', got {reduction!r}")
        tg = _select(chk.int_tensor("logprob_targets", logprob_targets, lead), lead, idx).long()
        chk.in_range("logprob_targets", tg, v)
        if tuple(chk.float_tensor("logprob_coef", logprob_coef).shape) != lead:
            chk.fail(f"logprob_coef has shape {tuple(logprob_coef.shape)}, expected {lead}")
        lp = (tg, _select(logprob_coef, lead, idx).detach().to(hidden.device))
    if lp is not None and name != "chunked":  # one more pass over the vocabulary for the log-prob term
        extra_lp = (lp[1].to(torch.float64 if h.dtype == torch.float64 else torch.float32)
                    * mod.logprob(h, w, b, lp[0], t, idx)[0]).sum()
        lp = None
    else:
        extra_lp = None
    if reduction == "none":
        kl, ent = mod.kl(h, w, b, tch, kind, beta, t, None, idx)
        loss = torch.where(valid, kl, 0.0)
        kl = loss.detach()
    else:
        weights = valid.to(torch.float64 if h.dtype == torch.float64 else torch.float32)
        if reduction == "mean":
            weights = weights / valid.sum().clamp_min(1)
        extra = {} if into is None else {"weight_grad": into}
        if lp is not None:
            extra["lp"] = lp
        loss, kl, ent = mod.kl(h, w, b, tch, kind, beta, t, weights, idx, **extra)
        if extra_lp is not None:
            loss = loss + extra_lp
        kl = torch.where(valid, kl, 0.0)
    _check_outputs([ent, kl], idx, {
        "student_hidden": (h, False, True), "student_weight": (w, False, False), "student_bias": (b, False, False),
        "teacher hidden": (tch.hidden, False, True), "teacher weight": (tch.weight, False, False),
        "teacher bias": (tch.bias, False, False), "teacher logprobs": (tch.logprobs, True, True)})
    return KLOutput(loss.reshape(shape) if reduction == "none" else loss, kl.reshape(shape), ent.reshape(shape))
