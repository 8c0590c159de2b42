"""The shared shape of a task: `Example`, the `Task` base with deterministic splits, JSONL I/O."""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slimkit.errors import SlimkitError

SPLITS = ("train", "validation", "test")


class TaskError(SlimkitError):
    pass


@dataclass
class Example:
    """One task item. `prompt` is the user message (no chat template), `answer` the target completion."""

    prompt: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


def split_of(key: str) -> str:
    """Which split a problem belongs to, from a hash of its identity (so splits never overlap)."""
    h = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100
    return "test" if h < 5 else "validation" if h < 10 else "train"


class Task:
    """A seeded generator of examples with a verifier.

    Subclasses implement `_sample(rng) -> (key, Example)` (the key identifies the problem regardless of
    style, so one problem never lands in two splits) and `verify`.
    """

    name: str = ""
    # The text that starts the final answer after the reasoning in an answer (None: no reasoning, the whole
    # answer is the answer). Sequence truncation splits responses there (slimkit.compress.distill.truncation).
    answer_start: str | None = None
    default_sizes = {"train": 20000, "validation": 500, "test": 500}
    seeds = {"train": 1, "validation": 2, "test": 3}

    def _sample(self, rng: random.Random) -> tuple[str, Example]:
        raise NotImplementedError

    def verify(self, example: Example, completion: str) -> bool:
        raise NotImplementedError

    def split(self, name: str, n: int | None = None) -> list[Example]:
        """The first `n` examples of split `name`; the same call always returns the same list.

        Train may repeat a problem (small problem spaces); validation and test hold distinct problems.
        """
        if name not in SPLITS:
            raise TaskError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        n = self.default_sizes[name] if n is None else n
        rng = random.Random(f"{self.name}-{name}-{self.seeds[name]}")
        out: list[Example] = []
        seen: set[str] = set()
        tries = 0
        while len(out) < n:
            tries += 1
            if tries > 200 * n + 10000:
                raise TaskError(f"task {self.name}: cannot draw {n} distinct {name} examples")
            key, ex = self._sample(rng)
            if split_of(f"{self.name}:{key}") != name:
                continue
            if name != "train":
                if key in seen:
                    continue
                seen.add(key)
            out.append(ex)
        return out


def write_jsonl(path: str | os.PathLike, examples: list[Example]) -> Path:
    """Write examples as JSON lines: {"prompt": ..., "answer": ..., "meta": {...}}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        for ex in examples:
            f.write(json.dumps(asdict(ex), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def read_jsonl(path: str | os.PathLike) -> list[Example]:
    """Read examples written by `write_jsonl` (or by hand: `prompt` and `answer` are required;
    `label` is accepted for `answer`; unknown top-level keys go into `meta`)."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"data file {path} does not exist")
    out = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or "prompt" not in row or ("answer" not in row and "label" not in row):
                raise TaskError(f"{path}:{i}: each line needs 'prompt' and 'answer' (or 'label')")
            meta = dict(row.get("meta") or {})
            meta.update({k: v for k, v in row.items() if k not in ("prompt", "answer", "meta")})
            answer = row["answer"] if "answer" in row else row["label"]
            out.append(Example(prompt=str(row["prompt"]), answer=str(answer), meta=meta))
    return out
