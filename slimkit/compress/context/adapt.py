"""Compression-aware adaptation of a scorer: teach it to read compressed items as it reads full ones.

A scorer trained on full items scores compressed ones poorly even when compression kept the right
words: it never saw text with words missing. Adaptation distils the scorer into a copy of itself that
reads the compressed item: the teacher is the frozen original on the FULL item, the student reads the
same item compressed (at a rate drawn from a mix that covers the served one, the full item included),
and the loss is KL(teacher || student) over the label tokens (e.g. yes / no) at the answer position.

Stages, in call order:
1. `make_pairs`: (full prompt, compressed prompt) per training item and rate, from the jobs train split
   or a JSONL of {"query", "text"} rows, compressed by the compressor that will serve.
2. `teacher_targets`: the original's label log-probabilities on the full prompts.
3. `fit`: AdamW with warmup + cosine on the student's label distribution at the last prompt position,
   through `kernels.linear_kl` (the distillation loss) on the label rows of the output embedding.
4. `adapt_scorer`: the whole command; checks label AUC before and after on held-out items and writes an
   ordinary model directory (slimkit.json: parent, compressor, rates, metrics) atomically.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from typing import Any

from slimkit.compress.context.words import ContextError

STAGE = "context-adapt"


def rate_mix(rate: float, rates: Sequence[float] | None = None) -> list[float]:
    """The rates trained on: `rates` if given, else full items, 2x, 4x, 10x; the served `rate` always in."""
    mix = set(rates) if rates else {1.0, 0.5, 0.25, 0.1}
    for r in (*mix, rate):
        if not 0.0 < r <= 1.0:
            raise ContextError(f"rate must be in (0, 1] (the fraction of tokens to keep), got {r}")
    return sorted(mix | {rate}, reverse=True)


def make_pairs(compressor, items: Sequence[tuple[str, str]], rates: Sequence[float], *, template: str,
               format_prompt: Callable[[str], str], seed: int = 0) -> list[tuple[str, str, float]]:
    """(full prompt, compressed prompt, rate) for every item at every rate of the mix, shuffled."""
    out = []
    texts = [text for _, text in items]
    for rate in rates:
        short = texts if rate >= 1.0 else [c.text for c in compressor.compress(texts, rate=rate)]
        for (query, text), s in zip(items, short, strict=True):
            out.append((format_prompt(template.format(query=query, item=text)),
                        format_prompt(template.format(query=query, item=s)), rate))
    random.Random(seed).shuffle(out)
    return out


def _last_hidden(model, tokenizer, prompts: Sequence[str]):
    """The final hidden state at each prompt's last position (prompts left-padded in one batch)."""
    from slimkit.tasks.generate import _left_pad

    ids, mask = _left_pad([tokenizer(p, add_special_tokens=False).input_ids for p in prompts],
                          tokenizer.pad_token_id)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return model.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state[:, -1]


def teacher_targets(model, tokenizer, prompts: Sequence[str], label_ids: Sequence[int], *,
                    batch_size: int = 64):
    """[n, labels] log P(label | prompt) of the frozen original (renormalized by the loss)."""
    import torch

    from slimkit.tasks.generate import next_token_logprobs

    with torch.inference_mode():
        return next_token_logprobs(model, tokenizer, list(prompts), list(label_ids), batch_size=batch_size)


def fit(model, tokenizer, prompts: Sequence[str], targets, label_ids: Sequence[int], *, steps: int,
        batch_size: int = 32, lr: float = 1e-3, warmup: int = 20, seed: int = 0,
        on_progress: Callable[[int], None] | None = None) -> list[float]:
    """Train `model` in place so that its label distribution on `prompts` matches `targets`; the
    losses per step."""
    import torch

    from slimkit import kernels
    from slimkit.schedule import warmup_cosine

    torch.manual_seed(seed)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, warmup=min(warmup, steps // 2), total=steps, min_ratio=0.1))
    rows = torch.tensor(list(label_ids), dtype=torch.long)
    losses = []
    model.train()
    for _ in range(steps):
        idx = rng.sample(range(len(prompts)), min(batch_size, len(prompts)))
        hidden = _last_hidden(model, tokenizer, [prompts[i] for i in idx])
        weight = model.get_output_embeddings().weight[rows]          # the label rows only
        loss = kernels.linear_kl(hidden, weight, targets[idx], kind="forward", reduction="mean").loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if on_progress is not None:
            on_progress(1)
    return losses


def label_auc(model, tokenizer, prompts: Sequence[str], labels: Sequence[int], label_ids: Sequence[int]) -> float:
    """AUC of P(first label) on `prompts` against 0/1 `labels`."""
    import torch

    from slimkit.tasks.eval import auc

    lp = teacher_targets(model, tokenizer, prompts, label_ids)
    return auc(torch.softmax(lp, dim=-1)[:, 0].tolist(), list(labels))


def read_items(data: str | os.PathLike) -> list[tuple[str, str, int | None]]:
    """(query, text, label or None) from a JSONL of {"query", "text"[, "label"]} rows."""
    import json
    from pathlib import Path

    from slimkit.compress.context.train import read_pairs

    pairs = read_pairs(data)
    labels: list[int | None] = []
    for line in Path(data).read_text(encoding="utf-8").splitlines():
        if line.strip():
            v = json.loads(line).get("label")
            labels.append(None if v is None else int(str(v).strip().lower() in ("1", "yes", "true")))
    return [(q, t, y) for (q, t), y in zip(pairs, labels, strict=True)]


def jobs_items(split: str, n: int) -> list[tuple[str, str, int | None]]:
    from slimkit.tasks import get_task

    return [(ex.meta["query"], ex.meta["posting"], ex.meta["label"]) for ex in get_task("jobs").split(split, n)]


def adapt_scorer(model_ref: str, out: str | os.PathLike, *, compressor: str, rate: float,
                 rates: Sequence[float] | None = None, n: int = 2000, data: str | None = None, steps: int = 400,
                 batch_size: int = 32, lr: float = 1e-3, labels: Sequence[str] = ("yes", "no"),
                 template: str | None = None, n_check: int = 200, seed: int = 0, overwrite: bool = False,
                 progress: bool = True) -> dict[str, Any]:
    """`slimkit compress-context adapt`: adapt `model_ref` to items compressed by `compressor` at
    `rate` (and the mix around it), write `out`. The check (label AUC on full and compressed held-out
    items, before and after) needs labels: the jobs validation split, or the `label` field of `data`'s
    last `n_check` rows (held out from training)."""
    from slimkit import artifacts
    from slimkit.compress import context
    from slimkit.compress.context.train import progress_bar
    from slimkit.tasks import format_prompt
    from slimkit.tasks.eval import label_token_ids
    from slimkit.tasks.jobs import TEMPLATE

    if n < 2 or steps < 1 or batch_size < 1:
        raise ContextError("need n >= 2 items, steps >= 1 and batch_size >= 1")
    mix = rate_mix(rate, rates)
    artifacts.check_target(out, overwrite=overwrite)
    template = template or TEMPLATE
    # Items to train on and to check on (held out).
    if data:
        items = read_items(data)
        held = [x for x in items[-n_check:] if x[2] is not None] if 0 < n_check < len(items) else []
        train = items[:-n_check] if held else items
    else:
        train, held = jobs_items("train", n), jobs_items("validation", n_check) if n_check else []
    model, tok = artifacts.load(model_ref)
    comp = context.load(compressor, tokenizer=tok if compressor in context.BASELINES else None)
    ids = label_token_ids(tok, labels)
    fmt = lambda p: format_prompt(tok, p)  # noqa: E731
    bar, ticker = progress_bar(progress)

    def check(tag: str, metrics: dict[str, Any]) -> None:
        for r in sorted({1.0, rate}, reverse=True) if held else ():
            model.eval()
            metrics[f"auc_{tag}@{r:g}"] = round(held_auc(model, tok, comp, held, r, template, fmt, ids), 4)

    metrics: dict[str, Any] = {}
    with bar:
        check("before", metrics)
        pairs = make_pairs(comp, [(q, t) for q, t, _ in train], mix, template=template, format_prompt=fmt, seed=seed)
        targets = teacher_targets(model, tok, [f for f, _, _ in pairs], ids)
        losses = fit(model, tok, [s for _, s, _ in pairs], targets, ids, steps=steps, batch_size=batch_size, lr=lr,
                     seed=seed, on_progress=ticker("adapt", steps))
        model.eval()
        check("after", metrics)
    metrics.update({"final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 5), "items": len(train),
                    "pairs": len(pairs)})
    recipe = {"compressor": str(compressor), "rate": rate, "rates": mix, "n": len(train), "data": data,
              "steps": steps, "batch_size": batch_size, "lr": lr, "labels": list(labels), "seed": seed}
    artifacts.save(model, tok, out, stage=STAGE, parent=model_ref, recipe=recipe, metrics=metrics, overwrite=overwrite)
    return metrics


def held_auc(model, tok, comp, held, rate: float, template: str, fmt, ids) -> float:
    """Label AUC of `model` on the held-out (query, text, label) items compressed to `rate`."""
    texts = [t for _, t, _ in held]
    short = texts if rate >= 1.0 else [c.text for c in comp.compress(texts, rate=rate)]
    prompts = [fmt(template.format(query=q, item=s)) for (q, _, _), s in zip(held, short, strict=True)]
    return label_auc(model, tok, prompts, [y for *_, y in held], ids)
