"""`arith`: multi-step arithmetic with a chain of thought, in a verbose and a concise style.

Level = number of operators (1-3). Numbers have 1 or 2 digits (equally likely) for + and -, single digits (2-9) around x;
products are worked first, then + and - left to right; every intermediate result is in 0..99.
The concise style is selected by the instruction "Be concise." in the prompt; the final line of
every answer is "Answer: N", which the verifier extracts.

    prompt  What is 12 + 7 * 3 - 5? Be concise.
    concise 7 * 3 = 21. 12 + 21 = 33. 33 - 5 = 28. Answer: 28
    verbose Step 1: 7 * 3 = 21. Check: 21 = 7 * 3. Left: 12 + 21 - 5. Step 2: ... Answer: 28
"""

from __future__ import annotations

import random
import re

from slimkit.tasks.base import Example, Task

CONCISE = "Be concise."
LEVELS = (1, 2, 3)
MAX_VALUE = 99  # every intermediate result stays within 0..99
_ANSWER = re.compile(r"Answer:\s*(-?\d+)\s*$")


def extract_answer(text: str) -> int | None:
    """The integer after the last "Answer:" if the text ends there (trailing space allowed), else None."""
    m = _ANSWER.search(text.strip())
    return int(m.group(1)) if m else None


def _ops(rng: random.Random, level: int) -> list[str]:
    while True:
        ops = [rng.choice("++--*") for _ in range(level)]
        if not any(a == "*" and b == "*" for a, b in zip(ops, ops[1:], strict=False)):
            return ops


def _number(rng: random.Random) -> int:
    """A 1- or 2-digit operand, each length equally likely (so 0-9 is as common as 10-99)."""
    return rng.randint(0, 9) if rng.random() < 0.5 else rng.randint(10, 99)


def _expr(tokens: list) -> str:
    return " ".join(str(t) for t in tokens)


def solve(tokens: list) -> list[tuple[list, str, list]] | None:
    """Steps (expression before, step text "a op b = c", expression after); None if a result leaves 0..99."""
    steps = []
    cur = list(tokens)
    for pass_ops in ("*", "+-"):
        i = 1
        while i < len(cur):
            if cur[i] in pass_ops:
                a, op, b = cur[i - 1], cur[i], cur[i + 1]
                c = a * b if op == "*" else a + b if op == "+" else a - b
                if c < 0 or c > MAX_VALUE:
                    return None
                before = cur
                cur = cur[: i - 1] + [c] + cur[i + 2:]
                steps.append((before, f"{a} {op} {b} = {c}", cur))
            else:
                i += 2
    return steps


def make_answer(steps: list, style: str) -> str:
    result = steps[-1][2][0]
    if style == "concise":
        return " ".join(s + "." for _, s, _ in steps) + f" Answer: {result}"
    parts = []
    for k, (_, s, after) in enumerate(steps, 1):
        lhs, rhs = s.split(" = ")
        parts.append(f"Step {k}: {s}. Check: {rhs} = {lhs}.")
        if len(after) > 1:
            parts.append(f"Left: {_expr(after)}.")
    return " ".join(parts) + f" Answer: {result}"


class Arith(Task):
    name = "arith"
    answer_start = "Answer:"  # the reasoning (steps) comes before it
    default_sizes = {"train": 50000, "validation": 500, "test": 600}

    def _sample(self, rng: random.Random) -> tuple[str, Example]:
        level = rng.choice(LEVELS)
        style = rng.choice(("verbose", "concise"))
        while True:
            ops = _ops(rng, level)
            nums = []
            for i in range(level + 1):
                near_mul = (i > 0 and ops[i - 1] == "*") or (i < level and ops[i] == "*")
                nums.append(rng.randint(2, 9) if near_mul else _number(rng))
            tokens: list = [nums[0]]
            for op, x in zip(ops, nums[1:], strict=True):
                tokens += [op, x]
            steps = solve(tokens)
            if steps is not None:
                break
        expr = _expr(tokens)
        prompt = f"What is {expr}?" + (f" {CONCISE}" if style == "concise" else "")
        answer = make_answer(steps, style)
        meta = {"level": level, "style": style, "expr": expr, "result": steps[-1][2][0]}
        return expr, Example(prompt=prompt, answer=answer, meta=meta)

    def verify(self, example: Example, completion: str) -> bool:
        got = extract_answer(completion)
        want = example.meta.get("result")
        if want is None:
            want = extract_answer(example.answer)
        return got is not None and want is not None and got == int(want)
