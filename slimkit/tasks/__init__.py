"""Built-in tasks (`arith`, `jobs`) with seeded generators, splits, verifiers and JSONL I/O.

    from slimkit.tasks import get_task, format_prompt
    task = get_task("arith")
    ex = task.split("test", 10)[0]
    text = format_prompt(tokenizer, ex.prompt)      # what the model is trained and evaluated on
    task.verify(ex, completion)
"""

from __future__ import annotations

from slimkit.tasks.arith import Arith
from slimkit.tasks.base import SPLITS, Example, Task, TaskError, read_jsonl, write_jsonl
from slimkit.tasks.jobs import Jobs

TASKS: dict[str, type[Task]] = {"arith": Arith, "jobs": Jobs}

__all__ = ["SPLITS", "TASKS", "Example", "Task", "TaskError", "format_prompt", "get_task", "pad_pairs",
           "read_jsonl", "write_jsonl", "training_text"]


def get_task(name: str) -> Task:
    if "+" in name:  # a mixture, e.g. arith+jobs (slimkit/tasks/mix.py)
        from slimkit.tasks.mix import Mix

        return Mix([get_task(part) for part in name.split("+")])
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]()


def format_prompt(tokenizer, prompt: str) -> str:
    """The chat-templated prompt (generation prompt added) that models are trained and evaluated on."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt + "\n"


def training_text(tokenizer, example: Example) -> tuple[str, str]:
    """(formatted prompt, completion ending in EOS) for supervised training on `example`."""
    return format_prompt(tokenizer, example.prompt), example.answer + (tokenizer.eos_token or "")


def pad_pairs(pairs, pad_id: int, multiple: int = 1):
    """Right-padded (ids, attention mask, answer mask), each [B, T], of (prompt ids, answer ids)
    pairs; T is the longest pair rounded up to `multiple`. The answer mask marks the answer tokens,
    the ones that supervised training predicts."""
    import torch

    width = max((len(p) + len(a) for p, a in pairs), default=0)
    width = -(-width // multiple) * multiple
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(pairs), width), dtype=torch.long)
    answer = torch.zeros((len(pairs), width), dtype=torch.bool)
    for i, (p, a) in enumerate(pairs):
        ids[i, : len(p) + len(a)] = torch.tensor(p + a, dtype=torch.long)
        attention[i, : len(p) + len(a)] = 1
        answer[i, len(p) : len(p) + len(a)] = True
    return ids, attention, answer
