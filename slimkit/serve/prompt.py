"""How a query and an item become token ids: the server's prompt template and the tokenization contract.

The template is server configuration: a user-prompt string with `{query}` and `{item}` placeholders
(default: the toy `jobs` task's, the format the models were trained on), wrapped by the tokenizer's
chat template with the generation prompt (`slimkit.tasks.format_prompt`). The label is the next token.

Tokenization contract, the same for every engine: the rendered prompt is cut just before the item
into a *shared* part (chat prefix + template text + query, or only the chat prefix + template text
when the item comes first) and an *item* part (the item and everything after it). Each part is
tokenized on its own (`add_special_tokens=False`) and the scored sequence is
`shared_ids + item_ids`. This makes the shared prefix's ids, hence its KV cache, identical for
every item; a BPE merge across the cut is never made.
"""

from __future__ import annotations

from dataclasses import dataclass

from slimkit.errors import RequestError, SlimkitError
from slimkit.tasks import format_prompt
from slimkit.tasks.jobs import TEMPLATE as JOBS_TEMPLATE

# The jobs template with the posting first (used for `item_first` requests).
JOBS_TEMPLATE_ITEM_FIRST = "Posting:\n{item}\nQuery:\n{query}\nIs the posting relevant to the query? Answer yes or no."
DEFAULT_LABELS = ("yes", "no")

_Q, _I = "\x00slimkit-query\x00", "\x00slimkit-item\x00"


@dataclass(frozen=True)
class Rendered:
    """The template cut into literal pieces around the two placeholders, in prompt order."""
    pieces: tuple[str, str, str]        # text before the first placeholder, between them, after the second
    query_first: bool


def _render(tokenizer, text: str, *, chat: bool) -> Rendered:
    for name in ("{query}", "{item}"):
        if text.count(name) != 1:
            raise SlimkitError(f"prompt template must contain {name} exactly once: {text!r}")
    filled = text.replace("{query}", _Q).replace("{item}", _I)
    full = format_prompt(tokenizer, filled) if chat else filled
    query_first = full.index(_Q) < full.index(_I)
    first, second = (_Q, _I) if query_first else (_I, _Q)
    head, rest = full.split(first)
    mid, tail = rest.split(second)
    return Rendered((head, mid, tail), query_first)


@dataclass
class PromptTemplate:
    """The server's prompt format. `chat`: wrap the user prompt in the tokenizer's chat template."""
    text: str = JOBS_TEMPLATE
    item_first_text: str | None = JOBS_TEMPLATE_ITEM_FIRST
    chat: bool = True

    @classmethod
    def from_options(cls, template: str | None, item_first: str | None, *, chat: bool = True) -> PromptTemplate:
        """The template of the serve options: the jobs default, or `template` with its optional
        item-first variant (a custom template has none unless given; one without `template` is an error)."""
        if template is None:
            if item_first is not None:
                raise SlimkitError("--template-item-first needs --template (the default jobs template has its "
                                   "own item-first variant)")
            return cls(chat=chat)
        return cls(template, item_first, chat=chat)

    def split(self, tokenizer, query: str, item: str, *, item_first: bool = False) -> tuple[str, str]:
        """(shared text, item text) for one query/item pair; their concatenation is the full prompt."""
        r = self._rendered(tokenizer, item_first)
        head, mid, tail = r.pieces
        if r.query_first:
            return head + query + mid, item + tail
        return head, item + mid + query + tail

    def _rendered(self, tokenizer, item_first: bool) -> Rendered:
        key = (id(tokenizer), item_first)
        cache = self.__dict__.setdefault("_cache", {})
        if key not in cache:
            text = self.text
            if item_first:
                if self.item_first_text is None:
                    raise RequestError("item_first is not available: this server has no item-first template")
                text = self.item_first_text
            r = _render(tokenizer, text, chat=self.chat and bool(getattr(tokenizer, "chat_template", None)))
            if r.query_first == item_first:
                which = "item-first template puts the query" if item_first else "template puts the item"
                raise SlimkitError(f"the {which} first: {text!r}")
            cache[key] = r
        return cache[key]


@dataclass
class ScoreJob:
    """One Score request, tokenized: the unit every engine works on."""
    shared_ids: list[int]
    item_ids: list[list[int]]
    label_ids: list[int]
    normalization: str                  # "labels" | "vocab" | "logit_diff"


NORMALIZATIONS = ("labels", "vocab", "logit_diff")


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False) if text else []


def label_token_ids(tokenizer, labels: list[str] | None, token_ids: list[int] | None, vocab_size: int
                    ) -> list[int]:
    """Resolve labels (strings that must each be one token, or token ids) to token ids."""
    if labels and token_ids:
        raise RequestError("give labels either as strings or as token ids, not both")
    if token_ids:
        for t in token_ids:
            if not 0 <= t < vocab_size:
                raise RequestError(f"label token id {t} is outside the vocabulary [0, {vocab_size})")
        ids = list(token_ids)
    else:
        ids = []
        for label in labels or DEFAULT_LABELS:
            if not label:
                raise RequestError("empty label")
            toks = encode(tokenizer, label)
            if len(toks) != 1:
                pieces = [tokenizer.decode([t]) for t in toks]
                raise RequestError(f"label {label!r} is not a single token: it encodes to {len(toks)} tokens "
                                   f"{pieces}; pick a single-token label or pass label_token_ids")
            if toks[0] == tokenizer.unk_token_id and tokenizer.unk_token_id is not None:
                raise RequestError(f"label {label!r} is not in the vocabulary (encodes to the unknown token)")
            ids.append(toks[0])
    if len(set(ids)) != len(ids):
        raise RequestError(f"labels must be distinct tokens, got ids {ids}")
    return ids


def make_job(tokenizer, template: PromptTemplate, query: str, items: list[str], *,
             labels: list[str] | None = None, label_ids: list[int] | None = None,
             normalization: str = "labels", item_first: bool = False, vocab_size: int) -> ScoreJob:
    """Validate a Score request and tokenize it per the contract above."""
    if not items:
        raise RequestError("items is empty: send at least one item to score")
    for i, item in enumerate(items):
        if not item:
            raise RequestError(f"item {i} is empty")
    if normalization not in NORMALIZATIONS:
        raise RequestError(f"unknown normalization {normalization!r}; choose one of {', '.join(NORMALIZATIONS)}")
    ids = label_token_ids(tokenizer, labels, label_ids, vocab_size)
    if normalization == "logit_diff" and len(ids) != 2:
        raise RequestError(f"logit_diff needs exactly two labels, got {len(ids)}")
    if normalization == "labels" and len(ids) < 2:
        raise RequestError("labels normalization needs at least two labels (one label always has probability 1)")
    shared_text, _ = template.split(tokenizer, query, items[0], item_first=item_first)
    shared = encode(tokenizer, shared_text)
    item_ids = [encode(tokenizer, template.split(tokenizer, query, it, item_first=item_first)[1]) for it in items]
    return ScoreJob(shared, item_ids, ids, normalization)
