"""FSDP for the distillation trainer under torchrun (`train.parallel: fsdp`): PyTorch's `fully_shard`
(FSDP2) on every decoder layer and on the rest of each model, for the student and the frozen teacher, so
each rank holds 1/world of their weights, gradients and AdamW state.

- Training: a layer's weights are all-gathered for its forward and backward, then freed; the student's
  root group (embeddings, final norm, lm_head) stays gathered from its forward to its backward, where the
  fused KL kernel uses the lm_head weight. Gradients are reduce-scattered (averaged over ranks) in the
  backward, so the trainer's 1/kept-tokens scaling is the DDP one.
- Generation (student rollouts, eval, teacher rollouts and caches): ranks generate different lengths, so
  per-layer collectives cannot run in step; `full_weights` gathers every layer once, generation runs
  on local weights, and they are sharded again after (the whole model is on each rank meanwhile).
- Checkpoints: full state dicts (`torch.distributed.checkpoint.state_dict`), gathered to rank 0 and
  written in the single-process format; resuming loads them back into the shards. The final student is
  one ordinary HF directory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

PREFIX = "lm."  # the Body wrapper's attribute: state dicts are stored without it


def shard(body: nn.Module) -> nn.Module:
    """fully_shard every decoder layer of `body.lm`, then `body` (the root), and run one tiny forward so
    that the root is initialised before any other module runs (generation calls the LM directly)."""
    from torch.distributed.fsdp import fully_shard

    for layer in body.lm.model.layers:
        fully_shard(layer)
    fully_shard(body)
    device = next(body.parameters()).device
    with torch.no_grad():
        body(torch.zeros(1, 1, dtype=torch.long, device=device), torch.ones(1, 1, dtype=torch.long, device=device))
    body.reshard()  # the root keeps its weights gathered after a forward: the optimizer must see the shards
    return body


def is_sharded(module: nn.Module | None) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


@contextlib.contextmanager
def full_weights(body: nn.Module | None) -> Iterator[None]:
    """Every rank holds the whole model inside the block (no collectives run in it); a no-op for a model
    that is not sharded. Every rank must enter it."""
    if not is_sharded(body):
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    mods = [m for m in body.modules() if isinstance(m, FSDPModule)]
    body.set_reshard_after_forward(False)
    for m in mods:
        m.unshard()
    try:
        yield
    finally:
        for m in mods:
            m.reshard()
            if m is not body:
                m.set_reshard_after_forward(True, recurse=False)


def full_state(body: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model, optimizer) full state dicts on CPU, on rank 0 (empty elsewhere). Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model, optim = get_state_dict(body, optimizer, options=opts)
    return {k.removeprefix(PREFIX): v for k, v in model.items()}, optim


def load_full_state(body: nn.Module, optimizer: torch.optim.Optimizer, model: dict, optim: dict) -> None:
    """Load full state dicts (as `full_state` returns them) into the shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(body, optimizer, model_state_dict={PREFIX + k: v for k, v in model.items()},
                   optim_state_dict=optim, options=StateDictOptions(full_state_dict=True))
