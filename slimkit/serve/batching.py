"""Shared-prefix batches for the engines that run the model themselves (torch, onnxruntime): plain
lists of ids and index plans, which each engine turns into its own tensors.

The items of one or several jobs (requests) are sorted by length (less padding per batch) and cut
into batches of at most `max_batch` rows; items of different jobs share a batch. Each row continues
its own job's prefix: the prefixes are prefilled together, right-padded to the longest, and a row's
attention mask covers only its own prefix's real tokens and its own item tokens, with positions
continuing from its own prefix length. So every real token sees exactly what it would see in its own
unpadded sequence: a score does not depend on what else is in the batch or in the engine call.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from slimkit.serve.prompt import ScoreJob


@dataclass
class Batch:
    rows: list[int]             # the items in this batch, by index into the jobs' items in job order
    prefix_rows: list[int]      # per row, the prefix (Prefixes.ids index) it continues
    ids: list[list[int]]        # one row per item, right-padded with 0 to the batch's width
    mask: list[list[int]]       # per row, over prefix width + width: 1 for its prefix's and its own tokens
    positions: list[list[int]]  # per row, the positions of the width's columns
    last: list[int]             # per row, the column of its last real token


@dataclass
class Prefixes:
    """The distinct shared prefixes of a call's jobs (jobs with equal shared ids share one)."""
    ids: list[list[int]]
    of_job: list[int]           # per job, its prefix's index

    @property
    def width(self) -> int:
        return max((len(p) for p in self.ids), default=0)


def prefixes(jobs: Sequence[ScoreJob]) -> Prefixes:
    index: dict[tuple[int, ...], int] = {}
    for job in jobs:
        index.setdefault(tuple(job.shared_ids), len(index))
    return Prefixes([list(k) for k in index], [index[tuple(job.shared_ids)] for job in jobs])


def plan(jobs: Sequence[ScoreJob], max_batch: int, *, prefix: bool) -> Iterator[Batch]:
    """The items of all `jobs` in batches. `prefix`: the rows continue their job's shared ids, which
    the engine prefills once per distinct prefix (`prefixes(jobs)`, right-padded to its width);
    otherwise each row is shared + item and no prefix is used."""
    pre = prefixes(jobs)
    width0 = pre.width if prefix else 0
    seqs, plens, owners = [], [], []
    for j, job in enumerate(jobs):
        for item in job.item_ids:
            seqs.append(item if prefix else job.shared_ids + item)
            plens.append(len(job.shared_ids) if prefix else 0)
            owners.append(pre.of_job[j])
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for start in range(0, len(order), max_batch):
        rows = order[start:start + max_batch]
        width = max(len(seqs[i]) for i in rows)
        yield Batch(rows=rows, prefix_rows=[owners[i] for i in rows],
                    ids=[seqs[i] + [0] * (width - len(seqs[i])) for i in rows],
                    mask=[[1] * plens[i] + [0] * (width0 - plens[i]) + [1] * len(seqs[i]) + [0] * (width - len(seqs[i]))
                          for i in rows],
                    positions=[list(range(plens[i], plens[i] + width)) for i in rows],
                    last=[len(seqs[i]) - 1 for i in rows])


def batches(job: ScoreJob, max_batch: int, *, prefix: bool) -> Iterator[Batch]:
    """One job's items in batches (`plan` for a single job: its rows index the job's items)."""
    return plan([job], max_batch, prefix=prefix)
