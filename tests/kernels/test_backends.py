"""chunked and triton (under TRITON_INTERPRET=1) against the float64 reference: values and gradients."""

import pytest
import torch
from kernel_cases import close, leaves, student, teacher

from slimkit.kernels import linear_kl, linear_logprob

# The interpreter evaluates both sides of tl.where on masked lanes (inf - inf there, never stored).
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:divide by zero encountered:RuntimeWarning")

BACKENDS = ["chunked", "triton"]
N, H, V, V_ROWS = 40, 32, 1000, 1024  # weight has 24 padding rows past the true vocabulary


def _rows(n, seed):
    g = torch.Generator().manual_seed(seed)
    r = torch.randperm(n, generator=g)[: 3 * n // 4]
    return torch.cat([r, r[:3]])  # any order, with repeats; 33 rows: 2 triton row blocks


def _labels(n, vocab, seed):
    g = torch.Generator().manual_seed(seed + 7)
    lab = torch.randint(0, vocab, (n,), generator=g)
    lab[torch.rand(n, generator=g) < 0.25] = -100
    return lab


def _kl_run(backend, dtype, hidden, weight, bias, tch, **kw):
    h, w, b = leaves(hidden, weight, bias, dtype=dtype)
    out = linear_kl(h, w, tch, student_bias=b, backend=backend, **kw)
    (out.loss.sum() if kw.get("reduction") == "none" else out.loss).backward()
    return out, (h.grad, w.grad, b.grad)


def _compare_kl(backend, n, vocab, v_rows, teacher_kind, k=8, seed=0, **kw):
    hidden, weight, bias = student(n, H, v_rows, seed)
    t32, t64 = teacher(teacher_kind, n, v_rows, vocab, seed, k=k)
    kw = dict(vocab_size=vocab, rows=_rows(n, seed), labels=_labels(n, vocab, seed), temperature=1.7, **kw)
    want, want_g = _kl_run("reference", torch.float64, hidden, weight, bias, t64, **kw)
    got, got_g = _kl_run(backend, torch.float32, hidden, weight, bias, t32, **kw)
    for name in ("loss", "kl", "entropy"):
        close(getattr(got, name), getattr(want, name), what=name)
    for name, g, w in zip(("d hidden", "d weight", "d bias"), got_g, want_g, strict=True):
        close(g, w, what=name)
    assert float(got_g[1][vocab:].abs().sum()) == 0.0  # padded ids: no gradient
    assert bool((got.kl[kw["labels"][kw["rows"]] == -100] == 0).all())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["forward", "reverse", "jsd"])
@pytest.mark.parametrize("teacher_kind,k", [("live", 0), ("dense", 0), ("sparse", 1), ("sparse", 8), ("sparse", 64)])
def test_kl_matches_reference(backend, kind, teacher_kind, k):
    _compare_kl(backend, N, V, V_ROWS, teacher_kind, k=k, kind=kind, beta=0.3, reduction="sum")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("teacher_kind,kind", [("live", "forward"), ("sparse", "reverse"), ("dense", "jsd")])
def test_kl_reductions(backend, reduction, teacher_kind, kind):
    _compare_kl(backend, N, V, V_ROWS, teacher_kind, kind=kind, reduction=reduction, seed=3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("teacher_kind,kind", [("live", "forward"), ("sparse", "jsd")])
def test_kl_odd_large_vocab(backend, teacher_kind, kind):
    _compare_kl(backend, 20, 32003, 32003, teacher_kind, kind=kind, reduction="sum", seed=5)


def _logprob_run(backend, dtype, hidden, weight, bias, targets, with_entropy=True, **kw):
    h, w, b = leaves(hidden, weight, bias, dtype=dtype)
    out = linear_logprob(h, w, targets, bias=b, backend=backend, **kw)
    # all three outputs feed the loss, so every gradient term is checked; without the entropy, the
    # backward that skips its term
    (out.logprob.sum() + (0.3 * out.entropy.sum() if with_entropy else 0.0) - 0.2 * out.lse.sum()).backward()
    return out, (h.grad, w.grad, b.grad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("vocab,v_rows,n,with_entropy", [(1000, 1024, N, True), (32003, 32003, 20, True),
                                                         (1000, 1024, N, False)])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_logprob_matches_reference(backend, vocab, v_rows, n, with_entropy, temperature):
    hidden, weight, bias = student(n, H, v_rows, seed=11)
    targets = _labels(n, vocab, 11)
    kw = dict(vocab_size=vocab, rows=_rows(n, 11), temperature=temperature, with_entropy=with_entropy)
    want, want_g = _logprob_run("reference", torch.float64, hidden, weight, bias, targets, **kw)
    got, got_g = _logprob_run(backend, torch.float32, hidden, weight, bias, targets, **kw)
    for name in ("logprob", "entropy", "lse"):
        close(getattr(got, name), getattr(want, name), what=name)
    for name, g, w in zip(("d hidden", "d weight", "d bias"), got_g, want_g, strict=True):
        close(g, w, what=name)
    assert bool((got.logprob[targets[kw["rows"]] == -100] == 0).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_logprob_without_bias_or_rows(backend):
    hidden, weight, _ = student(N, H, V, seed=2, bias=False)
    targets = torch.randint(0, V, (N,))
    want = linear_logprob(hidden.double(), weight.double(), targets, backend="reference")
    got = linear_logprob(hidden, weight, targets, backend=backend)
    for g, w in zip(got, want, strict=True):
        close(g, w)


def _lead(x, n):
    """[n, ...] per-row tensors -> [2, n // 2, ...]; anything else as is."""
    return x.view(2, n // 2, *x.shape[1:]) if isinstance(x, torch.Tensor) and x.shape[0] == n else x


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("teacher_kind,reduction", [("live", "sum"), ("live", "none"), ("dense", "mean"),
                                                    ("sparse", "sum")])
def test_repeated_unsorted_rows_across_small_chunks(backend, teacher_kind, reduction, monkeypatch):
    """Rows in any order, repeated across chunk boundaries, over a [2, 12] leading shape: d hidden has
    the input's shape, sums the repeats, is exactly 0 on unselected rows; the teacher gets none."""
    monkeypatch.setenv("SLIMKIT_KERNEL_CHUNK_ROWS", "3")
    n = 24
    hidden, weight, bias = student(n, H, V, seed=21)
    t32, t64 = teacher(teacher_kind, n, V, V, seed=21)
    t32 = type(t32)(*(_lead(x, n) for x in t32)) if isinstance(t32, tuple) else _lead(t32, n)
    t64 = type(t64)(*(_lead(x, n) for x in t64)) if isinstance(t64, tuple) else _lead(t64, n)
    if teacher_kind == "live":
        t32 = t32._replace(hidden=t32.hidden.clone().requires_grad_())
    rows = torch.tensor([17, 2, 17, 9, 0, 23, 2, 17, 11, 5])
    kw = dict(rows=rows, kind="reverse" if teacher_kind == "sparse" else "forward", reduction=reduction)
    want, want_g = _kl_run("reference", torch.float64, _lead(hidden, n), weight, bias, t64, **kw)
    got, got_g = _kl_run(backend, torch.float32, _lead(hidden, n), weight, bias, t32, **kw)
    close(got.kl, want.kl, what="kl")
    for name, g, w in zip(("d hidden", "d weight", "d bias"), got_g, want_g, strict=True):
        close(g, w, what=name)
    assert got_g[0].shape == (2, 12, H)
    unselected = torch.ones(n, dtype=torch.bool)
    unselected[rows] = False
    assert float(got_g[0].reshape(n, H)[unselected].abs().sum()) == 0.0
    assert teacher_kind != "live" or t32.hidden.grad is None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("teacher_kind,kind", [("live", "forward"), ("live", "reverse"), ("sparse", "forward"),
                                               ("dense", "jsd")])
def test_kl_with_a_target_logprob_term_matches_reference(backend, teacher_kind, kind):
    """loss = sum KL + sum c * log p(target): the chunked backend builds both gradients in one pass."""
    hidden, weight, bias = student(N, H, V_ROWS, 4)
    t32, t64 = teacher(teacher_kind, N, V_ROWS, V, 4, k=8)
    g = torch.Generator().manual_seed(9)
    targets, coef = torch.randint(0, V, (N,), generator=g), torch.randn(N, generator=g)
    kw = dict(vocab_size=V, rows=_rows(N, 4), labels=_labels(N, V, 4), temperature=1.3, kind=kind, beta=0.3,
              reduction="sum", logprob_targets=targets)
    outs = {}
    for name, dtype, tch in (("reference", torch.float64, t64), (backend, torch.float32, t32)):
        h, w, b = leaves(hidden, weight, bias, dtype=dtype)
        out = linear_kl(h, w, tch, student_bias=b, backend=name, logprob_coef=coef.to(dtype), **kw)
        out.loss.backward()
        # the same without the term: the difference is the term itself
        plain = linear_kl(h.detach(), w.detach(), tch, student_bias=b.detach(), backend=name,
                          **{k: v for k, v in kw.items() if k != "logprob_targets"})
        outs[name] = out, plain, (h.grad, w.grad, b.grad)
    (want, want_plain, want_g), (got, got_plain, got_g) = outs["reference"], outs[backend]
    close(got.loss, want.loss, what="loss")
    lp = linear_logprob(hidden.double(), weight.double(), targets, bias=bias.double(), temperature=1.3,
                        rows=kw["rows"], vocab_size=V, backend="reference").logprob
    term = (coef.double()[kw["rows"]] * lp).sum()
    close(want.loss - want_plain.loss, term, what="the term")
    close(got.loss - got_plain.loss, term, what="the term")
    for name, a, e in zip(("d hidden", "d weight", "d bias"), got_g, want_g, strict=True):
        close(a, e, what=name)


def test_a_target_logprob_term_needs_reduction_sum_and_both_parts():
    hidden, weight, _ = student(N, H, V, 1, bias=False)
    tch = (hidden.clone(), weight.clone())
    targets, coef = torch.zeros(N, dtype=torch.long), torch.ones(N)
    from slimkit.kernels import KernelInputError

    with pytest.raises(KernelInputError, match="logprob_targets needs reduction 'sum'"):
        linear_kl(hidden, weight, tch, reduction="mean", logprob_targets=targets, logprob_coef=coef)
    with pytest.raises(KernelInputError, match="go together"):
        linear_kl(hidden, weight, tch, logprob_targets=targets)
