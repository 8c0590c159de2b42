"""The shared-prefix batch plan of the torch and onnxruntime engines, on plain lists."""

from __future__ import annotations

import pytest

from slimkit.serve.batching import batches, plan, prefixes
from slimkit.serve.prompt import ScoreJob

JOB = ScoreJob(shared_ids=[7, 8, 9], item_ids=[[1, 2, 3], [4], [5, 6], [1, 1, 1, 1]], label_ids=[0, 1],
               normalization="labels")


def test_with_prefix_rows_continue_the_shared_ids():
    plan = list(batches(JOB, 2, prefix=True))
    assert [b.rows for b in plan] == [[1, 2], [0, 3]]            # shortest first: less padding per batch
    first, second = plan
    assert first.ids == [[4, 0], [5, 6]] and first.last == [0, 1] and first.positions == [[3, 4], [3, 4]]
    assert first.mask == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]      # prefix + the item's own tokens only
    assert second.ids == [[1, 2, 3, 0], [1, 1, 1, 1]] and second.last == [2, 3]


@pytest.mark.parametrize("max_batch", [1, 3, 64])
def test_without_prefix_each_row_is_shared_plus_item(max_batch):
    plan = list(batches(JOB, max_batch, prefix=False))
    assert sorted(r for b in plan for r in b.rows) == [0, 1, 2, 3] and all(len(b.rows) <= max_batch for b in plan)
    for b in plan:
        assert b.positions == [list(range(len(b.ids[0])))] * len(b.rows)
        for row, ids, mask, last in zip(b.rows, b.ids, b.mask, b.last, strict=True):
            seq = JOB.shared_ids + JOB.item_ids[row]
            assert ids[:len(seq)] == seq and set(ids[len(seq):]) <= {0}
            assert mask == [1] * len(seq) + [0] * (len(ids) - len(seq)) and last == len(seq) - 1


def test_several_jobs_share_batches_and_each_row_continues_its_own_prefix():
    other = ScoreJob(shared_ids=[7, 8], item_ids=[[2], [3, 3, 3, 3, 3]], label_ids=[0, 1], normalization="vocab")
    same = ScoreJob(shared_ids=[7, 8, 9], item_ids=[[6]], label_ids=[0, 1], normalization="labels")
    pre = prefixes([JOB, other, same])
    assert pre.ids == [[7, 8, 9], [7, 8]] and pre.of_job == [0, 1, 0] and pre.width == 3
    plan_ = list(plan([JOB, other, same], 3, prefix=True))
    assert sorted(r for b in plan_ for r in b.rows) == list(range(7))
    first = plan_[0]
    assert first.rows == [1, 4, 6] and first.prefix_rows == [0, 1, 0]     # items of three jobs, one batch
    assert first.mask[1] == [1, 1, 0, 1]                                   # a two-token prefix, padded to three
    assert first.positions == [[3], [2], [3]]
