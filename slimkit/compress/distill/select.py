"""Token-importance selection (TIP): which supervised tokens the student is trained on.

`scores` computes per-token scores (student entropy H, teacher-student divergence D, both in nats)
without gradients; every selector maps them to a boolean keep-mask. The trainer passes the kept positions as `rows=`
to the loss kernel, so the student's lm_head never runs on the dropped tokens.

Quadrants (thresholds h, d):  Q1 H>=h, D>=d   Q2 H>=h, D<d   Q3 H<h, D>=d ("overconfident")   Q4 H<h, D<d
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from slimkit import kernels
from slimkit.compress.distill.config import SelectConfig

QUADRANTS = ("Q1", "Q2", "Q3", "Q4")


@dataclass
class Scores:
    entropy: torch.Tensor  # [N] student entropy, nats
    divergence: torch.Tensor  # [N] teacher-student JSD, nats (<= ln 2)
    vocab_size: int


# The scoring pass sees every token, the training pass only the kept ones. The kernels size their
# [chunk, V] workspace by the number of rows they are given, so scoring in blocks of a quarter of the
# rows keeps its workspace below the training pass's for any keep ratio >= 1/4: selection's memory
# saving is not eaten by the scoring that decides it.
SCORE_BLOCKS = 4


def _teacher_part(teacher: kernels.LiveTeacher | kernels.SparseTeacher,
                  part: slice) -> kernels.LiveTeacher | kernels.SparseTeacher:
    if isinstance(teacher, kernels.LiveTeacher):
        return teacher._replace(hidden=teacher.hidden[part])
    return kernels.SparseTeacher(teacher.ids[part], teacher.logprobs[part])


@torch.no_grad()
def scores(student_hidden: torch.Tensor, student_weight: torch.Tensor,
           teacher: kernels.LiveTeacher | kernels.SparseTeacher, *, temperature: float, vocab_size: int) -> Scores:
    """Per-token student entropy and teacher-student JSD (beta 0.5, <= ln 2) of the rows of
    `student_hidden` [N, H] and `teacher` (aligned), in SCORE_BLOCKS row blocks."""
    n = student_hidden.shape[0]
    step = max(1, -(-n // SCORE_BLOCKS))
    ds, hs = [], []
    for start in range(0, n, step):
        part = slice(start, start + step)
        out = kernels.linear_kl(student_hidden[part].detach(), student_weight.detach(), _teacher_part(teacher, part),
                                kind="jsd", beta=0.5, temperature=temperature, reduction="none")
        ds.append(out.kl)
        hs.append(out.entropy)
    return Scores(entropy=torch.cat(hs).float(), divergence=torch.cat(ds).float().clamp_min(0),
                  vocab_size=vocab_size)


def _k(ratio: float, n: int) -> int:
    return max(1, min(n, round(ratio * n)))


def thresholds(cfg: SelectConfig, s: Scores) -> tuple[float, float]:
    """(entropy threshold, divergence threshold) in nats for the quadrant split."""
    if cfg.threshold == "absolute":
        return cfg.entropy_threshold, cfg.divergence_threshold
    h = torch.quantile(s.entropy.float(), cfg.entropy_threshold).item()
    d = torch.quantile(s.divergence.float(), cfg.divergence_threshold).item()
    return h, d


def quadrant_masks(s: Scores, h: float, d: float) -> dict[str, torch.Tensor]:
    hi_h, hi_d = s.entropy >= h, s.divergence >= d
    return {"Q1": hi_h & hi_d, "Q2": hi_h & ~hi_d, "Q3": ~hi_h & hi_d, "Q4": ~hi_h & ~hi_d}


def keep_mask(cfg: SelectConfig, s: Scores, generator: torch.Generator | None = None) -> torch.Tensor:
    """Boolean [N] mask of the tokens to train on."""
    n = s.entropy.numel()
    mask = torch.zeros(n, dtype=torch.bool, device=s.entropy.device)
    if n == 0:
        return mask
    if cfg.method == "all":
        mask[:] = True
    elif cfg.method == "entropy_top":
        mask[torch.topk(s.entropy.float(), _k(cfg.ratio, n)).indices] = True
    elif cfg.method == "entropy_sample":
        h = (s.entropy.float() / math.log(s.vocab_size)).clamp(0, 1)
        d = (s.divergence.float() / math.log(2)).clamp(0, 1)
        w = h.pow(cfg.alpha) * d.pow(cfg.gamma)
        w = w + 1e-12  # every token stays drawable, so k = r*N is always reachable
        idx = torch.multinomial(w.cpu(), _k(cfg.ratio, n), replacement=False, generator=generator)
        mask[idx.to(mask.device)] = True
    elif cfg.method == "quadrant":
        qs = quadrant_masks(s, *thresholds(cfg, s))
        for q in cfg.quadrants:
            mask |= qs[q]
    elif cfg.method == "union":
        for child in cfg.any_of:
            mask |= keep_mask(child, s, generator)
    else:  # pragma: no cover - pydantic rejects other names
        raise ValueError(cfg.method)
    return mask


def quadrant_sums(s: Scores, keep: torch.Tensor, h: float | None = None,
                  d: float | None = None) -> dict[str, float]:
    """Per-quadrant token count, kept count and summed divergence (median split unless h/d given).

    Sums, so that micro-batches of one step add up; `finish_quadrants` turns them into fractions/means.
    """
    out: dict[str, float] = {"tokens": float(s.entropy.numel()), "kept": float(keep.sum())}
    if s.entropy.numel() == 0:
        return out | {f"{q.lower()}_{k}": 0.0 for q in QUADRANTS for k in ("n", "kept_n", "kl_sum")}
    h = torch.median(s.entropy.float()).item() if h is None else h
    d = torch.median(s.divergence.float()).item() if d is None else d
    for q, m in quadrant_masks(s, h, d).items():
        q = q.lower()
        out[f"{q}_n"] = float(m.sum())
        out[f"{q}_kept_n"] = float((keep & m).sum())
        out[f"{q}_kl_sum"] = float(s.divergence[m].double().sum())
    return out


def empty_sums() -> dict[str, float]:
    """Every key `quadrant_sums` returns, at 0."""
    return quadrant_sums(Scores(torch.zeros(0), torch.zeros(0), 1), torch.zeros(0, dtype=torch.bool))


def finish_quadrants(sums: dict[str, float]) -> dict[str, float]:
    """keep_frac, q*_frac (share of tokens), q*_kept (share of tokens kept there), q*_kl (mean D)."""
    n = sums.get("tokens", 0.0)
    if not n:
        return {"keep_frac": 0.0}
    out = {"keep_frac": sums["kept"] / n}
    for q in QUADRANTS:
        q = q.lower()
        c = sums.get(f"{q}_n", 0.0)
        out[f"{q}_frac"] = c / n
        out[f"{q}_kept"] = sums.get(f"{q}_kept_n", 0.0) / n
        out[f"{q}_kl"] = sums.get(f"{q}_kl_sum", 0.0) / c if c else float("nan")
    return out
