"""Shared inputs for the scorer tests."""

from __future__ import annotations

import torch

QUERY = "python data engineer in berlin, spark and airflow"
ITEMS = [
    "senior data engineer, python, spark, kafka; berlin or remote",
    "night nurse for a hospital ward in munich",
    "x",
    "frontend developer, react and typescript, hamburg, full time, good salary, team of twelve people",
    "data engineer",
    "backend developer: java, go, postgres, docker, kubernetes. office in berlin three days a week.",
    "machine learning engineer, pytorch, statistics",
    "yes",
]


def many_items(n: int) -> list[str]:
    """n distinct items of varied lengths (1 to ~40 tokens)."""
    words = "python sql spark airflow kafka java go react css nurse berlin remote docker senior junior".split()
    g = torch.Generator().manual_seed(n)
    out = []
    for i in range(n):
        k = int(torch.randint(1, 14, (1,), generator=g))
        idx = torch.randint(0, len(words), (k,), generator=g).tolist()
        out.append(f"{i}: " + " ".join(words[j] for j in idx))
    return out
