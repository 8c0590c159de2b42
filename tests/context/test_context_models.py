"""The two model scorers behind one interface: surprisal under a causal LM and the trained keep/drop
classifier (written by the real `train` path as an ordinary model directory)."""

from __future__ import annotations

import json

from slimkit.compress import context


def _check(comp, postings, rate):
    queries = [q for q, _ in postings]
    texts = [p for _, p in postings]
    for qs in (None, queries):
        out = comp.compress(texts, rate=rate, queries=qs)
        assert len(out) == len(texts)
        for text, c in zip(texts, out, strict=True):
            it = iter(text.split())
            assert all(w in it for w in c.text.split())
            assert c.tokens_out <= c.limit or qs is not None
            assert c.tokens_out == comp.count(c.text)
    return out


def test_surprisal_scorer_compresses_with_and_without_the_query(tiny_dir, postings):
    comp = context.load(tiny_dir)
    assert comp.name == "surprisal"
    out = _check(comp, postings, 0.25)
    # Question-aware: the query's terms (title, place) survive.
    for (q, p), c in zip(postings, out, strict=True):
        place = q.split("place: ")[1].split("\n")[0]
        if place in p:
            assert place in c.text


def test_surprisal_scores_windows_of_long_texts(tiny_dir):
    comp = context.load(tiny_dir)
    text = " ".join(f"word{i % 50}x" for i in range(900))       # longer than the model's positions
    scores = comp.scorer.word_scores([text], [context.split_words(text)], [None],
                                     [(comp.tokenizer.encode(text, add_special_tokens=False),
                                       comp.tokenizer(text, return_offsets_mapping=True,
                                                      add_special_tokens=False)["offset_mapping"])])
    assert len(scores[0]) == 900 and all(s == s for s in scores[0])


def test_classifier_is_an_ordinary_model_dir_and_a_scorer(classifier_dir, postings):
    from transformers import AutoModelForTokenClassification

    manifest = json.loads((classifier_dir / "slimkit.json").read_text())
    assert manifest["stage"] == "context-compressor" and 0 <= manifest["metrics"]["heldout_token_accuracy"] <= 1
    model = AutoModelForTokenClassification.from_pretrained(classifier_dir)
    assert model.config.num_labels == 2
    comp = context.load(classifier_dir)
    assert comp.name == "classifier"
    _check(comp, postings, 0.1)


def test_the_classifier_fits_at_any_step_count():
    """Short runs (1, 2 and 10 steps: a one-cycle schedule with a warmup under one step) still train."""
    from slimkit.compress.context.train import fit

    rows = [([5, 6, 7, 8], [1, 1, 1, 1], [1.0, 0.0, 1.0, 0.0]), ([9, 10, 11], [1, 1, 1], [0.0, 1.0, 1.0])]
    for steps in (1, 2, 10):
        model = fit(rows, vocab_size=16, pad=0, hidden=32, layers=1, steps=steps, batch_size=2, max_len=16)
        assert model.config.num_labels == 2
