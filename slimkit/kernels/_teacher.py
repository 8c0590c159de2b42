"""The three ways to give `linear_kl` a teacher, normalized to one small record."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class LiveTeacher(NamedTuple):
    """A live teacher: its last hidden states [..., Ht] (aligned with the student's positions), its
    output-embedding weight [Vt, Ht] and optional bias [Vt]. Never differentiated."""

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None = None


class SparseTeacher(NamedTuple):
    """A top-k teacher: ids [..., K] (distinct, < vocab_size) and their log-probs [..., K]. The mass
    1 - sum(exp(logprobs)) is one tail bucket; the student's mass outside `ids` is compared with it."""

    ids: Tensor
    logprobs: Tensor


class Teacher(NamedTuple):
    """Internal: the prepared teacher (rows selected, vocab sliced). kind: live | dense | sparse."""

    kind: str
    hidden: Tensor | None = None
    weight: Tensor | None = None
    bias: Tensor | None = None
    logprobs: Tensor | None = None
    ids: Tensor | None = None

    def rows(self, start: int, stop: int) -> Teacher:
        """The same teacher restricted to rows [start, stop)."""

        def cut(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[start:stop]

        return self._replace(hidden=cut(self.hidden), logprobs=cut(self.logprobs), ids=cut(self.ids))
