import math

import pytest

from slimkit.errors import SlimkitError
from slimkit.tasks import Example, get_task
from slimkit.tasks.eval import auc, binary_label, evaluate, label_token_ids, results_table


def test_auc():
    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert auc([0.2, 0.9], [0, 1]) == 1.0
    assert auc([0.5, 0.5], [0, 1]) == 0.5
    assert math.isnan(auc([0.5, 0.6], [1, 1]))


def test_binary_label():
    assert binary_label(Example("p", "yes")) == 1
    assert binary_label(Example("p", "no", {"label": 1})) == 1
    assert binary_label(Example("p", "yes", {"label": "no"})) == 0


def test_eval_arith_on_tiny_model(tiny):
    model, tok = tiny
    res = evaluate(model, tok, "arith", n=6, k=2, max_new_tokens=8)
    assert res["n"] == 6 and 0 <= res["accuracy"] <= 1
    assert set(res["by_level"]) <= {"1", "2", "3"} and res["by_level"]
    assert "pass@2" in res and res["pass@2"] >= 0
    assert 0 < res["mean_tokens"] <= 8
    assert res["split"] == "test"


def test_eval_counts_correct_answers(tiny):
    """A fake 'completion' path: the verifier on the reference answers gives accuracy 1."""
    task = get_task("arith")
    exs = task.split("test", 20)
    assert all(task.verify(ex, ex.answer) for ex in exs)


def test_eval_jobs_on_tiny_model(tiny):
    model, tok = tiny
    res = evaluate(model, tok, "jobs", n=10)
    assert res["n"] == 10 and 0 <= res["auc"] <= 1 and 0 <= res["accuracy"] <= 1
    assert 0 < res["label_mass"] <= 1
    table = results_table({"tiny": res})
    assert table.row_count == 3


def test_labels_must_be_single_tokens(tok):
    assert len(label_token_ids(tok)) == 2
    with pytest.raises(SlimkitError, match="not a single token"):
        label_token_ids(tok, labels=("yes", "absolutely not"))
