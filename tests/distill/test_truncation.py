"""Sequence truncation: sections found by their markers (or none: all answer), the kept prefix, the
supervised tokens, and that the cut tail reaches neither model."""

from __future__ import annotations

import pytest
import torch
from distill_helpers import overrides

from slimkit.compress.distill import load_recipe
from slimkit.compress.distill.config import TruncationConfig
from slimkit.compress.distill.rollouts import Rollout
from slimkit.compress.distill.trainer import Distiller, step_indices
from slimkit.compress.distill.truncation import Markers, Splitter, Truncation, resolve_markers
from slimkit.recipe import RecipeError
from slimkit.tasks import get_task
from slimkit.toy import toy_tokenizer


@pytest.fixture(scope="module")
def tok():
    return toy_tokenizer()


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_arith_responses_split_at_their_answer_line(tok):
    ex = get_task("arith").split("train", 3)[2]
    ids = _ids(tok, ex.answer + tok.eos_token)
    markers = resolve_markers(TruncationConfig(), tok, get_task("arith"))  # auto: the task marks its answer
    assert markers == Markers(answer_start="Answer:")
    k = Splitter(tok, markers).answer_begin(ids)
    assert 0 < k < len(ids)
    # the marker closes the reasoning, as "</think>" does: the answer section is the number and EOS
    assert tok.decode(ids[:k]).rstrip().endswith("Answer:")
    assert tok.decode(ids[k:]).strip() == ex.answer.split()[-1] + tok.eos_token
    assert tok.decode(ids[:k]).startswith(ex.answer.split(" Answer:")[0][:10])


def test_think_markers_close_the_reasoning_and_come_from_the_chat_template(tok):
    ids = _ids(tok, "<think>7 * 3 = 21. Check: 21</think>The answer is 21" + tok.eos_token)
    k = Splitter(tok, Markers(cot_end="</think>")).answer_begin(ids)
    assert "</think>" in tok.decode(ids[:k]) and "</think>" not in tok.decode(ids[: k - 1])
    assert "The answer is 21" in tok.decode(ids[k:])
    assert resolve_markers(TruncationConfig(), tok) is None  # the toy template has no thinking block
    tok2 = toy_tokenizer()
    tok2.chat_template = tok.chat_template + "{{- '<think>' }}{{- '</think>' }}"
    assert resolve_markers(TruncationConfig(), tok2) == Markers(cot_end="</think>")
    cfg = TruncationConfig(markers={"answer_start": "Result:"})
    assert resolve_markers(cfg, tok2, get_task("arith")) == Markers(answer_start="Result:")  # the recipe wins


def test_a_response_without_markers_is_all_answer(tok):
    """Documented: a response without the reasoning marker (or a setup without markers) is all answer."""
    ids = _ids(tok, "The answer is 21" + tok.eos_token)
    for markers in (Markers(answer_start="Answer:"), Markers(cot_end="</think>"), None):
        assert Splitter(tok, markers).answer_begin(ids) == 0
    r = [Rollout([1, 2, 3], ids, 0)]
    cot = Truncation(TruncationConfig(supervise=["CoT"]), tok, get_task("arith")).apply(r)[0]
    ans = Truncation(TruncationConfig(supervise=["A"]), tok, get_task("arith")).apply(r)[0]
    assert not any(cot.supervise) and ans.supervise == [False] * 3 + [True] * len(ids)


def test_kept_prefix_and_supervised_sections(tok):
    ex = get_task("arith").split("train", 1)[0]
    resp = _ids(tok, ex.answer + tok.eos_token)
    prompt = [5, 6, 7, 8]
    r = [Rollout(prompt, resp, 0, key=3)]
    k = Splitter(tok, Markers(answer_start="Answer:")).answer_begin(resp)
    n = len(resp)

    def cut(**kw):
        return Truncation(TruncationConfig(**kw), tok, get_task("arith")).apply(r)[0]

    half = cut(ratio=0.5, supervise="P+CoT+A")
    assert half.completion_ids == resp[: -(-n // 2)] and half.key == 3 and half.prompt_ids == prompt
    assert half.supervise == [False] + [True] * (len(prompt) - 1 + -(-n // 2))
    assert cut(tokens=3).completion_ids == resp[:3]
    assert cut(tokens=10_000).completion_ids == resp
    full = cut(ratio=1.0, supervise=["CoT"])
    assert full.supervise == [False] * 4 + [True] * k + [False] * (n - k)
    assert cut(ratio=1.0, supervise=["P"]).supervise == [False] + [True] * 3 + [False] * n
    assert cut(ratio=1.0, supervise=["A"]).supervise == [False] * (4 + k) + [True] * (n - k)
    assert cut(ratio=1e-6).completion_ids == resp[:1]  # at least one token of every response


def test_ratio_of_longest_is_a_budget_that_keeps_shorter_responses_whole(tok):
    rs = [Rollout([5], list(range(10, 30)), 0), Rollout([5], list(range(10, 19)), 1), Rollout([5], [7], 2)]
    t = Truncation(TruncationConfig(ratio=0.5, ratio_of="longest", markers="none"), tok)
    assert [len(r.completion_ids) for r in t.apply(rs)] == [10, 9, 1]  # ceil(0.5 x 20) = 10 tokens at most
    per_response = Truncation(TruncationConfig(ratio=0.5, markers="none"), tok)
    assert [len(r.completion_ids) for r in per_response.apply(rs)] == [10, 5, 1]


@pytest.mark.parametrize("extra, message", [
    (("truncation.ratio=0",), r"truncation\.ratio must lie in \(0, 1\], got 0"),
    (("truncation.ratio=1.5",), r"truncation\.ratio must lie in \(0, 1\], got 1.5"),
    (("truncation.supervise=[CoT, Answer]",), "unknown section 'Answer': choose among P, CoT, A"),
    (("truncation.supervise=Cot+A",), "unknown section 'Cot'"),
    (("truncation.ratio=0.5", "truncation.tokens=8"), "set ratio or tokens, not both"),
    (("truncation.tokens=8", "truncation.ratio_of=longest"), "ratio_of=longest scales truncation.ratio"),
    (("truncation.markers={cot_end: '</think>', answer_start: 'A:'}",), "exactly one of cot_end"),
    (("truncation.ratio=0.5", "rollout.source=teacher", "loss.teacher=topk"), "use loss.teacher=live"),
    (("truncation.ratio=0.5", "rollout.source=teacher", "soda.beta=0.1"), "soda and truncation do not combine"),
])
def test_bad_truncation_settings_are_one_clear_error(pair, tmp_path, extra, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(None, overrides(pair, tmp_path / "r", *extra))


def _spy_widths(monkeypatch):
    """The sequence widths each model's body is run on."""
    from slimkit.compress.distill import hidden

    widths = []
    real = hidden.Body.forward

    def forward(self, input_ids, attention_mask):
        widths.append((self.lm, input_ids.shape[1], int(attention_mask.sum())))
        return real(self, input_ids, attention_mask)

    monkeypatch.setattr(hidden.Body, "forward", forward)
    return widths


def test_the_cut_tail_reaches_neither_model(pair, tmp_path, monkeypatch):
    args = overrides(pair, tmp_path / "r", "rollout.source=teacher", "rollout.max_new_tokens=16",
                     "truncation.ratio=0.5", "truncation.supervise=[CoT, A]", "select.log_quadrants=false")
    d = Distiller(load_recipe(None, args))
    widths = _spy_widths(monkeypatch)
    full = d.source.get(step_indices(0, len(d.examples), 4, 0))  # the first step's rollouts
    rec = d.train_step()
    kept = [-(-len(r.completion_ids) // 2) for r in full]
    cut = [len(r.prompt_ids) + k for r, k in zip(full, kept, strict=True)]
    assert {m for m, *_ in widths} == {d.teacher, d.student}  # both models ran, on the cut sequences only
    for model in (d.teacher, d.student):  # in length groups, each as wide as its longest cut sequence
        runs = [(w, n) for m, w, n in widths if m is model]
        assert max(w for w, _ in runs) == max(cut) and sum(n for _, n in runs) == sum(cut)
    assert rec["fed_tokens"] == sum(len(r.prompt_ids) + k for r, k in zip(full, kept, strict=True))
    assert rec["supervised"] == rec["kept"] == sum(kept)  # CoT + A: every kept response token
    assert rec["flops_est"] > 0


def test_ratio_one_on_the_response_is_plain_distillation(pair, tmp_path):
    """r = 1 supervising CoT + A is the untruncated run: the same loss and gradients."""
    runs = []
    for extra in ((), ("truncation.ratio=1.0", "truncation.supervise=CoT+A")):
        d = Distiller(load_recipe(None, overrides(pair, tmp_path / f"r{len(extra)}", "optim.grad_clip=null", *extra)))
        rec = d.train_step()
        runs.append((rec, {n: p.grad.clone() for n, p in d.student.named_parameters()}))
    (a, ga), (b, gb) = runs
    assert a["tokens"] == b["tokens"] and a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    for k in ga:
        torch.testing.assert_close(gb[k], ga[k])
    assert b["supervised"] == b["kept"]


def test_records_the_share_of_prefixes_that_keep_the_end_of_the_reasoning(tok):
    exs = get_task("arith").split("train", 4)
    rs = [Rollout([5, 6], _ids(tok, x.answer + tok.eos_token), i) for i, x in enumerate(exs)]
    for ratio, share in ((1.0, 1.0), (0.5, 0.0)):  # arith's answer line is the last few tokens
        t = Truncation(TruncationConfig(ratio=ratio), tok, get_task("arith"))
        sums = t.step_sums(t.apply(rs))
        assert t.record({**sums, "kept": 1.0})["reasoning_end_kept"] == share
