"""`arith+jobs`: a task mixture for recipes that train on several tasks (e.g. pruning recovery)."""

from __future__ import annotations

import pytest

from slimkit.tasks import TaskError, get_task


def test_mixture_interleaves_the_tasks_and_verifies_with_each():
    mix = get_task("arith+jobs")
    exs = mix.split("validation", 7)
    assert [e.meta["task"] for e in exs] == ["arith", "jobs"] * 3 + ["arith"]
    arith, jobs = get_task("arith").split("validation", 4), get_task("jobs").split("validation", 3)
    assert [e.prompt for e in exs[0::2]] == [e.prompt for e in arith]
    assert [e.prompt for e in exs[1::2]] == [e.prompt for e in jobs]
    assert all(mix.verify(e, e.answer) for e in exs)
    assert not mix.verify(exs[1], "maybe")
    assert mix.split("validation", 7) == exs                     # deterministic
    with pytest.raises(TaskError, match="unknown task 'poetry'"):
        get_task("arith+poetry")
    with pytest.raises(TaskError, match="two or more different tasks"):
        get_task("arith+arith")
