"""Word-importance scorers behind one interface: `word_scores(texts, spans, queries)`, higher = keep.

- `SurprisalScorer`: a causal LM's surprisal of each token (LLMLingua); with a query, conditioned on it
  and raised by how much the query changes the token's log-probability (LongLLMLingua's contrast).
- `ClassifierScorer`: a small trained keep/drop token classifier's P(keep) (LLMLingua-2), reading the
  query before the text when one is given (see `train.py`).
- `HeadScorer`, `RandomScorer`: the baselines (keep the first words; keep words at random).

Every scorer gets each text's tokens (ids, character offsets) under the compressor's tokenizer.
Model scorers score tokens; a word gets the highest score of the tokens that overlap it (a BPE token
may span several words).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

Spans = Sequence[tuple[int, int]]


def to_words(spans: Spans, offsets: Sequence[tuple[int, int]], token_scores: Sequence[float]) -> list[float]:
    """Each word's highest score among the tokens overlapping it (0 where none does)."""
    out = [float("-inf")] * len(spans)
    t = 0
    for w, (s, e) in enumerate(spans):
        while t < len(offsets) and offsets[t][1] <= s:
            t += 1
        j = t
        while j < len(offsets) and offsets[j][0] < e:
            if offsets[j][1] > s:
                out[w] = max(out[w], token_scores[j])
            j += 1
    return [0.0 if x == float("-inf") else x for x in out]


class _ModelScorer:
    """Shared parts: tokenize with offsets, cut long texts into windows, batch rows, map to words."""
    kind = ""
    batch_size = 32

    def __init__(self, model, tokenizer, path: Path | None = None) -> None:
        import torch

        self.model, self.tokenizer, self.path = model, tokenizer, path
        self.max_len = int(getattr(model.config, "max_position_embeddings", 512) or 512)
        self.sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.sep
        self._torch = torch

    def prefix(self, query: str | None) -> list[int]:
        """The ids before a text's own (cached per query: a request's items share theirs)."""
        cache = self.__dict__.setdefault("_prefixes", {})
        if query not in cache:
            if len(cache) > 10_000:
                cache.clear()
            cache[query] = self.make_prefix(query)
        return cache[query]

    def make_prefix(self, query: str | None) -> list[int]:
        raise NotImplementedError

    def score_rows(self, rows: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        """Per-token scores of each row's text ids (row = (prefix ids, text ids))."""
        raise NotImplementedError

    def token_scores(self, ids: list[int], query: str | None) -> list[float]:
        return self.batch_token_scores([ids], [query])[0]

    def batch_token_scores(self, ids_list: list[list[int]], queries: Sequence[str | None]) -> list[list[float]]:
        # Windows of the text that fit the model beside their prefix; a text's scores are its windows' in order.
        rows, owner = [], []
        for k, (ids, q) in enumerate(zip(ids_list, queries, strict=True)):
            pre = self.prefix(q)[-(self.max_len // 2):]
            width = max(1, self.max_len - len(pre))
            for start in range(0, max(1, len(ids)), width):
                rows.append((pre, ids[start:start + width]))
                owner.append(k)
        out: list[list[float]] = [[] for _ in ids_list]
        order = sorted(range(len(rows)), key=lambda r: len(rows[r][0]) + len(rows[r][1]))
        for b in range(0, len(order), self.batch_size):
            chunk = order[b:b + self.batch_size]
            for r, scores in zip(chunk, self.score_rows([rows[r] for r in chunk]), strict=True):
                out[owner[r]].append((r, scores))
        return [[x for _, s in sorted(parts) for x in s] for parts in out]

    def _batch(self, rows: list[tuple[list[int], list[int]]]):
        torch = self._torch
        width = max(len(p) + len(t) for p, t in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (p, t) in enumerate(rows):
            ids[i, :len(p) + len(t)] = torch.tensor(p + t, dtype=torch.long)
            mask[i, :len(p) + len(t)] = 1
        return ids, mask

    def word_scores(self, texts: Sequence[str], spans: Sequence[Spans], queries: Sequence[str | None],
                    encoded: Sequence[tuple[list[int], list[tuple[int, int]]]]) -> list[list[float]]:
        """`encoded`: each text's (token ids, character offsets) under this scorer's tokenizer."""
        scores = self.batch_token_scores([ids for ids, _ in encoded], queries)
        return [to_words(sp, offs, sc) for sp, (_, offs), sc in zip(spans, encoded, scores, strict=True)]


class SurprisalScorer(_ModelScorer):
    kind = "surprisal"

    def make_prefix(self, query: str | None) -> list[int]:
        ids = [self.sep] if self.sep is not None else []
        if query:
            ids += self.tokenizer.encode(query + "\n", add_special_tokens=False)
        return ids

    def surprisal(self, rows: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        torch = self._torch
        ids, mask = self._batch(rows)
        with torch.inference_mode():
            logp = torch.log_softmax(self.model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        out = []
        for i, (p, t) in enumerate(rows):
            pos = torch.arange(len(p) - 1, len(p) + len(t) - 1)
            # The first token of a row without a prefix has no context: it counts as most surprising.
            s = -logp[i, pos.clamp_min(0), ids[i, pos + 1]] if len(p) else torch.full((len(t),), 30.0)
            if not len(p) and len(t) > 1:
                s[1:] = -logp[i, torch.arange(len(t) - 1), ids[i, 1:len(t)]]
            out.append(s.tolist())
        return out

    def score_rows(self, rows: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        cond = self.surprisal(rows)
        bare = len(self.prefix(None))
        plain = [(p[:bare], t) for p, t in rows]
        if all(len(p) == len(q) for (p, _), (q, _) in zip(rows, plain, strict=True)):
            return cond
        # Question-aware: tokens the query makes much more (or less) likely matter to it.
        base = self.surprisal(plain)
        return [[c + abs(b - c) for c, b in zip(cr, br, strict=True)] for cr, br in zip(cond, base, strict=True)]


class ClassifierScorer(_ModelScorer):
    kind = "classifier"
    batch_size = 64

    def make_prefix(self, query: str | None) -> list[int]:
        if not query:
            return []
        return self.tokenizer.encode(query, add_special_tokens=False) + [self.sep]

    def score_rows(self, rows: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        torch = self._torch
        ids, mask = self._batch(rows)
        types = torch.zeros_like(ids)
        for i, (p, t) in enumerate(rows):
            types[i, len(p):len(p) + len(t)] = 1
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits.float()
        keep = torch.softmax(logits, dim=-1)[..., 1]
        return [keep[i, len(p):len(p) + len(t)].tolist() for i, (p, t) in enumerate(rows)]


class HeadScorer:
    """Head truncation: earlier words first."""
    kind = "head"

    def word_scores(self, texts, spans, queries, encoded=None) -> list[list[float]]:
        return [[-float(i) for i in range(len(sp))] for sp in spans]


class RandomScorer:
    """Random dropping (seeded per text, so reruns drop the same words)."""
    kind = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def word_scores(self, texts, spans, queries, encoded=None) -> list[list[float]]:
        out = []
        for text, sp in zip(texts, spans, strict=True):
            rng = random.Random(f"{self.seed}:{text}")
            out.append([rng.random() for _ in sp])
        return out
