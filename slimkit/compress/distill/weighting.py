"""Per-prompt loss weights: PACED pass-rate weighting.

For each prompt of the step, p = the share of its G student rollouts that the task's verifier
accepts and w(p) = p^alpha (1 - p)^beta: prompts the student always or never solves carry no signal
and get w = 0 (for alpha, beta > 0). Weights are normalised to mean 1 over the step's prompts (all
ranks). Rollouts of prompts with w = 0 are dropped here, before the teacher runs; the share of the
step's tokens dropped is the teacher compute saved.

The trainer multiplies each supervised token's loss by its rollout's weight and divides the step's
gradient by the sum of the kept tokens' weights (over micro-batches and ranks), so the update is the
big batch's whatever the gradient accumulation or world size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from itertools import groupby

from slimkit.compress.distill.config import WeightingConfig
from slimkit.compress.distill.rollouts import Rollout


def paced_weight(p: float, alpha: float, beta: float) -> float:
    return p**alpha * (1.0 - p) ** beta


def pass_rates(rollouts: list[Rollout], verify: Callable[[int, list[int]], bool]) -> list[tuple[int, float]]:
    """(example, share of its rollouts accepted), per prompt, in order (a prompt's rollouts are adjacent)."""
    out = []
    for ex, group in groupby(rollouts, key=lambda r: r.example):
        ok = [bool(verify(ex, r.completion_ids)) for r in group]
        out.append((ex, sum(ok) / len(ok)))
    return out


def weigh(cfg: WeightingConfig, rollouts: list[Rollout], verify: Callable[[int, list[int]], bool],
          all_sum: Callable[[list[float]], list[float]], *, keep_one: bool) -> tuple[list[Rollout], dict[str, float]]:
    """(the rollouts to train on, each with its weight; step statistics summed over ranks by `all_sum`).
    `keep_one` (DDP): a rank left with nothing keeps one rollout at weight 0, so it still joins the
    gradient all-reduce."""
    rates = dict(pass_rates(rollouts, verify))
    w = {ex: paced_weight(p, cfg.alpha, cfg.beta) for ex, p in rates.items()}
    kept = [r for r in rollouts if w[r.example] > 0]
    length = lambda rs: float(sum(len(r.prompt_ids) + len(r.completion_ids) for r in rs))  # noqa: E731
    w_sum, n, p_sum, dropped, total_tokens, kept_tokens = all_sum(
        [sum(w.values()), float(len(w)), sum(rates.values()), float(sum(v == 0 for v in w.values())),
         length(rollouts), length(kept)])
    mean = w_sum / max(n, 1.0)
    kept = [dataclasses.replace(r, weight=w[r.example] / mean) for r in kept]
    if not kept and keep_one and rollouts:
        kept = [dataclasses.replace(min(rollouts, key=lambda r: len(r.completion_ids)), weight=0.0)]
    return kept, {"pass_rate": p_sum / max(n, 1.0), "prompts_dropped": dropped / max(n, 1.0),
                  "teacher_saved_frac": 1.0 - kept_tokens / max(total_tokens, 1.0)}
