"""Context (input) compression with a controlled rate: drop the least important whole words of a text
until it fits a token budget, never dropping protected spans.

    from slimkit.compress import context
    comp = context.load("toy:student")                 # surprisal under a causal LM (any model dir)
    comp = context.load("runs/ctx-classifier")         # a keep/drop classifier (`slimkit compress-context train`)
    out = comp.compress(postings, rate=0.25, queries=[query] * len(postings))
    out[0].text, out[0].tokens_in, out[0].tokens_out, out[0].ratio

This small API (`load`, `ContextCompressor.compress`, `Protection`) is also what the scorer uses
(`slimkit.serve.compression`): the one place where `serve` imports from `compress`.

Modules: `words` (whole words, protected spans, rate control), `scorers` (word importance), `train`
(the classifier's labels from a teacher and its training), `offline` (JSONL catalogs, resumable, Ray).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from slimkit.compress.context.scorers import ClassifierScorer, HeadScorer, RandomScorer, SurprisalScorer
from slimkit.compress.context.words import (
    ContextError,
    Protection,
    TokenCounter,
    as_text,
    check_rate,
    select,
    split_words,
)

__all__ = ["BASELINES", "Compressed", "ContextCompressor", "ContextError", "Protection", "TokenCounter", "check_rate", "load",
           "split_words"]
BASELINES = ("head", "random")


@dataclass
class Compressed:
    text: str
    tokens_in: int
    tokens_out: int
    target: int                         # the token budget that was asked for (rate x tokens_in, rounded)
    limit: int = 0                      # the most tokens allowed: the budget, or the top of the rate's 5% band

    @property
    def ratio(self) -> float:
        """Achieved fraction of tokens kept."""
        return self.tokens_out / self.tokens_in if self.tokens_in else 1.0


class ContextCompressor:
    """A word scorer, the tokenizer that budgets are counted in, and what is protected."""

    def __init__(self, scorer, tokenizer, protection: Protection | None = None, name: str = "") -> None:
        self.scorer, self.tokenizer = scorer, tokenizer
        self.protection = protection or Protection()
        self.name = name or getattr(scorer, "kind", "")
        self.count = TokenCounter(tokenizer)       # tokens of a text under this tokenizer (no special tokens)

    def compress(self, texts: Sequence[str | bytes], *, rate: float | None = None, budget: int | None = None,
                 queries: Sequence[str | None] | None = None, query: str | None = None) -> list[Compressed]:
        """Compress each text to `rate` x its tokens (or `budget` tokens); `queries` (one per text) or
        `query` (for all) make the scorer question-aware and protect the query's terms."""
        check_rate(rate, budget)
        texts = [as_text(t, f"text {i}") for i, t in enumerate(texts)]
        if queries is None:
            queries = [query] * len(texts)
        if len(queries) != len(texts):
            raise ContextError(f"{len(queries)} queries for {len(texts)} texts: give one query per text")
        if not texts:
            return []
        spans = [split_words(t) for t in texts]
        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        encoded = list(zip(enc["input_ids"], enc["offset_mapping"], strict=True))
        scores = self.scorer.word_scores(texts, spans, list(queries), encoded)
        out = []
        for text, sp, sc, q, (ids, _) in zip(texts, spans, scores, queries, encoded, strict=True):
            sel = select(text, sp, sc, self.protection.mask(text, sp, q), self.count, len(ids), rate=rate,
                         budget=budget)
            out.append(Compressed(sel.text, sel.tokens_in, sel.tokens_out, sel.target, sel.limit))
        return out


def _architectures(path) -> list[str]:
    import json
    from pathlib import Path

    try:
        return list(json.loads((Path(path) / "config.json").read_text()).get("architectures") or [])
    except (OSError, ValueError):
        return []


def load(ref: str | os.PathLike, *, protection: Protection | None = None, tokenizer=None,
         seed: int = 0) -> ContextCompressor:
    """A compressor from a model directory (a causal LM: surprisal; a token classifier: keep/drop) or
    a baseline name (`head`, `random`; these need `tokenizer`, a tokenizer or a model dir, to count tokens)."""
    from slimkit import artifacts

    text = os.fspath(ref)
    if text in BASELINES:
        if tokenizer is None:
            raise ContextError(f"the {text} baseline needs a tokenizer to count tokens in")
        tok = artifacts.load_tokenizer(tokenizer) if isinstance(tokenizer, str | os.PathLike) else tokenizer
        scorer = HeadScorer() if text == "head" else RandomScorer(seed)
        return ContextCompressor(scorer, tok, protection, name=text)
    path = artifacts.check_model_dir(ref)
    if any(a.endswith("ForTokenClassification") for a in _architectures(path)):
        import torch
        from transformers import AutoModelForTokenClassification

        try:
            model = AutoModelForTokenClassification.from_pretrained(path, dtype=torch.float32).eval()
        except Exception as e:  # transformers raises many types for a broken dir
            raise ContextError(f"cannot load the compressor in {path}: {str(e).splitlines()[0]}") from None
        tok = artifacts.load_tokenizer(path)
        return ContextCompressor(ClassifierScorer(model, tok, path), tok, protection, name="classifier")
    model, tok = artifacts.load(path)
    return ContextCompressor(SurprisalScorer(model, tok, path), tok, protection, name="surprisal")
