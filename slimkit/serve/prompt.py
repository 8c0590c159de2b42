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

from slimkit.errors import SlimkitError
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
                    raise SlimkitError("this prompt template has no item-first variant")
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
    tokens_saved: int = 0               # item tokens that compression removed (--compress-items)


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False) if text else []


def tokenize(tokenizer, template: PromptTemplate, query: str, items: list[str], *, item_first: bool = False
             ) -> tuple[list[int], list[list[int]]]:
    """(shared ids, each item's ids) of a query and its items, per the contract above."""
    shared_text, _ = template.split(tokenizer, query, items[0], item_first=item_first)
    item_ids = [encode(tokenizer, template.split(tokenizer, query, it, item_first=item_first)[1]) for it in items]
    return encode(tokenizer, shared_text), item_ids
