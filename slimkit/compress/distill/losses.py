"""Distillation losses, all through `slimkit.kernels`: no [tokens x vocab] tensor is ever built here.

The models' bodies run to the last hidden state (`model.model(...)`); the kernels fuse the lm_head
matmul with the softmax/KL over the vocabulary. The teacher is either live, (hidden, lm_head weight),
or a cached sparse top-k (ids, logprobs; the remaining mass is one tail bucket).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from slimkit import kernels
from slimkit.compress.distill.rollouts import Batch
from slimkit.compress.distill.select import Scores


def lm_head(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    head = model.get_output_embeddings()
    return head.weight, getattr(head, "bias", None)


def last_hidden(model: nn.Module, batch: Batch) -> torch.Tensor:
    """[B, T, H] final (normed) hidden states of a causal LM's body; no logits."""
    return model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state


class Body(nn.Module):
    """Wraps a causal LM so that forward() returns hidden states, not logits (and DDP can wrap it)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.lm.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def targets(hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
    """[N, H] hidden states at the supervised positions (those predicting a completion token)."""
    return hidden[:, :-1][batch.target_mask]


@dataclass
class Teacher:
    """What the kernels accept as the teacher for N rows: live (hidden, weight) or sparse (ids, logprobs)."""

    hidden: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    ids: torch.Tensor | None = None
    logprobs: torch.Tensor | None = None

    def slice(self, part: slice) -> Teacher:
        if self.hidden is not None:
            return Teacher(hidden=self.hidden[part], weight=self.weight)
        return Teacher(ids=self.ids[part], logprobs=self.logprobs[part])

    def spec(self) -> kernels.LiveTeacher | kernels.SparseTeacher:
        if self.hidden is not None:
            return kernels.LiveTeacher(self.hidden, self.weight)
        return kernels.SparseTeacher(self.ids, self.logprobs)


def kl(student_hidden: torch.Tensor, student_weight: torch.Tensor, teacher: Teacher, *, kind: str,
       beta: float, temperature: float, rows: torch.Tensor | None = None, reduction: str = "sum",
       weight_grad_into: torch.Tensor | None = None):
    """(loss, per-token divergence, per-token student entropy) from `slimkit.kernels.linear_kl`.
    weight_grad_into: see linear_kl (the loss must then be backpropagated with gradient 1)."""
    out = kernels.linear_kl(student_hidden, student_weight, teacher.spec(), kind=kind, beta=beta,
                            temperature=temperature, rows=rows, reduction=reduction,
                            weight_grad_into=weight_grad_into)
    return out.loss, out.kl, out.entropy


# The scoring pass sees every token, the training pass only the kept ones. The kernels size their
# [chunk, V] workspace by the number of rows they are given, so scoring in blocks of a quarter of the
# rows keeps its workspace below the training pass's for any keep ratio >= 1/4: selection's memory
# saving is not eaten by the scoring that decides it.
SCORE_BLOCKS = 4


@torch.no_grad()
def scores(student_hidden: torch.Tensor, student_weight: torch.Tensor, teacher: Teacher, *,
           temperature: float, vocab_size: int, blocks: int = SCORE_BLOCKS) -> Scores:
    """Per-token student entropy and teacher-student JSD (beta 0.5, <= ln 2), no gradients, chunked,
    in `blocks` row blocks."""
    n = student_hidden.shape[0]
    step = max(1, -(-n // blocks))
    ds, hs = [], []
    for start in range(0, n, step):
        part = slice(start, start + step)
        _, d, h = kl(student_hidden[part].detach(), student_weight.detach(), teacher.slice(part), kind="jsd",
                     beta=0.5, temperature=temperature, reduction="none")
        ds.append(d)
        hs.append(h)
    return Scores(entropy=torch.cat(hs).float(), divergence=torch.cat(ds).float().clamp_min(0),
                  vocab_size=vocab_size)
