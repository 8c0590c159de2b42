"""A mixture of built-in tasks, named by joining them with '+' (`arith+jobs`): its splits interleave
the tasks' splits (equal shares, in turn), each example's meta names its task, and `verify` asks
that task. Distillation recipes use it to train on several tasks at once (e.g. pruning recovery)."""

from __future__ import annotations

from slimkit.tasks.base import Example, Task, TaskError


class Mix(Task):
    def __init__(self, tasks: list[Task]):
        if len(tasks) < 2 or len({t.name for t in tasks}) != len(tasks):
            raise TaskError("a task mixture names two or more different tasks, e.g. arith+jobs")
        self.tasks = {t.name: t for t in tasks}
        self.name = "+".join(self.tasks)
        self.default_sizes = {k: sum(t.default_sizes[k] for t in tasks) for k in ("train", "validation", "test")}

    def split(self, name: str, n: int | None = None) -> list[Example]:
        n = self.default_sizes.get(name, 0) if n is None else n
        k = len(self.tasks)
        parts = [[Example(ex.prompt, ex.answer, {**ex.meta, "task": t.name})
                  for ex in t.split(name, n // k + (i < n % k))] for i, t in enumerate(self.tasks.values())]
        return [p[j] for j in range(max(map(len, parts), default=0)) for p in parts if j < len(p)]

    def verify(self, example: Example, completion: str) -> bool:
        return self.tasks[example.meta["task"]].verify(example, completion)
