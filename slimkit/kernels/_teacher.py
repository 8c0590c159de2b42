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


class TeacherRows(NamedTuple):
    """Internal: any teacher as the backends read it, row by row (vocab sliced; per-row tensors flattened
    to [N, ...], aligned with the flattened student hidden). kind: live | dense | sparse."""

    kind: str
    hidden: Tensor | None = None
    weight: Tensor | None = None
    bias: Tensor | None = None
    logprobs: Tensor | None = None
    ids: Tensor | None = None

    def take(self, rows: slice | Tensor | None) -> TeacherRows:
        """The same teacher at `rows` (a slice, an int64 index, or None for all rows)."""
        if rows is None:
            return self

        def cut(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[rows]

        return self._replace(hidden=cut(self.hidden), logprobs=cut(self.logprobs), ids=cut(self.ids))


def select(h: Tensor, teacher: TeacherRows | None, rows: Tensor | None) -> tuple[Tensor, TeacherRows | None]:
    """The selected rows of the student hidden [N, H] and of the teacher, gathered up front (the
    reference and triton backends; chunked gathers them chunk by chunk instead)."""
    if rows is None:
        return h, teacher
    return h.index_select(0, rows), None if teacher is None else teacher.take(rows)
