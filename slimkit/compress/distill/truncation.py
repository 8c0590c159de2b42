"""Sequence truncation: distil on chosen sections of each sequence, and on the first part of each response.

A sequence is prompt + response. The response splits into reasoning (CoT) and answer (A) at a marker:
`cot_end` (the reasoning ends with it, e.g. "</think>") or `answer_start` (the final answer line begins
with it, e.g. arith's "Answer:"). Either way the marker closes the CoT: the token holding its last
character is CoT and A is what follows, because writing the marker is the decision to stop reasoning,
and that decision is part of what reasoning supervision teaches (the paper's CoT section ends with its
"</think>"). A marker is found in the response's text, so it works whatever the tokenizer merged it
with; `cot_end` is looked for from the start, `answer_start` from the end (a final answer line). A
response without the marker, or a setup without markers, is all answer: every response token is A.

Recipe section `truncation:`:
- `supervise`: the sections whose tokens are loss targets, any of P (prompt tokens after the first),
  CoT and A;
- `ratio` r in (0, 1] (each response keeps its first ceil(r * length) tokens) or `tokens` (its first N);
  the sections are found on the whole response first, then the response is cut. `ratio_of: longest`
  makes r a budget instead: each response keeps at most ceil(r * L) tokens, L the longest response of
  the step (on this rank), so responses shorter than that stay whole, ends and all, while a padded
  batch, whose width the longest sequence sets, is as narrow as with per-response r. The cut tail is gone
  from the sequence: neither the teacher nor the student runs on it, which is where time and memory go.

Markers come from the recipe (`markers: {cot_end: ...}` or `{answer_start: ...}`), else from the task
(`Task.answer_start`; arith marks its answer line), else from the chat template ("</think>" when the
template has it), else there are none.

Each step record then reports `fed_tokens` (tokens both models ran on), `supervised` (loss targets),
`reasoning_end_kept` (the share of responses whose kept prefix still holds the marker) and `flops_est`,
the step's estimated FLOPs (see `step_flops`).

What a cut costs besides tokens: the decision to stop reasoning is made at its end, so a prefix that
stops short of the marker never shows it. On arith at r = 0.5 no kept prefix reaches "Answer:"
(`reasoning_end_kept` 0): every verbose prefix shows "Check: ... . Left: ..." (go on) and none shows
"Check: ... . Answer:" (stop), and the student learns to invent one more step after the last one.
Watch `reasoning_end_kept`; where it is near 0, the student's stopping rests on what it already knew.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

from slimkit.compress.distill.config import MarkersConfig, TruncationConfig
from slimkit.compress.distill.rollouts import Rollout


@dataclass(frozen=True)
class Markers:
    cot_end: str | None = None
    answer_start: str | None = None


def resolve_markers(cfg: TruncationConfig, tok, task=None) -> Markers | None:
    """The recipe's markers, else the task's, else the chat template's, else None (all answer)."""
    if isinstance(cfg.markers, MarkersConfig):
        return Markers(cfg.markers.cot_end, cfg.markers.answer_start)
    if cfg.markers == "none":
        return None
    if task is not None and getattr(task, "answer_start", None):
        return Markers(answer_start=task.answer_start)
    template = getattr(tok, "chat_template", None) or ""
    if isinstance(template, dict):  # named templates
        template = " ".join(template.values())
    return Markers(cot_end="</think>") if "</think>" in template else None


class Splitter:
    """Where the answer begins in a response's token ids (0: all answer)."""

    def __init__(self, tok, markers: Markers | None):
        self.tok, self.markers = tok, markers
        self._pieces: dict[int, bytes] = {}

    def _piece(self, i: int) -> bytes:
        if i not in self._pieces:
            self._pieces[i] = self.tok.decode([i], skip_special_tokens=False).encode()
        return self._pieces[i]

    def answer_begin(self, ids: Sequence[int]) -> int:
        m = self.markers
        if m is None or not ids:
            return 0
        pieces = [self._piece(i) for i in ids]
        ends = []  # byte offset after each token
        for p in pieces:
            ends.append((ends[-1] if ends else 0) + len(p))
        text = b"".join(pieces)
        marker = (m.cot_end or m.answer_start).encode()
        pos = text.find(marker) if m.cot_end is not None else text.rfind(marker)
        # the token holding the marker's last byte closes the CoT
        return 0 if pos < 0 else bisect.bisect_right(ends, pos + len(marker) - 1) + 1


def sections(prompt_len: int, answer_begin: int, response_len: int) -> list[str]:
    """The section of every token of prompt + response: P, then CoT up to answer_begin, then A."""
    return ["P"] * prompt_len + ["CoT"] * answer_begin + ["A"] * (response_len - answer_begin)


class Truncation:
    """Cuts rollouts to their kept prefix and marks the supervised tokens (`Rollout.supervise`)."""

    def __init__(self, cfg: TruncationConfig, tok, task=None, *, teacher=None, student=None):
        self.cfg = cfg
        self.keep_sections = set(cfg.supervise)
        self.splitter = Splitter(tok, resolve_markers(cfg, tok, task))
        self.shapes = [model_shape(m) for m in (teacher, student) if m is not None]

    def kept(self, n: int, longest: int = 0) -> int:
        """How many of a response's n tokens are kept (`longest`: the step's longest response)."""
        if self.cfg.tokens is not None:
            return min(n, self.cfg.tokens)
        base = longest if self.cfg.ratio_of == "longest" else n
        return min(n, max(1, math.ceil((self.cfg.ratio or 1.0) * base))) if n else 0

    def apply(self, rollouts: Sequence[Rollout]) -> list[Rollout]:
        """New rollouts: each response cut to its kept prefix, with its supervised tokens marked."""
        longest = max((len(r.completion_ids) for r in rollouts), default=0)
        out = []
        for r in rollouts:
            begin = self.splitter.answer_begin(r.completion_ids)
            labels = sections(len(r.prompt_ids), begin, len(r.completion_ids))
            k = self.kept(len(r.completion_ids), longest)
            # token 0 is never predicted; the others are targets when their section is chosen
            supervise = [j > 0 and s in self.keep_sections for j, s in enumerate(labels[: len(r.prompt_ids) + k])]
            out.append(Rollout(r.prompt_ids, r.completion_ids[:k], r.example, r.key, supervise=supervise))
        return out

    def step_sums(self, rollouts: Sequence[Rollout]) -> dict[str, float]:
        """Per-step sums (added over micro-batches and ranks) of the cut rollouts: tokens fed, sum of
        squared lengths, responses, and those whose kept prefix still holds the end of the reasoning."""
        lens = [len(r.prompt_ids) + len(r.completion_ids) for r in rollouts]
        closed = sum(self.splitter.answer_begin(r.completion_ids) > 0 for r in rollouts)
        return {"fed_tokens": float(sum(lens)), "fed_sq": float(sum(n * n for n in lens)),
                "responses": float(len(rollouts)), "closed": float(closed)}

    def record(self, totals: dict[str, float]) -> dict[str, float]:
        out = {"fed_tokens": int(totals["fed_tokens"]), "supervised": int(totals["kept"]),
               "reasoning_end_kept": totals["closed"] / max(totals["responses"], 1.0)}
        if len(self.shapes) == 2:
            out["flops_est"] = step_flops(*self.shapes, tokens=totals["fed_tokens"], sq=totals["fed_sq"],
                                          supervised=totals["kept"])
        return out


@dataclass(frozen=True)
class Shape:
    body_params: int  # parameters of the body without the input embedding
    layers: int
    attn_width: int  # heads x head_dim
    hidden: int
    vocab: int


def model_shape(lm) -> Shape:
    c = lm.config
    emb = lm.get_input_embeddings().weight.numel()
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return Shape(sum(p.numel() for p in lm.model.parameters()) - emb, c.num_hidden_layers,
                 c.num_attention_heads * head_dim, c.hidden_size, lm.get_output_embeddings().weight.shape[0])


def step_flops(teacher: Shape, student: Shape, *, tokens: float, sq: float, supervised: float) -> float:
    """Estimated FLOPs of a step (select.method all): the teacher's forward and the student's forward
    and backward (x3) over the fed tokens (2 x body parameters per token, plus causal attention: about
    2 x layers x width x length^2 per sequence), and the lm_head of each over the supervised tokens
    (2 x hidden x vocab per token). Gradient checkpointing would add one more student forward."""
    def forward(s: Shape, rows: float) -> float:
        return 2 * s.body_params * tokens + 2 * s.layers * s.attn_width * sq + 2 * s.hidden * s.vocab * rows

    return forward(teacher, supervised) + 3 * forward(student, supervised)


__all__ = ["Markers", "Splitter", "Truncation", "resolve_markers", "sections", "step_flops"]
