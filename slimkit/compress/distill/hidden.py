"""Hidden states from the models' bodies (`model.model`: everything but the lm_head), never logits.

The kernels take these hidden states with the lm_head weight and fuse the vocabulary matmul with the
softmax / KL, so no [tokens x vocab] tensor is built.
"""

from __future__ import annotations

import torch
from torch import nn

from slimkit.compress.distill.rollouts import Batch


def last_hidden(lm: nn.Module, batch: Batch) -> torch.Tensor:
    """[B, T, H] final (normed) hidden states of a causal LM's body."""
    return Body(lm)(batch.input_ids, batch.attention_mask)


class Body(nn.Module):
    """A causal LM whose forward() returns its body's hidden states, not logits (DDP can wrap it)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.lm.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def supervised(hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
    """[N, H]: the rows of `hidden` [B, T, H] at the supervised positions (those predicting a completion
    token), in batch order."""
    return hidden[:, :-1][batch.target_mask]


def length_groups(lengths: list[int], most: int) -> list[list[int]]:
    """The sequences (indices) in at most `most` groups of similar length, chosen to minimise the token
    positions the forwards compute, sum(len(group) * longest in group): consecutive runs of the sequences
    sorted by length (dynamic programming over the cut points; ties go to fewer groups)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    n = len(order)
    if n == 0:
        return []
    width = [lengths[i] for i in order]
    # cost[k][j]: fewest positions for the first j sorted sequences in k groups; cut[k][j]: the last group's start
    inf = float("inf")
    cost = [[0.0] + [inf] * n]
    cut: list[list[int]] = [[0] * (n + 1)]
    for k in range(1, min(most, n) + 1):
        row, at = [inf] * (n + 1), [0] * (n + 1)
        for j in range(1, n + 1):
            for i in range(j):
                c = cost[k - 1][i] + (j - i) * width[j - 1]
                if c < row[j]:
                    row[j], at[j] = c, i
        cost.append(row)
        cut.append(at)
    k = min(range(1, len(cost)), key=lambda g: (cost[g][n], g))
    groups, j = [], n
    while k:
        i = cut[k][j]
        groups.append(sorted(order[i:j]))
        j, k = i, k - 1
    return groups[::-1]


def supervised_hidden(body: nn.Module, batch: Batch, groups: int = 1, block: int | None = None) -> torch.Tensor:
    """[N, H]: `body`'s hidden states at the supervised positions, in batch order, as
    `supervised(body(ids, mask), batch)`, but from one forward per group of sequences of similar length
    (at most `groups`, `length_groups`), each cut to its group's longest: right padding computes nothing.
    `block`: at most this many sequences per forward. The same values up to float rounding."""
    lengths = batch.attention_mask.sum(1).tolist()
    if groups <= 1 and block is None:
        return supervised(body(batch.input_ids, batch.attention_mask), batch)
    counts = batch.target_mask.sum(1)
    starts = (counts.cumsum(0) - counts).tolist()
    rows, dest = [], []
    for group in length_groups(lengths, groups):
        for b in range(0, len(group), block or len(group)):
            seqs = group[b : b + (block or len(group))]
            t = max(lengths[i] for i in seqs)
            idx = torch.tensor(seqs, device=batch.input_ids.device)
            part = Batch(batch.input_ids[idx, :t], batch.attention_mask[idx, :t], batch.target_mask[idx, : t - 1])
            rows.append(supervised(body(part.input_ids, part.attention_mask), part))
            dest += [r for i in seqs for r in range(starts[i], starts[i] + int(counts[i]))]
    if len(rows) == 1 and dest == sorted(dest):
        return rows[0]
    return torch.cat(rows)[torch.tensor(dest, device=batch.input_ids.device).argsort()]
