"""The scheduler between the gRPC handlers and the engine: cross-request batching with deadlines and
a bounded queue.

Handlers `submit` checked jobs and wait for their tickets; one worker thread owns the engine. It
waits for work, then, while other requests are on their way in (handlers checking and tokenizing
them, inside `arriving`), up to `max_queue_delay` for them (unless a batch is already full): a lone
request is not held back. It drops what is cancelled or past its deadline, and packs whole jobs of one kind, earliest deadline first, into
one engine call of at most `max_batch_tokens` tokens and `max_batch_requests` requests (always at
least one job). A request's items stay together in one call, so its shared prefix is prefilled once.
The queue is bounded by requests and by tokens: a job that does not fit is refused at once
(`Overloaded`, with a retry hint from the queued tokens and the measured engine speed). After
`drain` starts, new jobs are refused (`Draining`) and every accepted one is still answered.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from slimkit.serve.engine import Engine
from slimkit.serve.options import SchedulerConfig

log = logging.getLogger("slimkit.serve")


class Overloaded(Exception):
    """The queue is full; `retry_after` is the suggested wait in seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Draining(Exception):
    """The server is shutting down and takes no new work."""


class DeadlineExceeded(Exception):
    """The job's deadline passed before it was computed."""


class Cancelled(Exception):
    """The caller went away."""


@dataclass(eq=False)
class Ticket:
    """One submitted job and, once done, its result or error and its timing."""
    kind: str                           # "score" | "logprobs": the engine method
    job: Any
    tokens: int
    deadline: float                     # time.monotonic() seconds; inf: none
    arrival: float
    seq: int
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    cancelled: bool = False
    timing: dict[str, float] = field(default_factory=dict)

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


class Scheduler:
    def __init__(self, engine: Engine, config: SchedulerConfig | None = None, metrics=None) -> None:
        self.engine, self.config, self.metrics = engine, config or SchedulerConfig(), metrics
        self._queue: list[Ticket] = []
        self._queued_tokens = 0
        self._busy = False
        self._arriving = 0                              # handlers between receiving a request and submitting it
        self._accepting, self._stop = True, False
        self._seq = itertools.count()
        self._tokens_per_s = 0.0                        # measured engine speed (moving average)
        self._cond = threading.Condition()
        self._worker = threading.Thread(target=self._run, name="scorer-engine", daemon=True)
        self._worker.start()

    # -- handler side --------------------------------------------------------------------------
    def submit(self, kind: str, job: Any, tokens: int, timeout: float | None = None) -> Ticket:
        """Queue a job; refuse it at once when draining or when the queue is full."""
        now = time.monotonic()
        cfg = self.config
        with self._cond:
            if not self._accepting:
                raise Draining("the server is shutting down: send the request to another server")
            if (len(self._queue) + 1 > cfg.max_queue_requests
                    or (self._queue and self._queued_tokens + tokens > cfg.max_queue_tokens)):
                raise Overloaded(f"the queue is full ({len(self._queue)} requests, {self._queued_tokens} tokens "
                                 "waiting): retry later", self._retry_after())
            ticket = Ticket(kind, job, tokens, now + timeout if timeout is not None else math.inf, now,
                            next(self._seq))
            self._queue.append(ticket)
            self._queued_tokens += tokens
            self._gauges()
            self._cond.notify_all()
        return ticket

    @contextmanager
    def arriving(self):
        """A handler is preparing a job (checking, tokenizing): a batch forming now may wait for it."""
        with self._cond:
            self._arriving += 1
        try:
            yield
        finally:
            with self._cond:
                self._arriving -= 1
                self._cond.notify_all()

    def wait(self, ticket: Ticket) -> Any:
        """The ticket's result; raises its error, or DeadlineExceeded when its deadline passes first."""
        left = ticket.deadline - time.monotonic()
        if not ticket.done.wait(None if left >= threading.TIMEOUT_MAX else max(left, 0.0)):
            self.cancel(ticket)
            raise DeadlineExceeded("the deadline passed while the request was queued or computed")
        if ticket.error is not None:
            raise ticket.error
        return ticket.result

    def cancel(self, ticket: Ticket) -> None:
        """The caller is gone: free its queue slot (a job already computing finishes unread). A call
        that gRPC ends at its deadline counts as past its deadline, not as cancelled."""
        with self._cond:
            ticket.cancelled = True
            if ticket in self._queue:
                self._remove([ticket])
                late = time.monotonic() >= ticket.deadline - 0.05
                ticket.finish(error=DeadlineExceeded("the deadline passed while the request was queued") if late
                              else Cancelled("the call was cancelled"))
                self._cond.notify_all()

    def drain(self, timeout: float | None = None) -> bool:
        """Take no new jobs; wait until every accepted one is answered. False if `timeout` ran out."""
        with self._cond:
            self._accepting = False
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def close(self) -> None:
        with self._cond:
            self._accepting, self._stop = False, True
            for t in self._queue:
                t.finish(error=Draining("the server stopped"))
            self._remove(list(self._queue))
            self._cond.notify_all()
        self._worker.join()

    def queued(self) -> tuple[int, int]:
        with self._cond:
            return len(self._queue), self._queued_tokens

    # -- worker side ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._compute(batch)
            except Exception as e:                      # a bug outside the engine: fail the batch, keep serving
                log.exception("scheduler error")
                for t in batch:
                    if not t.done.is_set():
                        t.finish(error=e)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _next_batch(self) -> list[Ticket] | None:
        """Wait for work and for the queue delay; take the next batch off the queue (busy from here)."""
        cfg = self.config
        with self._cond:
            while True:
                self._cond.wait_for(lambda: self._queue or self._stop)
                if self._stop:
                    return None
                # The oldest job waits up to max_queue_delay for company on its way in, unless a batch is
                # full already.
                full = lambda: (self._stop or len(self._queue) >= cfg.max_batch_requests  # noqa: E731
                                or self._queued_tokens >= cfg.max_batch_tokens or not self._queue
                                or not self._arriving)
                oldest = min(t.arrival for t in self._queue)
                self._cond.wait_for(full, max(0.0, oldest + cfg.max_queue_delay - time.monotonic()))
                self._drop_expired()
                batch = self._pack()
                if batch:
                    self._remove(batch)
                    self._busy = True
                    return batch

    def _drop_expired(self) -> None:
        now = time.monotonic()
        late = [t for t in self._queue if t.deadline <= now]
        self._remove(late)
        for t in late:
            t.finish(error=DeadlineExceeded("the deadline passed while the request was queued"))
            if self.metrics:
                self.metrics.deadline_dropped.inc()

    def _pack(self) -> list[Ticket]:
        """Earliest deadline first (then arrival); whole jobs of the first one's kind within the budget."""
        cfg = self.config
        ready = sorted(self._queue, key=lambda t: (t.deadline, t.seq))
        if not ready:
            return []
        batch, tokens = [ready[0]], ready[0].tokens
        for t in ready[1:]:
            if len(batch) >= cfg.max_batch_requests:
                break
            if t.kind == batch[0].kind and tokens + t.tokens <= cfg.max_batch_tokens:
                batch.append(t)
                tokens += t.tokens
        return batch

    def _remove(self, tickets: list[Ticket]) -> None:
        gone = set(tickets)
        self._queue = [t for t in self._queue if t not in gone]
        self._queued_tokens -= sum(t.tokens for t in tickets)
        self._gauges()

    def _compute(self, batch: list[Ticket]) -> None:
        """One engine call for the batch; if it fails, each job alone, so one bad job fails alone."""
        start = time.monotonic()
        for t in batch:
            t.timing["queue"] = start - t.arrival
        try:
            results = self._call(batch)
        except Exception as e:
            if len(batch) == 1:
                log.exception("engine error")
                batch[0].finish(error=e)
                return
            for t in batch:
                self._compute([t])
            return
        seconds = time.monotonic() - start
        tokens = sum(t.tokens for t in batch)
        self._tokens_per_s = 0.8 * self._tokens_per_s + 0.2 * tokens / max(seconds, 1e-6) if self._tokens_per_s \
            else tokens / max(seconds, 1e-6)
        phases = dict(getattr(self.engine, "timing", None) or {}) if batch[0].kind == "score" else {}
        for t, r in zip(batch, results, strict=True):
            t.timing |= {"engine": seconds, "batch_requests": len(batch), **phases}
            t.finish(result=r)
        if self.metrics:
            self.metrics.batch(batch, tokens)

    def _call(self, batch: list[Ticket]) -> list[Any]:
        jobs = [t.job for t in batch]
        return self.engine.score(jobs) if batch[0].kind == "score" else self.engine.logprobs(jobs)

    def _retry_after(self) -> float:
        """Seconds until the queue has likely room: its tokens at the measured speed (at least the delay)."""
        if self._tokens_per_s <= 0:
            return max(self.config.max_queue_delay, 0.1)
        return max(self.config.max_queue_delay, self._queued_tokens / self._tokens_per_s)

    def _gauges(self) -> None:
        if self.metrics:
            self.metrics.queue_requests.set(len(self._queue))
            self.metrics.queue_tokens.set(self._queued_tokens)
