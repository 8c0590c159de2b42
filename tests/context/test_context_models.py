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
            it = iter(text[a:b] for a, b in context.split_words(text))
            assert all(c.text[a:b] in it for a, b in context.split_words(c.text))
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


def test_query_free_labels_keep_what_any_query_turns_on(toy_tok):
    """Two queries of one text, each moved by a different word: alone, each labels the other word
    "drop"; the text's query-free labels keep both. The query rows keep their own pair's labels."""
    from slimkit.compress.context.train import jobs_pairs, make_rows, pair_labels, text_labels

    text = "title nurse\nplace Oslo\nfree fruit"              # words: title nurse place Oslo free fruit
    pairs = [("title: nurse\nplace: Rome", text), ("title: chef\nplace: Oslo", text), ("q", "free fruit")]
    moves = [[0.1, 0.2, 0.1, 4.0, 0.0, 0.1], [0.0, 3.0, 0.1, 0.3, 0.1, 0.0], [0.5, 1.0]]
    assert pair_labels(moves)[0][1] == 0.05 and pair_labels(moves)[1][3] == 0.1
    per_text = text_labels(pairs, moves)
    assert per_text[text] == [0.025, 0.75, 0.025, 1.0, 0.025, 0.025] and per_text["free fruit"] == [0.5, 1.0]
    groups = make_rows(toy_tok, pairs, moves, sep=toy_tok.eos_token_id, max_len=64)
    assert [len(g) for g in groups] == [3, 2]                      # the text alone, then after each query
    alone, after_first = groups[0][0], groups[0][1]
    assert set(alone[1]) == {1} and max(alone[2]) == 1.0 and -1.0 not in alone[2]
    assert after_first[1][0] == 0 and after_first[2][0] == -1.0    # the query's tokens are not trained
    # the toy's labelling set: each posting with its own query and its match / title / place near-misses
    pairs = jobs_pairs(3)
    texts = list(dict.fromkeys(t for _, t in pairs))
    assert len(texts) == 3 and all(3 <= sum(t == u for _, u in pairs) <= 4 for t in texts)


def test_elimination_labels_keep_every_word_of_a_multi_word_field_to_the_end():
    """Backward elimination under the shipped teacher: the last words standing are the posting's
    title (all its words) and place, and their labels sit far above the filler's (leave-one-out labels
    a word of a multi-word title about 0.1, where leaving it out barely moves the score); labels are
    ranks, the last survivor 1."""
    from slimkit import artifacts
    from slimkit.compress.context.train import elimination_labels, jobs_pairs
    from slimkit.compress.context.words import split_words
    from slimkit.tasks import get_task
    from slimkit.tasks.jobs import TEMPLATE

    model, tok = artifacts.load("toy:teacher")
    posts = {ex.meta["posting"]: ex for ex in get_task("jobs").split("train", 40)
             if len(ex.meta["posting_title"].split()) > 1}
    pairs = [(q, t) for q, t in jobs_pairs(40) if t in posts][:12]
    labels = elimination_labels(model, tok, pairs, template=TEMPLATE)
    assert len(labels) >= 3
    for text, y in labels.items():
        ex = posts[text]
        words = [text[a:b].strip(".,") for a, b in split_words(text)]
        assert sorted(y) == [round(r / (len(y) - 1), 4) for r in range(len(y))]
        fields = ex.meta["posting_title"].split() + [ex.meta["posting_place"]]
        top = {words[i] for i in sorted(range(len(y)), key=lambda i: -y[i])[:len(fields)]}
        assert top == set(fields), (ex.meta["layout"], top, fields)
        assert min(y[i] for i, w in enumerate(words) if w in fields) >= 0.75
