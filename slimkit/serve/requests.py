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
from slimkit.serve.engine import Engine, LogProbsJob
from slimkit.serve.prompt import DEFAULT_LABELS, PromptTemplate, ScoreJob, encode, label_token_ids, make_job

log = logging.getLogger("slimkit.serve")


class Requests:
    """Builds checked jobs for one engine and prompt template."""

    def __init__(self, engine: Engine, template: PromptTemplate | None = None) -> None:
        self.engine = engine
        self.template = template or PromptTemplate()
        self.tok = engine.tokenizer
        self.template.split(self.tok, "q", "i")            # a bad template fails here, not per request
        if self.template.item_first_text is not None:
            self.template.split(self.tok, "q", "i", item_first=True)
        self.default_label_ids: list[int] = []
        self.default_labels_problem: str | None = None
        try:
            self.default_label_ids = label_token_ids(self.tok, None, None, engine.vocab_size)
        except RequestError as e:
            self.default_labels_problem = str(e)
            log.warning("the default labels %s cannot be scored with this tokenizer (%s): Score requests must "
                        "name their labels", list(DEFAULT_LABELS), e)

    def score(self, query: str, items: list[str], *, labels: list[str], label_ids: list[int],
              normalization: str, item_first: bool) -> ScoreJob:
        if not labels and not label_ids and self.default_labels_problem is not None:
            raise PreconditionError(f"this server cannot score the default labels: {self.default_labels_problem}; "
                                    "send labels or label_token_ids")
        job = make_job(self.tok, self.template, query, items, labels=labels, label_ids=label_ids,
                       normalization=normalization, item_first=item_first, vocab_size=self.engine.vocab_size)
        limit = self.engine.max_len
        if limit is not None:
            for i, item in enumerate(job.item_ids):
                if len(job.shared_ids) + len(item) > limit:
                    raise RequestError(f"item {i} is too long: {len(job.shared_ids)} shared + {len(item)} item "
                                       f"tokens > the model's {limit}")
        return job

    def logprobs(self, prompt: str, continuation: str, top_k: int) -> LogProbsJob:
        if top_k < 0:
            raise RequestError(f"top_k must be >= 0, got {top_k}")
        if self.engine.max_top_k is not None and top_k > self.engine.max_top_k:
            raise RequestError(f"top_k {top_k} is above this engine's limit of {self.engine.max_top_k}")
        job = LogProbsJob(encode(self.tok, prompt), encode(self.tok, continuation), top_k)
        if not job.continuation_ids:
            raise RequestError("continuation is empty: nothing to score")
        if not job.prompt_ids:
            raise RequestError("prompt is empty: the first continuation token needs a context")
        n = len(job.prompt_ids) + len(job.continuation_ids)
        if self.engine.max_len is not None and n > self.engine.max_len:
            raise RequestError(f"prompt + continuation is {n} tokens > the model's {self.engine.max_len}")
        return job
