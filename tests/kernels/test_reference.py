"""The reference backend (the oracle) against definitions written out by hand."""

import math

import torch
import torch.nn.functional as F

from slimkit.kernels import LiveTeacher, SparseTeacher, linear_kl, linear_logprob


def _setup(seed=0, n=6, h=8, v=11):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, h, generator=g, dtype=torch.float64), torch.randn(v, h, generator=g, dtype=torch.float64),
            torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randn(v, 5, generator=g, dtype=torch.float64))


def test_logprob_definition():
    h, w, _, _ = _setup()
    tg = torch.tensor([0, 3, 10, 2, -100, 7])
    out = linear_logprob(h, w, tg, temperature=2.0, backend="reference")
    s = torch.log_softmax(h @ w.T / 2.0, -1)
    assert torch.allclose(out.logprob[[0, 1, 2, 3, 5]], s[[0, 1, 2, 3, 5], tg[[0, 1, 2, 3, 5]]])
    assert out.logprob[4] == 0
    assert torch.allclose(out.entropy, torch.distributions.Categorical(logits=h @ w.T / 2.0).entropy())
    assert torch.allclose(out.lse, (h @ w.T / 2.0).logsumexp(-1))


def test_kl_directions_and_jsd():
    h, w, th, tw = _setup()
    s = torch.log_softmax(h @ w.T, -1)
    lq = torch.log_softmax(th @ tw.T, -1)
    fwd = linear_kl(h, w, LiveTeacher(th, tw), kind="forward", reduction="none", backend="reference").loss
    rev = linear_kl(h, w, LiveTeacher(th, tw), kind="reverse", reduction="none", backend="reference").loss
    # F.kl_div(input, target) = KL(target || input)
    assert torch.allclose(fwd, F.kl_div(s, lq, log_target=True, reduction="none").sum(-1))
    assert torch.allclose(rev, F.kl_div(lq, s, log_target=True, reduction="none").sum(-1))
    beta = 0.3
    jsd = linear_kl(h, w, LiveTeacher(th, tw), kind="jsd", beta=beta, reduction="none", backend="reference").loss
    p, q = s.exp(), lq.exp()
    m = beta * q + (1 - beta) * p
    want = beta * (q * (lq - m.log())).sum(-1) + (1 - beta) * (p * (s - m.log())).sum(-1)
    assert torch.allclose(jsd, want)


def test_sparse_buckets_by_hand():
    h, w, th, tw = _setup(v=5)
    s = torch.log_softmax(h @ w.T, -1)
    ids = torch.tensor([[1, 3]] * 6)
    lp = torch.log(torch.tensor([[0.5, 0.2]] * 6, dtype=torch.float64))
    out = linear_kl(h, w, SparseTeacher(ids, lp), kind="forward", reduction="none", backend="reference")
    ps = s.exp()
    student = torch.stack([ps[:, 1], ps[:, 3], ps[:, 0] + ps[:, 2] + ps[:, 4]], -1)
    teacher = torch.tensor([0.5, 0.2, 0.3], dtype=torch.float64)
    want = (teacher * (teacher.log() - student.log())).sum(-1)
    assert torch.allclose(out.loss, want)
    assert torch.allclose(out.entropy, -(ps * s).sum(-1))


def test_reductions_and_temperature():
    h, w, th, tw = _setup()
    labels = torch.tensor([1, -100, 2, 3, -100, 4])
    per = linear_kl(h, w, LiveTeacher(th, tw), temperature=3.0, reduction="none", labels=labels,
                    backend="reference")
    s = torch.log_softmax(h @ w.T / 3.0, -1)
    lq = torch.log_softmax(th @ tw.T / 3.0, -1)
    want = (lq.exp() * (lq - s)).sum(-1) * (labels != -100)
    assert torch.allclose(per.loss, want) and torch.allclose(per.kl, want)
    total = linear_kl(h, w, LiveTeacher(th, tw), temperature=3.0, reduction="sum", labels=labels,
                      backend="reference")
    mean = linear_kl(h, w, LiveTeacher(th, tw), temperature=3.0, reduction="mean", labels=labels,
                     backend="reference")
    assert math.isclose(float(total.loss), float(want.sum()))
    assert math.isclose(float(mean.loss), float(want.sum()) / 4)
