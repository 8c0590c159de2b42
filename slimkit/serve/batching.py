"""Shared-prefix batches for the engines that run the model themselves (torch, onnxruntime): plain
lists of ids and index plans, which each engine turns into its own tensors.

A request's items are sorted by length (less padding per batch) and cut into batches of at most
`max_batch`. Each item is right-padded after the prefix, with positions continuing from the prefix
length and an attention mask over prefix + item, so every real token sees exactly what it would see
in its own unpadded sequence: a score does not depend on what else is in the batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from slimkit.serve.prompt import ScoreJob


@dataclass
class Batch:
    rows: list[int]             # the job's items in this batch, by index
    ids: list[list[int]]        # one row per item, right-padded with 0 to the batch's width
    mask: list[list[int]]       # per row, over prefix + width: 1 for the prefix and the item's own tokens
    positions: list[int]        # the positions of the width's columns, the same for every row
    last: list[int]             # per row, the column of its last real token


def batches(job: ScoreJob, max_batch: int, *, prefix: bool) -> Iterator[Batch]:
    """The job's items in batches. `prefix`: the rows continue the shared ids, which the engine runs
    once and whose KV cache it repeats over each batch; otherwise each row is shared + item."""
    plen = len(job.shared_ids) if prefix else 0
    seqs = job.item_ids if prefix else [job.shared_ids + item for item in job.item_ids]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for start in range(0, len(order), max_batch):
        rows = order[start:start + max_batch]
        width = max(len(seqs[i]) for i in rows)
        pads = [width - len(seqs[i]) for i in rows]
        yield Batch(rows=rows,
                    ids=[seqs[i] + [0] * pad for i, pad in zip(rows, pads, strict=True)],
                    mask=[[1] * (plen + width - pad) + [0] * pad for pad in pads],
                    positions=list(range(plen, plen + width)),
                    last=[width - pad - 1 for pad in pads])
