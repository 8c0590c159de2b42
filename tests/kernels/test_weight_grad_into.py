"""linear_kl(weight_grad_into=...): the weight gradient accumulated straight into a caller's buffer, and
the lean no-grad JSD path (the distillation scoring pass)."""

import pytest
import torch
from kernel_cases import close, leaves, student, teacher

from slimkit.kernels import KernelInputError, LiveTeacher, linear_kl

VOCAB, V_ROWS, H = 300, 320, 16  # 20 padding rows past the true vocabulary


def _case(n, seed):
    hidden, weight, bias = student(n, H, V_ROWS, seed)
    t32, t64 = teacher("live", n, V_ROWS, VOCAB, seed)
    g = torch.Generator().manual_seed(seed)
    rows = torch.randperm(n, generator=g)[: n // 2]
    return hidden, weight, bias, t32, t64, rows


@pytest.mark.parametrize("backend", ["chunked", "reference"])
@pytest.mark.parametrize("kind,reduction", [("reverse", "sum"), ("forward", "mean"), ("jsd", "sum")])
def test_gradient_lands_in_the_buffer_and_accumulates_over_micro_batches(backend, kind, reduction, monkeypatch):
    monkeypatch.setenv("SLIMKIT_KERNEL_CHUNK_ROWS", "7")  # several chunks per call
    parts = [_case(24, seed) for seed in (1, 2)]
    w64 = leaves(parts[0][1])[0]
    for hidden, _, bias, _, t64, rows in parts:  # plain autograd in fp64: the oracle
        h, b = leaves(hidden, bias)
        out = linear_kl(h, w64, t64, kind=kind, rows=rows, student_bias=b, reduction=reduction,
                        vocab_size=VOCAB, backend="reference")
        out.loss.backward()
    want_w = w64.grad
    for dtype, rtol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        w = parts[0][1].to(dtype).clone().requires_grad_()
        buf = torch.full(w.shape, 0.25, dtype=dtype)  # what earlier micro-batches left there
        for hidden, _, bias, t32, t64, rows in parts:
            h, b = leaves(hidden, bias, dtype=dtype)
            tch = t64 if dtype == torch.float64 else t32
            kw = dict(kind=kind, rows=rows, student_bias=b, reduction=reduction, vocab_size=VOCAB, backend=backend)
            out = linear_kl(h, w, tch, weight_grad_into=buf, **kw)
            assert torch.equal(out.loss, linear_kl(h, w.detach(), tch, **kw).loss)
            out.loss.backward()
            assert w.grad is None  # nothing went through autograd to the weight
            assert h.grad is not None and b.grad is not None  # hidden and bias gradients as usual
        close(buf - 0.25, want_w, rtol=rtol, what=f"{dtype} d weight")
        assert bool((buf[VOCAB:] == 0.25).all())  # padded rows untouched


def test_chunked_backward_refuses_a_scaled_loss():
    hidden, weight, _, t32, _, _ = _case(12, 3)
    buf = torch.zeros_like(weight)
    out = linear_kl(hidden.requires_grad_(), weight.requires_grad_(), t32, backend="chunked", weight_grad_into=buf)
    with pytest.raises(RuntimeError, match="gradient 1"):
        (out.loss / 4).backward()


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_fallback_backends_scale_like_autograd(backend):
    """Backends without a fused weight gradient route it into the buffer through a hook: any loss scale."""
    hidden, weight, _, t32, _, _ = _case(12, 4)
    buf = torch.zeros_like(weight)
    w = weight.clone().requires_grad_()
    (linear_kl(hidden, w, t32, backend=backend, weight_grad_into=buf).loss * 3).backward()
    w2 = weight.clone().requires_grad_()
    (linear_kl(hidden, w2, t32, backend=backend).loss * 3).backward()
    assert w.grad is None
    torch.testing.assert_close(buf, w2.grad, rtol=1e-6, atol=0)


def test_no_grad_call_leaves_the_buffer_alone():
    hidden, weight, _, t32, _, _ = _case(12, 5)
    buf = torch.zeros_like(weight)
    with torch.no_grad():
        linear_kl(hidden, weight.requires_grad_(), t32, backend="chunked", weight_grad_into=buf)
    assert not bool(buf.any())


@pytest.mark.parametrize("bad,match", [("none", "reduction"), ("fp64", "float32 tensor"), ("shape", "shape"),
                                       ("grad", "not require grad")])
def test_bad_buffer_is_one_clear_error(bad, match):
    hidden, weight, _, t32, _, _ = _case(8, 6)
    buf = {"fp64": torch.zeros(weight.shape, dtype=torch.float64), "shape": torch.zeros(VOCAB, H),
           "grad": torch.zeros_like(weight).requires_grad_()}.get(bad, torch.zeros_like(weight))
    with pytest.raises(KernelInputError, match=match):
        linear_kl(hidden, weight, t32, backend="chunked", weight_grad_into=buf,
                  reduction="none" if bad == "none" else "sum")


@pytest.mark.parametrize("beta,temperature", [(0.5, 1.0), (0.3, 1.7)])
def test_lean_nograd_jsd_matches_reference(beta, temperature, monkeypatch):
    monkeypatch.setenv("SLIMKIT_KERNEL_CHUNK_ROWS", "5")
    hidden, weight, bias, t32, t64, _ = _case(24, 7)
    hidden[0] *= 200.0  # a row whose probabilities mostly underflow in fp32: the mixture stays finite
    kw = dict(kind="jsd", beta=beta, temperature=temperature, reduction="none", vocab_size=VOCAB)
    with torch.no_grad():
        got = linear_kl(hidden, weight, t32, student_bias=bias, backend="chunked", **kw)
        want = linear_kl(hidden.double(), weight.double(), t64, student_bias=bias.double(), backend="reference", **kw)
    assert bool(torch.isfinite(got.kl).all())
    close(got.kl, want.kl, rtol=1e-4, what="jsd")
    close(got.entropy, want.entropy, rtol=1e-4, what="entropy")
    assert isinstance(t32, LiveTeacher)
