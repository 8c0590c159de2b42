"""Public API behaviour: teacher forms, padding, shapes, backend choice, clear errors."""

import pytest
import torch
from kernel_cases import close, student, teacher

from slimkit.errors import SlimkitError
from slimkit.kernels import (
    KernelInputError,
    LiveTeacher,
    SparseTeacher,
    linear_kl,
    linear_logprob,
    resolve_backend,
)

# The interpreter evaluates both sides of tl.where on masked lanes (inf - inf there, never stored).
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:divide by zero encountered:RuntimeWarning")

def test_live_teacher_equals_its_dense_logprobs_at_any_temperature():
    h, w, b = student(12, 16, 300, seed=1)
    tch = teacher("live", 12, 300, 300, seed=1)[0]
    th, tw = tch.hidden, tch.weight
    dense = torch.log_softmax(th @ tw.T, -1)
    for t in (1.0, 2.5):
        a = linear_kl(h, w, tch, temperature=t, reduction="none", backend="chunked")
        d = linear_kl(h, w, dense, temperature=t, reduction="none", backend="chunked")
        close(a.loss, d.loss.double(), rtol=1e-5)


def test_tuple_teachers_are_recognized():
    h, w, _ = student(8, 16, 100, seed=2)
    (live, _), (sparse, _) = teacher("live", 8, 100, 100, 2), teacher("sparse", 8, 100, 100, 2)
    a = linear_kl(h, w, tuple(live), backend="chunked").loss
    assert torch.equal(a, linear_kl(h, w, live, backend="chunked").loss)
    s = linear_kl(h, w, (sparse.ids, sparse.logprobs), backend="chunked").loss
    assert torch.equal(s, linear_kl(h, w, sparse, backend="chunked").loss)


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_padded_vocab_is_masked_not_zero_padded(backend):
    h, w, _ = student(10, 16, 1000, seed=3)
    pad = torch.full((24, 16), 5.0)  # large padding rows would dominate if they were not masked
    wp = torch.cat([w, pad]).requires_grad_()
    th, tw = torch.randn(10, 8), torch.randn(1024, 8)
    # default vocab_size = the smaller vocabulary (student 1000 rows vs teacher 1024)
    a = linear_kl(h, w, LiveTeacher(th, tw), reduction="none", backend=backend)
    b = linear_kl(h, wp, LiveTeacher(th, tw), reduction="none", vocab_size=1000, backend=backend)
    close(b.loss, a.loss.double(), rtol=1e-5)
    b.loss.sum().backward()
    assert float(wp.grad[1000:].abs().sum()) == 0.0
    lp = linear_logprob(h, wp, torch.zeros(10, dtype=torch.long), vocab_size=1000, backend=backend)
    close(lp.lse, (h @ w.T).logsumexp(-1).double(), rtol=1e-5)


def test_leading_dims_rows_mask_and_order():
    h, w, _ = student(24, 16, 200, seed=4)
    tg = torch.randint(0, 200, (24,))
    full = linear_logprob(h.view(2, 12, 16), w, tg.view(2, 12), backend="chunked")
    assert full.logprob.shape == (2, 12)
    rows = torch.tensor([20, 3, 7])
    sel = linear_logprob(h.view(2, 12, 16), w, tg.view(2, 12), rows=rows, backend="chunked")
    assert sel.logprob.shape == (3,)
    close(sel.logprob, full.logprob.reshape(-1)[rows].double(), rtol=1e-6)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[1, 8] = mask[0, 3] = True  # selects flat positions 3 and 20, in position order
    m = linear_logprob(h.view(2, 12, 16), w, tg.view(2, 12), rows=mask, backend="chunked")
    close(m.logprob, full.logprob.reshape(-1)[[3, 20]].double(), rtol=1e-6)


def test_rows_restrict_gradients_and_teacher_gets_none():
    h, w, _ = student(16, 16, 100, seed=5)
    h.requires_grad_()
    th = torch.randn(16, 8, requires_grad=True)
    tw = torch.randn(100, 8)
    out = linear_kl(h, w, LiveTeacher(th, tw), rows=torch.tensor([1, 5]), backend="chunked")
    out.loss.backward()
    nonzero = h.grad.abs().sum(-1) > 0
    assert nonzero.nonzero().view(-1).tolist() == [1, 5]
    assert th.grad is None


def test_mean_counts_only_non_ignored_selected_tokens():
    h, w, _ = student(10, 16, 100, seed=6)
    (tch, _) = teacher("live", 10, 100, 100, 6)
    labels = torch.tensor([1, -100, 2, 3, -100, 4, 5, 6, 7, -100])
    rows = torch.tensor([0, 1, 2, 4])
    per = linear_kl(h, w, tch, rows=rows, labels=labels, reduction="none", backend="chunked")
    mean = linear_kl(h, w, tch, rows=rows, labels=labels, reduction="mean", backend="chunked")
    assert per.loss[1] == 0 and per.loss[3] == 0 and per.entropy[1] > 0
    assert torch.allclose(mean.loss, per.loss.sum() / 2)
    none_left = linear_kl(h, w, tch, rows=torch.tensor([1]), labels=labels, reduction="mean", backend="chunked")
    assert float(none_left.loss) == 0.0


def test_tiny_chunks_give_the_same_result(monkeypatch):
    h, w, b = student(20, 16, 300, seed=7)
    (tch, _) = teacher("dense", 20, 300, 300, 7)
    a = linear_kl(h, w, tch, kind="jsd", reduction="none", student_bias=b, backend="chunked").loss
    monkeypatch.setenv("SLIMKIT_KERNEL_CHUNK_ROWS", "3")
    c = linear_kl(h, w, tch, kind="jsd", reduction="none", student_bias=b, backend="chunked").loss
    close(c, a.double(), rtol=1e-6)


def test_bf16_inputs_run_on_chunked():
    h, w, _ = student(16, 32, 500, seed=8)
    tg = torch.randint(0, 500, (16,))
    hb, wb = h.bfloat16().requires_grad_(), w.bfloat16().requires_grad_()
    out = linear_logprob(hb, wb, tg, backend="chunked")
    assert out.logprob.dtype == torch.float32
    out.logprob.sum().backward()
    assert hb.grad.dtype == torch.bfloat16 and wb.grad.dtype == torch.bfloat16
    ref = linear_logprob(h.double(), w.double(), tg, backend="reference")
    assert float((out.logprob.detach() - ref.logprob).abs().max()) < 0.1


def test_backend_choice(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("SLIMKIT_KERNEL_BACKEND", raising=False)
    assert resolve_backend(None, cpu) == "chunked"
    monkeypatch.setenv("SLIMKIT_KERNEL_BACKEND", "reference")
    assert resolve_backend(None, cpu) == "reference"
    assert resolve_backend("chunked", cpu) == "chunked"
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(KernelInputError, match="triton backend needs CUDA"):
        resolve_backend("triton", cpu)
    with pytest.raises(KernelInputError, match="unknown kernel backend"):
        resolve_backend("cuda", cpu)


def _bad_calls():
    h, w, _ = student(6, 8, 50, seed=9)
    tg = torch.randint(0, 50, (6,))
    th, tw = torch.randn(6, 4), torch.randn(50, 4)
    nan_h = h.clone()
    nan_h[2, 3] = float("nan")
    inf_w = w.clone()
    inf_w[7, 0] = float("inf")
    ids = torch.randint(0, 50, (6, 3))
    lp = torch.log(torch.full((6, 3), 0.1))
    return {
        "nan hidden": (lambda: linear_logprob(nan_h, w, tg), "hidden contains NaN or inf"),
        "inf weight": (lambda: linear_kl(h, inf_w, LiveTeacher(th, tw)), "student_weight contains NaN or inf"),
        "nan teacher": (lambda: linear_kl(h, w, LiveTeacher(th * float("nan"), tw)), "teacher hidden contains"),
        "hidden size": (lambda: linear_logprob(h, w[:, :5], tg), "hidden size 8"),
        "targets shape": (lambda: linear_logprob(h, w, tg[:4]), "targets has shape"),
        "target range": (lambda: linear_logprob(h, w, tg + 50), "outside \\[0, 50\\)"),
        "float targets": (lambda: linear_logprob(h, w, tg.float()), "integer tensor"),
        "dtype mix": (lambda: linear_logprob(h, w.double(), tg), "float32 but weight is torch.float64"),
        "temperature": (lambda: linear_logprob(h, w, tg, temperature=0.0), "temperature"),
        "rows range": (lambda: linear_logprob(h, w, tg, rows=torch.tensor([9])), "rows contains 9"),
        "vocab_size": (lambda: linear_logprob(h, w, tg, vocab_size=51), "vocab_size 51"),
        "kind": (lambda: linear_kl(h, w, LiveTeacher(th, tw), kind="kl"), "unknown kind"),
        "reduction": (lambda: linear_kl(h, w, LiveTeacher(th, tw), reduction="avg"), "unknown reduction"),
        "beta": (lambda: linear_kl(h, w, LiveTeacher(th, tw), kind="jsd", beta=1.0), "0 < beta < 1"),
        "teacher rows": (lambda: linear_kl(h, w, LiveTeacher(th[:5], tw)), "teacher hidden has leading shape"),
        "dense shape": (lambda: linear_kl(h, w, torch.zeros(5, 50)), "dense teacher logprobs have shape"),
        "sparse ids": (lambda: linear_kl(h, w, SparseTeacher(ids + 50, lp)), "teacher ids contains"),
        "sparse shapes": (lambda: linear_kl(h, w, SparseTeacher(ids, lp[:, :2])), "must both be"),
        "sparse positive": (lambda: linear_kl(h, w, SparseTeacher(ids, -lp)), "log-probabilities"),
        "sparse K": (lambda: linear_kl(h, w, SparseTeacher(torch.zeros(6, 50, dtype=torch.long),
                                                           torch.zeros(6, 50))), "K=50"),
        "teacher type": (lambda: linear_kl(h, w, "teacher"), "teacher must be"),
        "labels shape": (lambda: linear_kl(h, w, LiveTeacher(th, tw), labels=tg[:3]), "labels has shape"),
    }


@pytest.mark.parametrize("case", list(_bad_calls()))
@pytest.mark.parametrize("backend", ["chunked", "reference"])
def test_bad_input_raises_clear_value_error(case, backend, monkeypatch):
    monkeypatch.setenv("SLIMKIT_KERNEL_BACKEND", backend)
    call, msg = _bad_calls()[case]
    with pytest.raises(ValueError, match=msg) as err:
        call()
    assert isinstance(err.value, SlimkitError) and isinstance(err.value, KernelInputError)


@pytest.mark.parametrize("case", ["nan hidden", "inf weight", "nan teacher", "target range"])
def test_bad_input_raises_on_triton(case, monkeypatch):
    monkeypatch.setenv("SLIMKIT_KERNEL_BACKEND", "triton")
    call, msg = _bad_calls()[case]
    with pytest.raises(KernelInputError, match=msg):
        call()


def test_no_grad_call_builds_no_gradients(monkeypatch):
    from slimkit.kernels import chunked

    calls = []
    real = chunked._add_grads
    monkeypatch.setattr(chunked, "_add_grads", lambda *a: calls.append(1) or real(*a))
    h, w, _ = student(8, 16, 100, seed=10)
    h.requires_grad_()
    tch = teacher("live", 8, 100, 100, 10)[0]
    with torch.no_grad():
        out = linear_kl(h, w, tch, backend="chunked")
    assert not calls and not out.loss.requires_grad
    linear_kl(h, w, tch, backend="chunked").loss.backward()
    assert calls and h.grad is not None
