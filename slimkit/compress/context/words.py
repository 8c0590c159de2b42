"""Whole words, protected spans and rate control: which words of a text to keep for a token budget.

A word is a maximal run of non-whitespace characters, except that its trailing punctuation (`.,;:!?`
after at least one other character) is a unit of its own, so that "Rome." can be kept as "Rome" when
the budget has no room for the period; compression keeps or drops whole units, so the output never
holds half a word. Kept words are joined with the original whitespace where they were
neighbours, else with a newline where the dropped stretch held one (line structure survives), else
with a space. The budget is counted in tokens of the compressor's tokenizer on the output text itself,
so BPE merges across kept words are accounted for, not estimated.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from slimkit.errors import SlimkitError

_WORD = re.compile(r"\S+")
_TRAIL = re.compile(r"[.,;:!?]+$")
_DIGIT = re.compile(r"\d")
_PUNCT = ".,;:!?()[]{}\"'`"
# Query words that say nothing about relevance; they are not protected as "the query's own terms".
STOPWORDS = frozenset("a an and are as at be by for from has have in is it of on or the to with".split())


class ContextError(SlimkitError):
    pass


def check_rate(rate: float | None, budget: int | None) -> None:
    """Exactly one of a ratio in (0, 1] and a positive token budget."""
    if (rate is None) == (budget is None):
        raise ContextError("give either a rate (fraction of tokens to keep, in (0, 1]) or a token budget")
    if rate is not None and not (0.0 < rate <= 1.0):
        raise ContextError(f"rate must be in (0, 1] (the fraction of tokens to keep), got {rate}")
    if budget is not None and budget < 1:
        raise ContextError(f"token budget must be >= 1, got {budget}")


def as_text(value, what: str = "input") -> str:
    """`value` as a non-empty str; bytes must be UTF-8. One clear error otherwise."""
    if isinstance(value, bytes | bytearray):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ContextError(f"{what} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    if not isinstance(value, str):
        raise ContextError(f"{what} must be text, got {type(value).__name__}")
    if not value.strip():
        raise ContextError(f"{what} is empty: nothing to compress")
    return value


def split_words(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the units of `text`: its words, and each word's trailing
    punctuation apart (module docstring)."""
    out = []
    for m in _WORD.finditer(text):
        s, e = m.span()
        t = _TRAIL.search(m.group())
        if t is not None and t.start() > 0:
            out += [(s, s + t.start()), (s + t.start(), e)]
        else:
            out.append((s, e))
    return out


def normalize(word: str) -> str:
    return word.strip(_PUNCT).lower()


@dataclass(frozen=True)
class Protection:
    """What is never dropped: words with a digit (`numbers`), words touched by a case-insensitive match
    of a user term (`terms`, may span words) or of a user regex (`patterns`), and words equal (case and
    surrounding punctuation aside) to a word of the query (`query_terms`, stopwords aside)."""
    numbers: bool = True
    terms: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    query_terms: bool = True

    def __post_init__(self) -> None:
        for p in self.patterns:
            try:
                re.compile(p)
            except re.error as e:
                raise ContextError(f"protected pattern {p!r} is not a valid regular expression: {e}") from None
        if any(not t.strip() for t in self.terms):
            raise ContextError("a protected term is empty")

    def mask(self, text: str, spans: Sequence[tuple[int, int]], query: str | None = None) -> list[bool]:
        """Which words (`spans` of `text`) are protected."""
        keep = [False] * len(spans)
        hits: list[tuple[int, int]] = []
        lowered = text.lower()
        for term in self.terms:
            t = term.lower()
            start = lowered.find(t)
            while start >= 0:
                hits.append((start, start + len(t)))
                start = lowered.find(t, start + 1)
        for p in self.patterns:
            hits += [m.span() for m in re.finditer(p, text) if m.end() > m.start()]
        qwords = set()
        if query and self.query_terms:
            qwords = {w for w in map(normalize, query.split()) if w and w not in STOPWORDS}
        digits = self.numbers and bool(_DIGIT.search(text))
        if not (digits or qwords or hits):
            return keep
        for i, (s, e) in enumerate(spans):
            word = text[s:e]
            keep[i] = ((digits and bool(_DIGIT.search(word))) or (bool(qwords) and normalize(word) in qwords)
                       or (bool(hits) and any(hs < e and s < he for hs, he in hits)))
        return keep


def join(text: str, spans: Sequence[tuple[int, int]], kept: Sequence[int]) -> str:
    """The kept words (indices into `spans`, ascending) as text, whitespace as in the module docstring."""
    out: list[str] = []
    for n, i in enumerate(kept):
        if n:
            prev = kept[n - 1]
            gap = text[spans[prev][1]:spans[i][0]]
            out.append(gap if i == prev + 1 else "\n" if "\n" in gap else " ")
        out.append(text[spans[i][0]:spans[i][1]])
    return "".join(out)


class TokenCounter:
    """Token counts of texts under a tokenizer, fast: a fast tokenizer's count is the sum over its
    pre-tokenized pieces (tokens never cross them), and each piece's count is cached, so re-counting a
    text that changed in one place re-runs BPE on that piece only. Texts holding an added token (whose
    split precedes pre-tokenization), and slow tokenizers, are counted by `encode`."""
    LIMIT = 200_000

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.backend = backend if backend is not None and backend.pre_tokenizer is not None else None
        self.added = [t.content for t in backend.get_added_tokens_decoder().values()] if self.backend else []
        self.cache: dict[str, int] = {}             # pre-tokenized piece -> tokens
        self.words: dict[str, int] = {}             # word -> tokens of " word"

    def __call__(self, text: str) -> int:
        b = self.backend
        if b is None or any(a in text for a in self.added):
            return len(self.tokenizer.encode(text, add_special_tokens=False))
        if b.normalizer is not None:
            text = b.normalizer.normalize_str(text)
        total = 0
        for piece, _ in b.pre_tokenizer.pre_tokenize_str(text):
            n = self.cache.get(piece)
            if n is None:
                if len(self.cache) > self.LIMIT:
                    self.cache.clear()
                n = self.cache[piece] = len(b.model.tokenize(piece))
            total += n
        return total

    def word(self, word: str) -> int:
        """Tokens of `word` on its own after a space (cached): a word's cost when its neighbours are dropped."""
        n = self.words.get(word)
        if n is None:
            if len(self.words) > self.LIMIT:
                self.words.clear()
            n = self.words[word] = self(" " + word)
        return n


@dataclass
class Selection:
    text: str
    tokens_in: int
    tokens_out: int
    target: int                          # the token budget asked for (rate x tokens in, rounded)
    kept: list[int]                      # indices of the kept words
    limit: int = 0                       # the most tokens the output may hold (protected words aside)


# After the search, up to this many further candidates (those whose own cost could fit) are counted
# one by one to fill the budget exactly; up to BAND_TRIES more when that leaves the output below the
# rate's band.
FILL_TRIES = 8
BAND_TRIES = 64
# A rate is met when the output holds within this fraction of rate x the input's tokens.
TOLERANCE = 0.05


def band(rate: float, n_in: int) -> tuple[int, int]:
    """The whole token counts within TOLERANCE of `rate` x `n_in` (at least 1), as (lowest, highest);
    lowest > highest where no whole count is (the input is too short to reach the rate)."""
    lo = max(1, math.ceil(rate * n_in * (1 - TOLERANCE) - 1e-9))
    return lo, math.floor(rate * n_in * (1 + TOLERANCE) + 1e-9)


def select(text: str, spans: Sequence[tuple[int, int]], scores: Sequence[float], protected: Sequence[bool],
           count: TokenCounter, n_in: int, *, rate: float | None = None, budget: int | None = None) -> Selection:
    """Keep the protected words and then the best-scored ones, as many as fit the token budget
    (`rate` x the input's `n_in` tokens, rounded, at least 1; or `budget`), counted by `count` on the
    output. With a rate, an output that whole words leave short of the rate's 5% band is filled on up
    to the band's top (`limit`). The output exceeds the limit only where the protected words alone do."""
    target = budget if budget is not None else max(1, round(rate * n_in))
    low, limit = (target, target) if rate is None else band(rate, n_in)
    limit = max(limit, target)
    if n_in <= target:
        return Selection(text, n_in, n_in, target, list(range(len(spans))), n_in)
    # Rank: protected first (in text order), then by score, earlier words first among equals.
    order = sorted(range(len(spans)), key=lambda i: (not protected[i], -scores[i] if not protected[i] else 0, i))
    n_protected = sum(protected)
    counted: dict[int, tuple[str, int]] = {}

    def measure(k: int) -> int:
        if k not in counted:
            out = join(text, spans, sorted(order[:k]))
            counted[k] = (out, count(out) if out else 0)
        return counted[k][1]

    # Start where the words' own costs reach the budget, then gallop to a bracket [fits, does not fit]
    # and bisect it: the largest prefix of the ranking that fits (counts grow with k up to BPE merges).
    costs = [count.word(text[s:e]) for s, e in spans]
    total, k = 0.0, n_protected
    for j, i in enumerate(order):
        total += costs[i]
        if j >= n_protected and total > target:
            break
        k = max(k, j + 1)
    if measure(n_protected) > target:
        lo = hi = n_protected
    elif measure(k) <= target:
        lo, step = k, 1
        while lo + step <= len(order) and measure(lo + step) <= target:
            lo, step = lo + step, step * 2
        hi = lo + step - 1 if lo + step <= len(order) else len(order)
    else:
        hi, step, c = k - 1, 1, k - 1
        while c > n_protected and measure(c) > target:
            hi, step = c - 1, step * 2
            c = max(n_protected, hi - step + 1)
        lo = c
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if measure(mid) <= target:
            lo = mid
        else:
            hi = mid - 1
    measure(lo)
    best_text, best_n = counted[lo]
    kept = sorted(order[:lo])
    # Fill what is left of the budget with the next words of the ranking that still fit; then, if that
    # leaves the output below the rate's band, on up to the band's top.
    for second, cap in enumerate((target, limit)):
        if second and best_n >= low:
            break
        tries = 0
        for i in order[lo + 1:]:
            if best_n >= cap or tries >= (BAND_TRIES if second else FILL_TRIES):
                break
            # A word whose own cost is too high can still fit where it merges with a kept neighbour:
            # only the band's pass, which has room to spare, counts those too.
            if i in kept or (not second and costs[i] > cap - best_n + 1):
                continue
            tries += 1
            trial = sorted([*kept, i])
            out = join(text, spans, trial)
            n = count(out)
            if n <= cap:
                kept, best_text, best_n = trial, out, n
    return Selection(best_text, n_in, best_n, target, kept, limit)
