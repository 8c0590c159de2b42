"""Request validation, in one place: every request becomes a checked job here before an engine sees it.

Engines take the jobs as valid (they do not check them again). What a request can get wrong raises
`RequestError` (INVALID_ARGUMENT); what this server's own configuration cannot serve raises
`PreconditionError` (FAILED_PRECONDITION). The configuration itself is checked once, when the
server starts: a bad template is an error then; a tokenizer that does not encode the default labels
("yes", "no") as single tokens is found then and only refuses requests that rely on those labels.
"""

from __future__ import annotations

import logging

from slimkit.errors import PreconditionError, RequestError
from slimkit.serve._proto import scorer_pb2 as pb
from slimkit.serve.engine import Engine, LogProbsJob
from slimkit.serve.options import Limits
from slimkit.serve.prompt import DEFAULT_LABELS, PromptTemplate, ScoreJob, encode, tokenize
from slimkit.tasks import TaskError
from slimkit.tasks.eval import label_token_ids

log = logging.getLogger("slimkit.serve")
NORMALIZATIONS = ("labels", "vocab", "logit_diff")
_WIRE_NORMALIZATIONS = {pb.NORMALIZATION_UNSPECIFIED: "labels", pb.LABELS: "labels", pb.VOCAB: "vocab",
                        pb.LOGIT_DIFF: "logit_diff"}


def resolve_labels(tokenizer, labels: list[str] | None, token_ids: list[int] | None, vocab_size: int
                   ) -> list[int]:
    """The label token ids of a request: its labels (strings that must each be one token), its token
    ids, or the default labels."""
    if labels and token_ids:
        raise RequestError("give labels either as strings or as token ids, not both")
    if token_ids:
        for t in token_ids:
            if not 0 <= t < vocab_size:
                raise RequestError(f"label token id {t} is outside the vocabulary [0, {vocab_size})")
        ids = list(token_ids)
    else:
        try:
            ids = label_token_ids(tokenizer, labels or DEFAULT_LABELS)
        except TaskError as e:
            raise RequestError(f"{e}; pick a single-token label or pass label_token_ids") from None
    if len(set(ids)) != len(ids):
        raise RequestError(f"labels must be distinct tokens, got ids {ids}")
    return ids


def make_job(tokenizer, template: PromptTemplate, query: str, items: list[str], *,
             labels: list[str] | None = None, label_ids: list[int] | None = None,
             normalization: str = "labels", item_first: bool = False, vocab_size: int) -> ScoreJob:
    """Check a Score request and tokenize it (`slimkit.serve.prompt`)."""
    if not items:
        raise RequestError("items is empty: send at least one item to score")
    for i, item in enumerate(items):
        if not item:
            raise RequestError(f"item {i} is empty")
    if normalization not in NORMALIZATIONS:
        raise RequestError(f"unknown normalization {normalization!r}; choose one of {', '.join(NORMALIZATIONS)}")
    if item_first and template.item_first_text is None:
        raise RequestError("item_first is not available: this server has no item-first template")
    ids = resolve_labels(tokenizer, labels, label_ids, vocab_size)
    if normalization == "logit_diff" and len(ids) != 2:
        raise RequestError(f"logit_diff needs exactly two labels, got {len(ids)}")
    if normalization == "labels" and len(ids) < 2:
        raise RequestError("labels normalization needs at least two labels (one label always has probability 1)")
    shared, item_ids = tokenize(tokenizer, template, query, items, item_first=item_first)
    return ScoreJob(shared, item_ids, ids, normalization)


def check_size(limits: Limits, request) -> None:
    n = request.ByteSize()
    if n > limits.max_message_bytes:
        raise RequestError(f"the request is {n} bytes > this server's limit of {limits.max_message_bytes}")


def check_tokens(what: str, n: int, limit: int) -> None:
    if n > limit:
        raise RequestError(f"{what} is {n} tokens > this server's limit of {limit}")


class Requests:
    """Turns the requests of one engine and prompt template into checked jobs, within `limits`."""

    def __init__(self, engine: Engine, template: PromptTemplate | None = None, limits: Limits | None = None,
                 compression=None) -> None:
        self.engine = engine
        self.compression = compression                  # slimkit.serve.compression.ItemCompression or None
        self.template = template or PromptTemplate()
        self.limits = limits or Limits()
        self.tok = engine.tokenizer
        self.template.split(self.tok, "q", "i")            # a bad template fails here, not per request
        if self.template.item_first_text is not None:
            self.template.split(self.tok, "q", "i", item_first=True)
        self.default_label_ids: list[int] = []
        self.default_labels_problem: str | None = None
        try:
            self.default_label_ids = resolve_labels(self.tok, None, None, engine.vocab_size)
        except RequestError as e:
            self.default_labels_problem = str(e)
            log.warning("the default labels %s cannot be scored with this tokenizer (%s): Score requests must "
                        "name their labels", list(DEFAULT_LABELS), e)

    def score(self, request: pb.ScoreRequest) -> ScoreJob:
        lim = self.limits
        check_size(lim, request)
        if not request.query.strip():
            raise RequestError("query is empty: send the text the items are scored against")
        if len(request.items) > lim.max_items:
            raise RequestError(f"{len(request.items)} items > this server's limit of {lim.max_items} per request")
        check_tokens("the query", len(encode(self.tok, request.query)), lim.max_query_tokens)
        if request.normalization not in _WIRE_NORMALIZATIONS:
            raise RequestError(f"unknown normalization value {request.normalization}")
        labels, label_ids = list(request.labels), list(request.label_token_ids)
        if not labels and not label_ids and self.default_labels_problem is not None:
            raise PreconditionError(f"this server cannot score the default labels: {self.default_labels_problem}; "
                                    "send labels or label_token_ids")
        items, saved = list(request.items), 0
        if self.compression is not None:                # --compress-items: the items are scored compressed
            items, saved = self.compression(self.tok, request.query, items)
        job = make_job(self.tok, self.template, request.query, items, labels=labels,
                       label_ids=label_ids, normalization=_WIRE_NORMALIZATIONS[request.normalization],
                       item_first=request.item_first, vocab_size=self.engine.vocab_size)
        job.tokens_saved = saved
        limit = self.engine.max_len
        for i, item in enumerate(job.item_ids):
            check_tokens(f"item {i}", len(item), lim.max_item_tokens)
            if limit is not None and len(job.shared_ids) + len(item) > limit:
                raise RequestError(f"item {i} is too long: {len(job.shared_ids)} shared + {len(item)} item "
                                   f"tokens > the model's {limit}")
        return job

    def logprobs(self, request: pb.LogProbsRequest) -> LogProbsJob:
        lim = self.limits
        check_size(lim, request)
        top_k = request.top_k
        if top_k < 0:
            raise RequestError(f"top_k must be >= 0, got {top_k}")
        if self.engine.max_top_k is not None and top_k > self.engine.max_top_k:
            raise RequestError(f"top_k {top_k} is above this engine's limit of {self.engine.max_top_k}")
        if top_k > lim.max_top_k:
            raise RequestError(f"top_k {top_k} is above this server's limit of {lim.max_top_k}")
        job = LogProbsJob(encode(self.tok, request.prompt), encode(self.tok, request.continuation), top_k)
        check_tokens("the prompt", len(job.prompt_ids), lim.max_query_tokens)
        check_tokens("the continuation", len(job.continuation_ids), lim.max_query_tokens)
        if not job.continuation_ids:
            raise RequestError("continuation is empty: nothing to score")
        if not job.prompt_ids:
            raise RequestError("prompt is empty: the first continuation token needs a context")
        n = len(job.prompt_ids) + len(job.continuation_ids)
        if self.engine.max_len is not None and n > self.engine.max_len:
            raise RequestError(f"prompt + continuation is {n} tokens > the model's {self.engine.max_len}")
        return job
