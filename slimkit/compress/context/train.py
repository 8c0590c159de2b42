"""The keep/drop token classifier (LLMLingua-2 style), distilled from a teacher's judgement.

Stages, in call order:
1. `teacher_moves`: for each (query, text) pair, the teacher's score (logit of the first label minus
   the second's, after the scoring template) with each word left out in turn, and how far each
   removal moves it. A pair's labels (`pair_labels`) are its moves over its largest; a text's
   query-free labels (`text_labels`) take each word's largest move under any of the text's queries,
   so what some query turns on is kept (in [0, 1]: the words whose removal moves the score least are
   the ones to drop first).
   `elimination_labels` (the default for the query-free labels) ranks words instead by backward
   elimination: drop the words whose removal moves the score least under every query of the text, a
   quarter at a time, re-measure on what is left, and label each word by how long it survives. Leaving
   one word out of a multi-word field ("machine learning engineer") barely moves the score while its
   neighbours still name the field, so leave-one-out labels such words low; on a text already cut to
   its fields, removing one of them moves it, so they survive to the end.
2. `make_rows`: token ids and token labels (a token takes the highest label of the words it overlaps):
   each text once alone with its query-free labels, and once after each of its queries with that
   pair's labels, so that one model serves both modes.
3. `fit`: a tiny bidirectional encoder (BERT, a few hundred thousand parameters) with a keep/drop token
   classification head, trained with cross-entropy against the soft labels (P(keep) = label).
4. `train_classifier`: the whole command; writes an ordinary model directory (config, safetensors,
   tokenizer, slimkit.json with the held-out token accuracy) atomically.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from slimkit.compress.context.scorers import to_words
from slimkit.compress.context.words import ContextError, join, split_words

STAGE = "context-compressor"
LABELS = ("elimination", "leave-one-out")          # how the query-free labels are made


def teacher_moves(model, tokenizer, pairs: Sequence[tuple[str, str]], *, template: str,
                  labels: Sequence[str] = ("yes", "no"), batch_size: int = 64,
                  on_progress: Callable[[int], None] | None = None) -> list[list[float]]:
    """Per word of each pair's text: how far leaving it out moves the teacher's score (|change| of the
    logit of the first label minus the second's, after the scoring template)."""
    from slimkit.tasks import format_prompt
    from slimkit.tasks.eval import label_token_ids
    from slimkit.tasks.generate import next_token_logprobs

    ids = label_token_ids(tokenizer, labels)
    out = []
    for query, text in pairs:
        spans = split_words(text)
        variants = [text] + [join(text, spans, [j for j in range(len(spans)) if j != i]) for i in range(len(spans))]
        prompts = [format_prompt(tokenizer, template.format(query=query, item=v)) for v in variants]
        lp = next_token_logprobs(model, tokenizer, prompts, ids, batch_size=batch_size)
        score = (lp[:, 0] - lp[:, 1]).tolist()
        out.append([abs(score[0] - s) for s in score[1:]])
        if on_progress is not None:
            on_progress(1)
    return out


def pair_labels(moves: Sequence[Sequence[float]]) -> list[list[float]]:
    """Each pair's keep labels in [0, 1]: a word's move over the most any word of that pair moves."""
    return [[round(m / (max(ms) or 1.0), 4) for m in ms] for ms in moves]


def text_labels(pairs: Sequence[tuple[str, str]], moves: Sequence[Sequence[float]]) -> dict[str, list[float]]:
    """Each distinct text's query-free keep labels: the most a word's removal moves the score under any
    query paired with that text, over the most any word moves under any of them. A compressor that
    does not see the query must keep what any query may turn on: on a pair that differs from the text
    in one field, only that field moves the score, so each query alone under-labels the others."""
    return {t: [round(m / (max(ms) or 1.0), 4) for m in ms] for t, ms in text_labels_raw(pairs, moves).items()}


def text_labels_raw(pairs: Sequence[tuple[str, str]], moves: Sequence[Sequence[float]]) -> dict[str, list[float]]:
    """Each distinct text's largest move per word under any query paired with it."""
    best: dict[str, list[float]] = {}
    for (_, text), ms in zip(pairs, moves, strict=True):
        best[text] = [max(a, b) for a, b in zip(best[text], ms, strict=True)] if text in best else list(ms)
    return best


def elimination_labels(model, tokenizer, pairs: Sequence[tuple[str, str]], *, template: str,
                       labels: Sequence[str] = ("yes", "no"), drop: float = 0.25, batch_size: int = 64,
                       moves: Sequence[Sequence[float]] | None = None,
                       on_progress: Callable[[int], None] | None = None) -> dict[str, list[float]]:
    """Each distinct text's query-free keep labels by backward elimination (module docstring): each
    round leaves every remaining word out in turn under each of the text's queries, and removes the
    `drop` share (at least one) whose largest move is smallest; a word's label is its place in the
    removal order over the text's words (the first removed 0, the last survivor 1). `moves`: the
    pairs' `teacher_moves`, when already measured, are the first round's."""
    from slimkit.tasks import format_prompt
    from slimkit.tasks.eval import label_token_ids
    from slimkit.tasks.generate import next_token_logprobs

    if not 0.0 < drop < 1.0:
        raise ContextError(f"drop must be in (0, 1), got {drop}")
    ids = label_token_ids(tokenizer, labels)
    queries: dict[str, list[str]] = {}
    for query, text in pairs:
        queries.setdefault(text, []).append(query)
    first = text_labels_raw(pairs, moves) if moves is not None else {}
    out = {}
    for text, qs in queries.items():
        spans = split_words(text)
        alive, removed = list(range(len(spans))), []
        while len(alive) > 1:
            if len(alive) == len(spans) and text in first:
                move = first[text]
            else:
                variants = [join(text, spans, alive)] + [join(text, spans, [j for j in alive if j != i]) for i in alive]
                prompts = [format_prompt(tokenizer, template.format(query=q, item=v)) for q in qs for v in variants]
                lp = next_token_logprobs(model, tokenizer, prompts, ids, batch_size=batch_size)
                score = (lp[:, 0] - lp[:, 1]).view(len(qs), len(variants))
                move = (score[:, 1:] - score[:, :1]).abs().amax(dim=0).tolist()
            gone = sorted(range(len(alive)), key=lambda k: (move[k], -k))[:max(1, int(drop * len(alive)))]
            gone_set = set(gone)
            removed += [alive[k] for k in gone]
            alive = [w for k, w in enumerate(alive) if k not in gone_set]
        removed += alive
        rank = {w: r for r, w in enumerate(removed)}
        out[text] = [round(rank[w] / max(1, len(spans) - 1), 4) for w in range(len(spans))]
        if on_progress is not None:
            on_progress(len(qs))
    return out


def teacher_labels(model, tokenizer, pairs: Sequence[tuple[str, str]], **kwargs) -> list[list[float]]:
    """Per word of each pair's text: its keep label in [0, 1], from leave-one-word-out teacher scores."""
    return pair_labels(teacher_moves(model, tokenizer, pairs, **kwargs))


def _token_labels(tokenizer, text: str, labels: Sequence[float], max_len: int) -> tuple[list[int], list[float]]:
    """The text's token ids and token labels (a token takes the highest label of the words it overlaps)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = split_words(text)
    return enc["input_ids"][:max_len], [to_words([o], spans, labels)[0] for o in enc["offset_mapping"]][:max_len]


def make_rows(tokenizer, pairs: Sequence[tuple[str, str]], moves: Sequence[Sequence[float]], *,
              sep: int, max_len: int, per_text: dict[str, list[float]] | None = None) -> list[list[tuple[list[int], list[int], list[float]]]]:
    """Per distinct text (in order of first appearance), its rows of (input ids, token type ids, token
    labels with -1 where not trained): the text alone with its query-free labels (`text_labels`), then
    the text after each of its pairs' queries with that pair's labels, so that one model serves both
    modes. `per_text`: query-free labels from elsewhere (`elimination_labels`)."""
    per_text = per_text if per_text is not None else text_labels(pairs, moves)
    groups: dict[str, list] = {}
    for (query, text), labels in zip(pairs, pair_labels(moves), strict=True):
        if text not in groups:
            groups[text] = [(*_one_type(_token_labels(tokenizer, text, per_text[text], max_len)),)]
        ids, tok_labels = _token_labels(tokenizer, text, labels, max_len)
        prefix = (tokenizer.encode(query, add_special_tokens=False) + [sep])[: max_len // 2]
        room = max_len - len(prefix)
        groups[text].append((prefix + ids[:room], [0] * len(prefix) + [1] * len(ids[:room]),
                             [-1.0] * len(prefix) + tok_labels[:room]))
    return list(groups.values())


def _one_type(encoded: tuple[list[int], list[float]]) -> tuple[list[int], list[int], list[float]]:
    ids, labels = encoded
    return ids, [1] * len(ids), labels


def _batch(rows, pad: int):
    import torch

    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    types = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -1.0)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (a, t, y) in enumerate(rows):
        ids[i, :len(a)], types[i, :len(a)], labels[i, :len(a)], mask[i, :len(a)] = (
            torch.tensor(a), torch.tensor(t), torch.tensor(y), 1)
    return ids, types, mask, labels


def fit(rows, *, vocab_size: int, pad: int, hidden: int = 64, layers: int = 2, steps: int = 400,
        batch_size: int = 32, lr: float = 3e-3, max_len: int = 512, seed: int = 0,
        on_progress: Callable[[int], None] | None = None):
    """A tiny BERT token classifier trained on `rows` (see make_rows)."""
    import torch
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=max(1, hidden // 32), intermediate_size=2 * hidden,
                        max_position_embeddings=max_len, type_vocab_size=2, pad_token_id=pad, num_labels=2,
                        id2label={0: "drop", 1: "keep"}, label2id={"drop": 0, "keep": 1})
    model = BertForTokenClassification(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    # One-cycle warmup over 10% of the steps (at least 1.5 of them, so that a short run still has a
    # warmup and a decay); a run of 1-2 steps keeps lr constant.
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=max(0.1, 1.5 / steps))
             if steps >= 3 else None)
    rng = random.Random(seed)
    model.train()
    for _ in range(steps):
        ids, types, mask, labels = _batch(rng.sample(rows, min(batch_size, len(rows))), pad)
        logp = torch.log_softmax(model(input_ids=ids, token_type_ids=types, attention_mask=mask).logits, dim=-1)
        seen = labels >= 0
        y = labels[seen]
        loss = -(y * logp[..., 1][seen] + (1 - y) * logp[..., 0][seen]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        if on_progress is not None:
            on_progress(1)
    return model.eval()


def accuracy(model, rows, pad: int) -> float:
    """Token accuracy of the keep/drop decisions (P(keep) >= 0.5 against label >= 0.5) on `rows`."""
    import torch

    right = total = 0
    for b in range(0, len(rows), 64):
        ids, types, mask, labels = _batch(rows[b:b + 64], pad)
        with torch.inference_mode():
            pred = model(input_ids=ids, token_type_ids=types, attention_mask=mask).logits.argmax(-1)
        seen = labels >= 0
        right += int((pred[seen] == (labels[seen] >= 0.5)).sum())
        total += int(seen.sum())
    return right / max(1, total)


def read_pairs(data: str | Path) -> list[tuple[str, str]]:
    """(query, text) pairs from a JSONL file of {"query": ..., "text": ...} rows."""
    import json

    pairs = []
    try:
        lines = Path(data).read_bytes().decode("utf-8").splitlines()
    except OSError as e:
        raise ContextError(f"cannot read {data}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ContextError(f"{data} is not UTF-8 text (byte {e.start})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pairs.append((str(row["query"]), str(row["text"])))
        except (ValueError, KeyError, TypeError):
            raise ContextError(f"{data}:{n}: expected a JSON object with \"query\" and \"text\"") from None
        if not pairs[-1][1].strip():
            raise ContextError(f"{data}:{n}: text is empty")
    if not pairs:
        raise ContextError(f"{data} holds no rows")
    return pairs


def jobs_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(query, posting) pairs of `n` postings of the jobs task's train split (all layouts): each
    posting with its own query and with the three queries that match it, differ in its title only and
    differ in its place only (a catalog's labelling set: each item with a positive and hard negatives)."""
    from slimkit.tasks import get_task
    from slimkit.tasks.jobs import PLACES, TITLES, make_query

    rng = random.Random(seed)
    pairs = []
    for ex in get_task("jobs").split("train", n):
        title, place, text = ex.meta["posting_title"], ex.meta["posting_place"], ex.meta["posting"]
        queries = [ex.meta["query"]]
        for q_title, q_place in ((title, place),
                                 (rng.choice([t for t in sorted(TITLES) if t != title]), place),
                                 (title, rng.choice([p for p in PLACES if p != place]))):
            query = make_query(q_title, q_place, rng.sample(TITLES[q_title], 2))
            if query not in queries:
                queries.append(query)
        pairs += [(q, text) for q in queries]
    return pairs


def progress_bar(enabled: bool):
    """(a context for a transient rich progress bar, ticker(what, total) -> an on_progress callback);
    without `enabled`, a no-op context and tickers that return None."""
    import contextlib

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not enabled:
        return contextlib.nullcontext(), lambda what, total: None
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   transient=True)

    def ticker(what: str, total: int):
        tid = bar.add_task(what, total=total)
        return lambda k: bar.advance(tid, k)

    return bar, ticker


def train_classifier(teacher: str, out: str | Path, *, n: int = 200, data: str | None = None, steps: int = 400, hidden: int = 64, layers: int = 2,
                     template: str | None = None, seed: int = 0, labels: str = "elimination", overwrite: bool = False,
                     progress: bool = True) -> dict[str, Any]:
    """`slimkit compress-context train`: label with `teacher`, fit the classifier, write `out`.
    `labels`: how the query-free labels are made, "elimination" (`elimination_labels`) or
    "leave-one-out" (`text_labels`)."""
    import json

    from slimkit import artifacts
    from slimkit.tasks.jobs import TEMPLATE

    if n < 2 or steps < 1:
        raise ContextError("need n >= 2 pairs and steps >= 1")
    if labels not in LABELS:
        raise ContextError(f"unknown labels {labels!r}; choose one of {', '.join(LABELS)}")
    artifacts.check_target(out, overwrite=overwrite)
    pairs = read_pairs(data) if data else jobs_pairs(n, seed)
    model, tok = artifacts.load(teacher)
    sep = tok.eos_token_id if tok.eos_token_id is not None else tok.pad_token_id
    bar, ticker = progress_bar(progress)
    with bar:
        moves = teacher_moves(model, tok, pairs, template=template or TEMPLATE,
                              on_progress=ticker("teacher labels", len(pairs)))
        per_text = (elimination_labels(model, tok, pairs, template=template or TEMPLATE, moves=moves,
                                       on_progress=ticker("teacher labels (elimination)", len(pairs)))
                    if labels == "elimination" else text_labels(pairs, moves))
        groups = make_rows(tok, pairs, moves, sep=sep, max_len=512, per_text=per_text)
        if len(groups) < 2:
            raise ContextError("need at least 2 distinct texts (one is held out to check the classifier)")
        held = max(1, len(groups) // 10)                   # whole texts (all their rows) held out
        train_rows = [r for g in groups[held:] for r in g]
        held_rows = [r for g in groups[:held] for r in g]
        classifier = fit(train_rows, vocab_size=len(tok), pad=tok.pad_token_id, hidden=hidden, layers=layers,
                         steps=steps, seed=seed, on_progress=ticker("fit classifier", steps))
    metrics = {"heldout_token_accuracy": accuracy(classifier, held_rows, tok.pad_token_id),
               "heldout_keep_rate": sum(y >= 0.5 for r in held_rows for y in r[2]) /
               max(1, sum(y >= 0 for r in held_rows for y in r[2])),
               "pairs": len(pairs), "texts": len(groups), "params": sum(p.numel() for p in classifier.parameters())}
    recipe = {"teacher": str(teacher), "n": n if data is None else len(pairs), "data": data, "steps": steps,
              "hidden": hidden, "layers": layers, "seed": seed, "labels": labels}
    # The teacher's labels go with the model (labels.jsonl: each pair's words, its labels, and the
    # text's query-free labels).
    record = "".join(json.dumps({"query": q, "words": [t[a:b] for a, b in split_words(t)], "labels": y,
                                 "text_labels": per_text[t]}) + "\n"
                     for (q, t), y in zip(pairs, pair_labels(moves), strict=True))
    artifacts.save(classifier, tok, out, stage=STAGE, parent=teacher, recipe=recipe, metrics=metrics,
                   extra_files={"labels.jsonl": record}, overwrite=overwrite)
    return metrics
