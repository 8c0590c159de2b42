import math
from types import SimpleNamespace

import pytest
import torch

from slimkit.errors import SlimkitError
from slimkit.tasks import Example, format_prompt, get_task
from slimkit.tasks.eval import auc, binary_label, evaluate, label_token_ids, results_table


class ScriptedLM(torch.nn.Module):
    """A causal LM whose answers are known, run through the real generation and scoring code.

    arith: `completions[prompt]` is one answer per sample: the i-th row of a prompt in a batch emits
    answer i (greedy decoding has one row: answer 0), token by token with a 50-logit margin, so that
    sampling at temperature 1 emits it too. jobs: `label_logits[prompt]` = (logit of "yes", of "no"),
    every other token at logit 0.
    """

    def __init__(self, tok, completions=None, label_logits=None):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # generate() reads the device of a parameter
        self.vocab, self.eos = len(tok), tok.eos_token_id
        self.generation_config = SimpleNamespace(eos_token_id=tok.eos_token_id)

        def key(prompt):
            return tuple(tok(format_prompt(tok, prompt), add_special_tokens=False).input_ids)

        self.answers = {key(p): [tok(a, add_special_tokens=False).input_ids + [self.eos] for a in answers]
                        for p, answers in (completions or {}).items()}
        self.labels = {key(p): v for p, v in (label_logits or {}).items()}
        self.yes, self.no = label_token_ids(tok)

    def forward(self, input_ids, attention_mask, past_key_values=None, **_):
        b = input_ids.shape[0]
        logits = torch.zeros(b, 1, self.vocab)
        rows = getattr(past_key_values, "scripted_rows", None)
        if rows is None:  # a prompt (prefill): which prompt, and which of its samples each row is
            rows, seen = [], {}
            for i in range(b):
                k = tuple(input_ids[i][attention_mask[i].bool()].tolist())
                occurrence = seen[k] = seen.get(k, -1) + 1
                rows.append({"key": k, "sample": occurrence, "out": []})
            if past_key_values is not None:
                past_key_values.scripted_rows = rows
        else:
            for r, t in zip(rows, input_ids[:, -1].tolist(), strict=True):
                r["out"].append(t)
        for i, r in enumerate(rows):
            if r["key"] in self.labels:
                logits[i, 0, self.yes], logits[i, 0, self.no] = self.labels[r["key"]]
            else:
                target = self.answers[r["key"]][r["sample"]]
                logits[i, 0, target[len(r["out"])] if len(r["out"]) < len(target) else self.eos] = 50.0
        return SimpleNamespace(logits=logits)


def test_auc():
    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert auc([0.2, 0.9], [0, 1]) == 1.0
    assert auc([0.5, 0.5], [0, 1]) == 0.5
    assert math.isnan(auc([0.5, 0.6], [1, 1]))


def test_binary_label():
    assert binary_label(Example("p", "yes")) == 1
    assert binary_label(Example("p", "no", {"label": 1})) == 1
    assert binary_label(Example("p", "yes", {"label": "no"})) == 0


def test_eval_arith_counts_answers_per_level_style_and_pass_at_k(tok):
    """Level 1: greedy right, samples 2-3 wrong; level 2: the first ones right in every sample, the others
    right only in sample 3; level 3: always wrong. Every count the eval reports follows."""
    exs = get_task("arith").split("test", 12)
    by_level = {lv: [e for e in exs if e.meta["level"] == lv] for lv in (1, 2, 3)}
    assert all(len(v) >= 2 for v in by_level.values())

    def right(e):
        return e.answer

    def wrong(e):
        return f"I think so. Answer: {e.meta['result'] + 1}"

    plan = {}
    for e in by_level[1]:
        plan[e.prompt] = [right(e), wrong(e), wrong(e)]
    half = len(by_level[2]) // 2
    for j, e in enumerate(by_level[2]):
        plan[e.prompt] = [right(e)] * 3 if j < half else [wrong(e), wrong(e), right(e)]
    for e in by_level[3]:
        plan[e.prompt] = [wrong(e)] * 3
    model = ScriptedLM(tok, completions=plan)
    res = evaluate(model, tok, "arith", examples=exs, k=3, max_new_tokens=400, batch_size=64)
    greedy_ok = {e.prompt: get_task("arith").verify(e, plan[e.prompt][0]) for e in exs}
    n1, n2, n3 = (len(by_level[lv]) for lv in (1, 2, 3))
    assert res["n"] == 12 and res["split"] == "custom"
    assert res["by_level"] == {"1": 1.0, "2": half / n2, "3": 0.0}
    assert res["accuracy"] == pytest.approx((n1 + half) / 12)
    for style, acc in res["by_style"].items():
        group = [e for e in exs if e.meta["style"] == style]
        assert acc == pytest.approx(sum(greedy_ok[e.prompt] for e in group) / len(group))
    assert res["pass@3"] == pytest.approx((n1 + n2) / 12)
    assert res["sample_accuracy"] == pytest.approx((n1 + 3 * half + (n2 - half)) / 36)
    lengths = [len(tok(plan[e.prompt][0], add_special_tokens=False).input_ids) + 1 for e in exs]  # + EOS
    assert res["mean_tokens"] == pytest.approx(sum(lengths) / 12) and res["finished"] == 1.0
    # in batches of 5 rows the samples of a prompt are split across batches: greedy results stay the same
    res5 = evaluate(model, tok, "arith", examples=exs, max_new_tokens=400, batch_size=5)
    assert res5["by_level"] == res["by_level"]


def test_eval_jobs_auc_accuracy_and_label_mass(tok):
    exs = get_task("jobs").split("test", 8)
    labels = [binary_label(e) for e in exs]
    assert 0 < sum(labels) < 8
    # P(yes) = sigmoid(yes - no): positives get 0.73 except the first (0.27); negatives 0.27 except the first (0.88)
    logits, first_pos, first_neg = {}, labels.index(1), labels.index(0)
    for i, (e, y) in enumerate(zip(exs, labels, strict=True)):
        logits[e.prompt] = (1.0, 0.0) if y else (0.0, 1.0)
        if i == first_pos:
            logits[e.prompt] = (0.0, 1.0)
        if i == first_neg:
            logits[e.prompt] = (2.0, 0.0)
    res = evaluate(ScriptedLM(tok, label_logits=logits), tok, "jobs", examples=exs)
    p = [1 / (1 + math.exp(-(a - b))) for a, b in (logits[e.prompt] for e in exs)]
    assert res["auc"] == pytest.approx(auc(p, labels)) and res["auc"] < 1.0
    assert res["accuracy"] == pytest.approx(6 / 8)
    v = len(tok)
    mass = sum((math.exp(a) + math.exp(b)) / (math.exp(a) + math.exp(b) + v - 2) for a, b in logits.values()) / 8
    assert res["label_mass"] == pytest.approx(mass, rel=1e-5)
    layouts = sorted({e.meta["layout"] for e in exs})
    assert sorted(res["auc_by_layout"]) == layouts
    for layout in layouts:  # each layout's AUC over its own examples only
        idx = [i for i, e in enumerate(exs) if e.meta["layout"] == layout]
        want = auc([p[i] for i in idx], [labels[i] for i in idx])
        got = res["auc_by_layout"][layout]
        assert got == pytest.approx(want) or (math.isnan(got) and math.isnan(want))
    assert results_table({"scripted": res}).row_count == 3 + len(layouts)


def test_eval_on_a_real_tiny_model_runs(tiny):
    model, tok = tiny
    res = evaluate(model, tok, "arith", n=3, k=2, max_new_tokens=4)
    assert res["n"] == 3 and "pass@2" in res and 0 < res["mean_tokens"] <= 4


@pytest.mark.parametrize("kwargs, message", [
    (dict(task="arith", batch_size=0), "batch_size must be >= 1"),
    (dict(task="arith", n=0), "n must be >= 1"),
    (dict(task="jobs", k=4), "apply to arith only"),
    (dict(task="jobs", temperature=0.5), "apply to arith only"),
    (dict(task="arith", temperature=0.5), "give k > 1"),
    (dict(task="arith", k=2, temperature=-1.0), "temperature must be >= 0"),
])
def test_options_that_cannot_work_or_would_be_ignored_are_refused(tiny, kwargs, message):
    model, tok = tiny
    with pytest.raises(SlimkitError, match=message):
        evaluate(model, tok, **kwargs)


def test_labels_must_be_single_tokens(tok):
    assert len(label_token_ids(tok)) == 2
    with pytest.raises(SlimkitError, match="not a single token"):
        label_token_ids(tok, labels=("yes", "absolutely not"))
