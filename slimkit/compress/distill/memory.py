"""Token-tiled MLPs: a decoder layer's MLP run over blocks of token rows, each block checkpointed.

An MLP acts on each token independently, so splitting the token rows into `tiles` blocks gives the same
result, and checkpointing each block keeps only its input: the [tokens, intermediate] activations
(gate, up, their product; 3x the hidden width each in Qwen3) exist for one block at a time, in the
forward and when the backward recomputes them. This is TiledMLP from Arctic Long Sequence Training
(Bekman et al., 2025). With `train.gradient_checkpointing` the whole-layer recompute in the backward
then no longer holds a full-length MLP activation either, which at thousands of tokens per micro-batch
is the largest transient of the backward. Cost: one more MLP forward per step.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def _tiled_forward(forward, tiles: int, x: torch.Tensor) -> torch.Tensor:
    if not torch.is_grad_enabled():  # generation and eval: nothing is saved, tiling would only cost time
        return forward(x)
    rows = x.reshape(-1, x.shape[-1])
    out = torch.cat([checkpoint(forward, part, use_reentrant=False) for part in rows.chunk(tiles)])
    return out.view(*x.shape[:-1], out.shape[-1])


def tile_mlps(lm: nn.Module, tiles: int) -> int:
    """Make every decoder layer's MLP of a causal LM (`lm.model.layers[i].mlp`) run in `tiles` token
    blocks. The forward is replaced on the instances, so parameter names (state_dict) do not change.
    Returns the number of MLPs tiled."""
    layers = lm.model.layers
    for layer in layers:
        layer.mlp.forward = functools.partial(_tiled_forward, layer.mlp.forward, tiles)
    return len(layers)
