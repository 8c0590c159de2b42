"""The learning-rate schedule of every slimkit training loop: linear warmup, then cosine decay."""

from __future__ import annotations

import math


def warmup_cosine(step: int, *, warmup: int, total: int, min_ratio: float, lr: float = 1.0) -> float:
    """The learning rate at `step` (0-based): linear warmup to `lr` over `warmup` steps, then cosine decay
    to `lr * min_ratio` at `total` steps (and after). With the default lr=1 it is the factor that
    `torch.optim.lr_scheduler.LambdaLR` takes."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
