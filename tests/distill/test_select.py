import math

import pytest
import torch

from slimkit.compress.distill.config import SelectConfig
from slimkit.compress.distill.select import Scores, finish_quadrants, keep_mask, quadrant_sums


def _scores(n=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Scores(entropy=torch.rand(n, generator=g) * math.log(100),
                  divergence=torch.rand(n, generator=g) * math.log(2), vocab_size=100)


def test_all_keeps_everything():
    assert keep_mask(SelectConfig(method="all"), _scores()).all()


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9])
def test_entropy_top_keeps_the_highest_entropy(ratio):
    s = _scores()
    m = keep_mask(SelectConfig(method="entropy_top", ratio=ratio), s)
    assert int(m.sum()) == round(ratio * 1000)
    assert s.entropy[m].min() >= s.entropy[~m].max()


def test_entropy_sample_draws_k_without_replacement_by_weight():
    s = _scores()
    s.divergence[:500] = 0.0  # zero weight (gamma > 0): never drawn while others remain
    cfg = SelectConfig(method="entropy_sample", ratio=0.3, alpha=1.0, gamma=1.0)
    m = keep_mask(cfg, s, torch.Generator().manual_seed(0))
    assert int(m.sum()) == 300
    assert not m[:500].any()
    m2 = keep_mask(cfg, s, torch.Generator().manual_seed(0))
    assert torch.equal(m, m2)  # seeded
    # alpha=gamma=0: uniform weights; a large alpha prefers high entropy
    hi = keep_mask(SelectConfig(method="entropy_sample", ratio=0.2, alpha=8, gamma=0), s,
                   torch.Generator().manual_seed(1))
    assert s.entropy[hi].mean() > s.entropy.mean() * 1.3


def test_quadrants_quantile_and_absolute():
    s = _scores()
    h_med, d_med = s.entropy.median(), s.divergence.median()
    q3 = keep_mask(SelectConfig(method="quadrant", quadrants=["Q3"]), s)
    assert (s.entropy[q3] < h_med + 1e-6).all() and (s.divergence[q3] >= d_med - 1e-6).all()
    assert 0.15 < q3.float().mean() < 0.35
    both = keep_mask(SelectConfig(method="quadrant", quadrants=["Q1", "Q3"]), s)
    assert both.float().mean() == pytest.approx(0.5, abs=0.02)  # high D half
    ab = keep_mask(SelectConfig(method="quadrant", quadrants=["Q3"], threshold="absolute",
                                entropy_threshold=1.0, divergence_threshold=0.6), s)
    assert torch.equal(ab, (s.entropy < 1.0) & (s.divergence >= 0.6))
    with pytest.raises(ValueError):
        SelectConfig(method="quadrant", entropy_threshold=2.0)


def test_union_is_or_of_children():
    s = _scores()
    a = SelectConfig(method="entropy_top", ratio=0.1)
    b = SelectConfig(method="quadrant", quadrants=["Q3"])
    u = keep_mask(SelectConfig(method="union", any_of=[a, b]), s)
    assert torch.equal(u, keep_mask(a, s) | keep_mask(b, s))
    with pytest.raises(ValueError, match="any_of"):
        SelectConfig(method="union")


def test_quadrant_sums_add_up():
    s = _scores()
    keep = keep_mask(SelectConfig(method="entropy_top", ratio=0.5), s)
    stats = finish_quadrants(quadrant_sums(s, keep))
    assert stats["keep_frac"] == pytest.approx(0.5)
    assert sum(stats[f"q{i}_frac"] for i in range(1, 5)) == pytest.approx(1.0)
    assert sum(stats[f"q{i}_kept"] for i in range(1, 5)) == pytest.approx(0.5)
    assert stats["q3_kept"] == 0.0 and stats["q4_kept"] == 0.0  # entropy_top drops all low-H tokens
    hi_d = s.divergence >= s.divergence.median()
    assert stats["q1_kl"] == pytest.approx(float(s.divergence[(s.entropy >= s.entropy.median()) & hi_d].mean()),
                                           rel=1e-5)
