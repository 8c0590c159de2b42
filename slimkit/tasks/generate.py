"""Batched generation with the KV cache and left padding (greedy or sampled), and next-token scoring.

Prompts are already formatted (`slimkit.tasks.format_prompt`). Rows are sorted by prompt length so a
batch holds similar lengths; each batch is prefilled once and decoded step by step on the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Completion:
    """One generated answer. `token_ids` are the generated ids without padding, ending with the EOS
    id (finish_reason "eos") or the token that completed a stop string ("stop"); `text` is the decoded
    answer without EOS and cut before the stop string."""

    text: str
    token_ids: list[int]
    prompt_ids: list[int] = field(repr=False)
    finish_reason: str = "length"


def eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for v in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, list | tuple):
            ids.update(int(x) for x in v)
    return ids


def pad_id(tokenizer, eos: set[int]) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return min(eos) if eos else 0


def _left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def _generate_batch(model, rows: list[list[int]], *, max_new_tokens: int, temperature: float, eos: set[int],
                    pad: int, stop: list[str], tokenizer, generator: torch.Generator | None
                    ) -> list[tuple[list[int], str]]:
    from transformers import DynamicCache

    device = _model_device(model)
    ids, mask = _left_pad(rows, pad)
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    n = len(rows)
    out: list[list[int]] = [[] for _ in range(n)]
    reason = ["length"] * n
    done = [False] * n
    eos_t = torch.tensor(sorted(eos), dtype=torch.long, device=device) if eos else None
    stop_span = max((len(s) for s in stop), default=0) + 2
    step_ids, step_pos = ids, pos
    for _ in range(max_new_tokens):
        logits = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, past_key_values=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1, :].float()
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            nxt = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(device)
        else:
            nxt = logits.argmax(-1)
        is_eos = torch.isin(nxt, eos_t) if eos_t is not None else torch.zeros_like(nxt, dtype=torch.bool)
        nxt_list, eos_list = nxt.tolist(), is_eos.tolist()
        for i in range(n):
            if done[i]:
                continue
            out[i].append(nxt_list[i])
            if eos_list[i]:
                done[i], reason[i] = True, "eos"
            elif stop:
                tail = tokenizer.decode(out[i][-stop_span:], skip_special_tokens=True)
                if any(s in tail for s in stop):
                    done[i], reason[i] = True, "stop"
        if all(done):
            break
        step_ids = nxt.unsqueeze(1)
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], dim=1)
        step_pos = step_pos[:, -1:] + 1
    return list(zip(out, reason, strict=True))


def _text(tokenizer, ids: list[int], reason: str, eos: set[int], stop: list[str]) -> str:
    body = ids[:-1] if reason == "eos" and ids and ids[-1] in eos else ids
    text = tokenizer.decode(body, skip_special_tokens=True)
    if reason == "stop":
        cut = min((text.find(s) for s in stop if s in text), default=-1)
        if cut >= 0:
            text = text[:cut]
    return text


def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int, temperature: float = 0.0,
             num_samples: int = 1, stop: list[str] | None = None, batch_size: int = 64,
             seed: int | None = None, on_progress: Callable[[int], None] | None = None
             ) -> list[list[Completion]]:
    """Generate `num_samples` completions for each formatted prompt; returns one list per prompt.

    temperature 0 is greedy (then all samples of a prompt are equal); `seed` makes sampling
    reproducible. `on_progress(k)` is called after each batch with the number of rows it finished.
    """
    stop = [s for s in (stop or []) if s]
    eos = eos_ids(model, tokenizer)
    pad = pad_id(tokenizer, eos)
    enc = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    jobs = sorted(((i, s) for i in range(len(prompts)) for s in range(num_samples)),
                  key=lambda j: (len(enc[j[0]]), j[0], j[1]))
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    results: list[list[Completion | None]] = [[None] * num_samples for _ in prompts]
    for b in range(0, len(jobs), max(1, batch_size)):
        chunk = jobs[b:b + batch_size]
        outs = _generate_batch(model, [enc[i] for i, _ in chunk], max_new_tokens=max_new_tokens,
                               temperature=temperature, eos=eos, pad=pad, stop=stop, tokenizer=tokenizer,
                               generator=generator)
        for (i, s), (ids, reason) in zip(chunk, outs, strict=True):
            results[i][s] = Completion(text=_text(tokenizer, ids, reason, eos, stop), token_ids=ids,
                                       prompt_ids=enc[i], finish_reason=reason)
        if on_progress is not None:
            on_progress(len(chunk))
    return results  # type: ignore[return-value]


@torch.inference_mode()
def next_token_logprobs(model, tokenizer, prompts: list[str], token_ids: list[int], *, batch_size: int = 64,
                        on_progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """log P(token | prompt) over the full vocabulary for each prompt and each of `token_ids`: [n, k]."""
    eos = eos_ids(model, tokenizer)
    pad = pad_id(tokenizer, eos)
    enc = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(enc[i]))
    out = torch.empty((len(prompts), len(token_ids)), dtype=torch.float32)
    device = _model_device(model)
    cols = torch.tensor(token_ids, dtype=torch.long, device=device)
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        ids, mask = _left_pad([enc[i] for i in idx], pad)
        ids, mask = ids.to(device), mask.to(device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                       logits_to_keep=1).logits[:, -1, :].float()
        out[idx] = torch.log_softmax(logits, dim=-1)[:, cols].cpu()
        if on_progress is not None:
            on_progress(len(idx))
    return out
