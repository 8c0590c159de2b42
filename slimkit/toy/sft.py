"""Supervised fine-tuning on task examples with answer-only loss (used to build the toy world).

Each step takes one batch from one task (tasks interleave by weight, so a batch holds similar
lengths; a task may be limited to a window of steps, for a curriculum); batches are drawn from
length-sorted pools to keep padding small. Fixed step counts and
seeds make a run reproducible; the learning rate warms up then decays on a cosine to 10%.

Data-parallel over `world` processes (`Ring`, gloo on this host): every rank draws the same batch
and trains on its rows rank::world, each rank's loss is its share of the whole batch's means, and the
gradients are summed, so the update is the single-process one up to float rounding. The toy world
trains small models whose matmuls barely use a second thread; two one-thread processes use it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from slimkit.schedule import warmup_cosine
from slimkit.tasks import Example, pad_pairs, training_text


@dataclass
class SFTConfig:
    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    pool_batches: int = 8  # batches per length-sorted pool
    task_batch_size: dict[str, int] | None = None  # per-task override of batch_size
    # per-task weight of an auxiliary language-model loss on the prompt tokens (added to the answer
    # loss): a one-token answer gives one bit per example, the prompt's text many more
    prompt_loss: dict[str, float] | None = None
    # per task (marker token id, token ids): the prompt loss counts only those tokens after the marker
    prompt_loss_only: dict[str, tuple[int, list[int]]] | None = None
    task_steps: dict[str, tuple[int, int]] | None = None  # per-task window [first, last) of steps


def encode(tokenizer, examples: list[Example]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids ending in EOS) per example, tokenized separately (the tokenizer
    guarantees this equals tokenizing the whole text)."""
    out = []
    for ex in examples:
        prompt, answer = training_text(tokenizer, ex)
        out.append((tokenizer(prompt, add_special_tokens=False).input_ids,
                    tokenizer(answer, add_special_tokens=False).input_ids))
    return out


def collate(rows: list[tuple[list[int], list[int]]], pad: int, multiple: int = 16) -> dict[str, torch.Tensor]:
    """Right-padded batch with labels on the answer tokens; the width is rounded up to `multiple`
    (few distinct shapes run faster on CPU)."""
    ids, attention, answer = pad_pairs(rows, pad, multiple)
    return {"input_ids": ids, "attention_mask": attention, "labels": ids.masked_fill(~answer, -100)}


def loss_masks(batch: dict[str, torch.Tensor], only: tuple[int, list[int]] | None = None):
    """(answer, prompt) masks over the next-token targets [B, L-1]: the answer tokens, and the prompt
    tokens (`only` = (marker, ids): those in `ids` after the first `marker`)."""
    targets = batch["input_ids"][:, 1:]
    answer = batch["labels"][:, 1:] != -100
    prompt = batch["attention_mask"][:, 1:].bool() & ~answer
    if only is not None:
        after = (batch["input_ids"] == only[0]).cumsum(1)[:, :-1] > 0
        prompt &= after & torch.isin(targets, torch.tensor(only[1]))
    return answer, prompt


def step_loss(model, batch: dict[str, torch.Tensor], prompt_weight: float = 0.0,
              only: tuple[int, list[int]] | None = None, counts: tuple[int, int] | None = None) -> torch.Tensor:
    """Mean next-token loss on the answer tokens, plus `prompt_weight` times the mean loss on the
    prompt tokens (`only` = (marker, ids): on the tokens in `ids` after the first `marker`). With
    `counts` (the whole batch's answer and prompt tokens), this rows' sums over those counts: the
    share of a data-parallel rank."""
    if not prompt_weight and counts is None:
        return model(**batch).loss
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["input_ids"][:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                                           reduction="none").view_as(targets)
    answer, prompt = loss_masks(batch, only)
    if counts is not None:
        loss = ce[answer].sum() / max(1, counts[0])
        return loss + prompt_weight * ce[prompt].sum() / counts[1] if prompt_weight and counts[1] else loss
    aux = ce[prompt].mean() if prompt.any() else ce.new_zeros(())
    return ce[answer].mean() + prompt_weight * aux


class Ring:
    """One rank of a data-parallel group of processes on this host (gloo): sums gradients."""

    def __init__(self, rank: int, world: int, address: str):
        import torch.distributed as dist

        self.rank, self.world, self.dist = rank, world, dist
        dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world)

    def sum_grads(self, params: list[torch.nn.Parameter], loss: torch.Tensor) -> torch.Tensor:
        """Sum the ranks' gradients (in place) and losses (returned), in one all-reduce."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.flatten() for g in grads] + [loss.detach().float().reshape(1)])
        self.dist.all_reduce(flat)
        for p, g in zip(params, flat[:-1].split([g.numel() for g in grads]), strict=True):
            p.grad = g.view_as(p).clone()
        return flat[-1]

    def close(self) -> None:
        self.dist.destroy_process_group()


class _Pools:
    """Endless batches for one task: shuffle, cut into pools, sort each pool by length, shuffle batches."""

    def __init__(self, data: list, batch_size: int, pool_batches: int, rng: random.Random):
        self.data, self.bs, self.pool, self.rng = data, batch_size, pool_batches, rng
        self.queue: list[list] = []

    def next(self) -> list:
        if not self.queue:
            pool = self.rng.sample(self.data, min(len(self.data), self.bs * self.pool))
            pool.sort(key=lambda r: len(r[0]) + len(r[1]))
            self.queue = [pool[i:i + self.bs] for i in range(0, len(pool), self.bs)]
            self.rng.shuffle(self.queue)
        return self.queue.pop()


def _window(windows: dict[str, tuple[int, int]], name: str, steps: int) -> tuple[int, int]:
    return windows.get(name, (0, steps))


def _next_task(names: list[str], weights: dict[str, float], windows: dict[str, tuple[int, int]],
               phase: dict, step: int, steps: int) -> str:
    """The task of step `step`: among the tasks whose window holds it, the one furthest behind its
    share of the steps since that set of tasks last changed (`phase` keeps the count)."""
    live = tuple(n for n in names if _window(windows, n, steps)[0] <= step < _window(windows, n, steps)[1])
    if not live:
        raise ValueError(f"no task has step {step} in its window")
    if phase.get("live") != live:
        phase.update(live=live, done=dict.fromkeys(live, 0))
    total = sum(weights[n] for n in live)
    name = min(live, key=lambda n: (phase["done"][n] * total / weights[n], n))
    phase["done"][name] += 1
    return name


def train(model, tokenizer, data: dict[str, list[Example]], weights: dict[str, float], cfg: SFTConfig, *,
          progress: bool = True, description: str = "train",
          on_step: Callable[[int], None] | None = None, ring: Ring | None = None) -> dict[str, Any]:
    """Train `model` in place; `data` maps task name -> examples, `weights` the share of steps per task.
    `on_step(step)` is called after each optimizer step (e.g. to evaluate along the way); training stops
    early when it returns True (on every rank of a `ring` alike: their models are the same)."""
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sizes = cfg.task_batch_size or {}
    windows = cfg.task_steps or {}
    used = [n for n in data if weights.get(n, 0) > 0 and len(range(*_window(windows, n, cfg.steps)))]
    pools = {name: _Pools(encode(tokenizer, data[name]), sizes.get(name, cfg.batch_size), cfg.pool_batches, rng)
             for name in used}
    names = sorted(pools)
    # deterministic interleaving: each step goes to the task furthest behind its share
    phase: dict = {}
    done = dict.fromkeys(names, 0)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    model.train()
    tokens, t0 = 0, time.perf_counter()
    losses: dict[str, float] = {}
    bar = None
    rank, world = (ring.rank, ring.world) if ring is not None else (0, 1)
    params = list(model.parameters())
    if progress and rank == 0:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       TextColumn("{task.fields[info]}"), transient=False)
        bar.start()
        tid = bar.add_task(description, total=cfg.steps, info="")
    try:
        for step in range(cfg.steps):
            name = _next_task(names, weights, windows, phase, step, cfg.steps)
            done[name] += 1
            rows = pools[name].next()
            batch = collate(rows, pad)
            for g in opt.param_groups:
                g["lr"] = warmup_cosine(step, warmup=cfg.warmup, total=cfg.steps, min_ratio=cfg.min_lr_ratio,
                                        lr=cfg.lr)
            weight, only = (cfg.prompt_loss or {}).get(name, 0.0), (cfg.prompt_loss_only or {}).get(name)
            if ring is None:
                loss_t = step_loss(model, batch, weight, only)
                loss_t.backward()
            else:  # this rank's rows, its share of the whole batch's means; the gradients summed
                counts = tuple(int(m.sum()) for m in loss_masks(batch, only))
                loss_t = step_loss(model, collate(rows[rank::world], pad), weight, only, counts)
                loss_t.backward()
                loss_t = ring.sum_grads(params, loss_t)
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            tokens += int(batch["attention_mask"].sum())
            loss = loss_t.item()
            losses[name] = loss if name not in losses else 0.9 * losses[name] + 0.1 * loss
            if bar is not None:
                info = " ".join(f"{n} {v:.3f}" for n, v in sorted(losses.items()))
                bar.update(tid, advance=1, info=f"loss {info}")
                if not bar.console.is_terminal and (step + 1) % max(1, cfg.steps // 10) == 0:
                    bar.console.print(f"{description.strip()}: step {step + 1}/{cfg.steps} loss {info} "
                                      f"({time.perf_counter() - t0:.0f} s)", highlight=False)
            if on_step is not None and on_step(step + 1):
                break
    finally:
        if bar is not None:
            bar.stop()
    model.eval()
    seconds = time.perf_counter() - t0
    return {"steps": sum(done.values()), "max_steps": cfg.steps, "steps_per_task": done, "seconds": seconds, "train_tokens": tokens,
            "tokens_per_s": tokens / seconds if seconds > 0 else None, "final_loss": losses}
