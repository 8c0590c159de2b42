"""Hidden states from the models' bodies (`model.model`: everything but the lm_head), never logits.

The kernels take these hidden states with the lm_head weight and fuse the vocabulary matmul with the
softmax / KL, so no [tokens x vocab] tensor is built.
"""

from __future__ import annotations

import torch
from torch import nn

from slimkit.compress.distill.rollouts import Batch


def last_hidden(lm: nn.Module, batch: Batch) -> torch.Tensor:
    """[B, T, H] final (normed) hidden states of a causal LM's body."""
    return Body(lm)(batch.input_ids, batch.attention_mask)


class Body(nn.Module):
    """A causal LM whose forward() returns its body's hidden states, not logits (DDP can wrap it)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.lm.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def supervised(hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
    """[N, H]: the rows of `hidden` [B, T, H] at the supervised positions (those predicting a completion
    token), in batch order."""
    return hidden[:, :-1][batch.target_mask]
