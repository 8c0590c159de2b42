"""Compression of a Score request's items before they are scored (`slimkit serve --compress-items RATE
[--compressor DIR]`).

This module is the one place where `serve` imports from `compress`: it loads a compressor through the
small `slimkit.compress.context` API (`load`, `compress`), as DESIGN.md allows. Items are compressed
on their own by default; `with_query` makes the compression question-aware (the query's terms are never
dropped), which on the toy jobs task lowers AUC at 4x and beyond: it keeps exactly the words that
match the query and drops those that contradict it (benchmarks/results/context.md). Tokens saved are
counted with the engine's tokenizer, on the items as sent and as scored. A scorer trained on full items
reads compressed ones poorly; serve one adapted to this compressor (`slimkit compress-context adapt`).
"""

from __future__ import annotations

from slimkit.compress import context  # the one allowed crossing from serve into compress (see above)
from slimkit.errors import RequestError


class ItemCompression:
    def __init__(self, compressor: context.ContextCompressor, rate: float, *, with_query: bool = False) -> None:
        context.check_rate(rate, None)
        self.compressor, self.rate, self.with_query = compressor, rate, with_query
        self._same: tuple[object, bool] | None = None     # (engine tokenizer, same as the compressor's?)

    @classmethod
    def load(cls, path: str, rate: float, *, with_query: bool = False) -> ItemCompression:
        """A compressor from a model dir (a causal LM: surprisal; a trained classifier)."""
        context.check_rate(rate, None)
        return cls(context.load(path), rate, with_query=with_query)

    def __call__(self, tokenizer, query: str, items: list[str]) -> tuple[list[str], int]:
        """(the items to score, tokens saved); items without any text are left as they are (the
        request checks report them)."""
        todo = [i for i, item in enumerate(items) if item.strip()]
        try:
            out = self.compressor.compress([items[i] for i in todo], rate=self.rate,
                                           query=(query or None) if self.with_query else None)
        except context.ContextError as e:
            raise RequestError(f"cannot compress the items: {e}") from None
        short = list(items)
        for i, c in zip(todo, out, strict=True):
            short[i] = c.text
        if self._same_tokenizer(tokenizer):           # the compressor's counts are the engine's
            return short, sum(c.tokens_in - c.tokens_out for c in out)
        saved = sum(len(tokenizer.encode(items[i], add_special_tokens=False)) -
                    len(tokenizer.encode(short[i], add_special_tokens=False)) for i in todo)
        return short, saved

    def _same_tokenizer(self, tokenizer) -> bool:
        if self._same is None or self._same[0] is not tokenizer:
            def spec(tok):
                backend = getattr(tok, "backend_tokenizer", None)
                return backend.to_str() if backend is not None else None
            mine = spec(self.compressor.tokenizer)
            self._same = (tokenizer, mine is not None and mine == spec(tokenizer))
        return self._same[1]
