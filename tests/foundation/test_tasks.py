import json

import pytest

from slimkit.errors import SlimkitError
from slimkit.tasks import Example, format_prompt, get_task, read_jsonl, write_jsonl
from slimkit.tasks.arith import CONCISE, extract_answer, solve
from slimkit.tasks.jobs import TEMPLATE


@pytest.mark.parametrize("name", ["arith", "jobs"])
def test_generators_are_deterministic(name):
    a = get_task(name).split("train", 300)
    b = get_task(name).split("train", 300)
    assert a == b
    assert get_task(name).split("test", 50) == get_task(name).split("test", 100)[:50]


@pytest.mark.parametrize("name,key", [("arith", "expr"), ("jobs", "posting")])
def test_splits_are_disjoint(name, key):
    task = get_task(name)
    ids = {s: {ex.meta[key] if name == "arith" else ex.prompt for ex in task.split(s, n)}
           for s, n in (("train", 5000), ("validation", 300), ("test", 300))}
    assert not ids["train"] & ids["test"]
    assert not ids["train"] & ids["validation"]
    assert not ids["validation"] & ids["test"]
    assert len(ids["test"]) == 300  # distinct problems in test


def test_arith_examples_are_consistent():
    task = get_task("arith")
    exs = task.split("test", 300)
    assert {ex.meta["level"] for ex in exs} == {1, 2, 3}
    assert {ex.meta["style"] for ex in exs} == {"verbose", "concise"}
    for ex in exs:
        assert task.verify(ex, ex.answer)
        assert eval(ex.meta["expr"].replace(" ", "")) == ex.meta["result"]  # noqa: S307 - our own digits
        assert (CONCISE in ex.prompt) == (ex.meta["style"] == "concise")
    verbose = [len(ex.answer) for ex in exs if ex.meta["style"] == "verbose"]
    concise = [len(ex.answer) for ex in exs if ex.meta["style"] == "concise"]
    assert sum(concise) / len(concise) < 0.6 * sum(verbose) / len(verbose)


def test_solve_respects_precedence_and_rejects_negative():
    steps = solve([2, "+", 3, "*", 4])
    assert [s for _, s, _ in steps] == ["3 * 4 = 12", "2 + 12 = 14"]
    assert solve([3, "-", 5]) is None
    assert solve([60, "+", 50]) is None  # results stay within 0..99


def test_arith_verifier():
    task = get_task("arith")
    ex = Example("What is 2 + 3?", "2 + 3 = 5. Answer: 5", {"result": 5})
    assert task.verify(ex, "2 + 3 = 5. Answer: 5")
    assert task.verify(ex, "Answer: 5 ")
    assert not task.verify(ex, "2 + 3 = 5. Answer: 6")
    assert not task.verify(ex, "2 + 3 = 5.")  # no final answer
    assert not task.verify(ex, "Answer: 5 and more")  # answer must end the text
    assert not task.verify(ex, "Answer: five")
    assert not task.verify(ex, "")
    assert task.verify(ex, "Answer: 4. Answer: 5")  # the last one counts
    # without meta, the reference answer is parsed from the example's answer
    assert task.verify(Example("q", "Answer: 12"), "x. Answer: 12")
    assert extract_answer("Answer: -3") == -3


def test_jobs_examples_and_verifier():
    import re

    from slimkit.tasks.jobs import LAYOUTS, PLACES, TITLES

    task = get_task("jobs")
    exs = task.split("test", 300)
    labels = [ex.meta["label"] for ex in exs]
    assert 0.35 < sum(labels) / len(labels) < 0.65
    assert {ex.meta["layout"] for ex in exs} == set(LAYOUTS)
    for ex in exs:
        assert ex.answer == ("yes" if ex.meta["label"] else "no")
        assert ex.prompt == TEMPLATE.format(query=ex.meta["query"], item=ex.meta["posting"])
        title = ex.meta["query"].split("\n")[0].removeprefix("title: ")
        place = ex.meta["query"].split("\n")[1].removeprefix("place: ")
        posting = ex.meta["posting"]
        # the posting names exactly one title and one place, in any layout
        named = [t for t in TITLES if re.search(rf"\b{t}\b", posting)]
        places = [p for p in PLACES if re.search(rf"\b{p}\b", posting)]
        assert len(named) == 1 and len(places) == 1, posting
        assert ex.meta["label"] == int(named == [title] and places == [place])
        lines = posting.split("\n")
        if ex.meta["layout"] == "header":  # the fields first, the filler a context compressor could drop last
            assert lines[0].startswith("title: ") and lines[1].startswith("place: ")
            assert ":" not in lines[-1].split(" ")[0] and len(lines[-1]) > len("\n".join(lines[:-1]))
        elif ex.meta["layout"] == "scattered":  # the same field lines, among filler lines
            assert f"title: {named[0]}" in lines and f"place: {places[0]}" in lines
        else:  # prose: the fields inside sentences, no field lines
            assert len(lines) == 1 and "title:" not in posting and "place:" not in posting
    first = {layout: sum(ex.meta["posting"].startswith("title:") for ex in exs if ex.meta["layout"] == layout)
             for layout in LAYOUTS}
    assert first["prose"] == 0 and first["scattered"] < 0.5 * sum(ex.meta["layout"] == "scattered" for ex in exs)
    ex = exs[0]
    assert task.verify(ex, ex.answer)
    assert task.verify(ex, ex.answer.capitalize() + ".")
    assert not task.verify(ex, "no" if ex.answer == "yes" else "yes")
    assert not task.verify(ex, "")
    assert not task.verify(ex, "maybe")


def test_jsonl_round_trip(tmp_path):
    exs = get_task("arith").split("test", 20) + get_task("jobs").split("test", 5)
    p = write_jsonl(tmp_path / "d" / "x.jsonl", exs)
    assert read_jsonl(p) == exs
    assert [json.loads(line)["prompt"] for line in p.read_text().splitlines()] == [e.prompt for e in exs]


def test_jsonl_user_data_and_errors(tmp_path):
    p = tmp_path / "mine.jsonl"
    p.write_text('{"prompt": "p1", "label": "yes", "source": "hr"}\n\n{"prompt": "p2", "answer": "no"}\n')
    exs = read_jsonl(p)
    assert exs[0] == Example("p1", "yes", {"label": "yes", "source": "hr"})
    assert exs[1].answer == "no"
    p.write_text('{"prompt": "p1"}\n')
    with pytest.raises(SlimkitError, match="mine.jsonl:1"):
        read_jsonl(p)
    p.write_text("not json\n")
    with pytest.raises(SlimkitError, match="not valid JSON"):
        read_jsonl(p)
    with pytest.raises(SlimkitError, match="does not exist"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_bad_names():
    with pytest.raises(SlimkitError, match="unknown task 'nope'"):
        get_task("nope")
    with pytest.raises(SlimkitError, match="unknown split"):
        get_task("arith").split("dev", 3)


def test_format_prompt(tok):
    text = format_prompt(tok, "What is 1 + 1?")
    assert text == "<|im_start|>user\nWhat is 1 + 1?<|im_end|>\n<|im_start|>assistant\n"


def test_pad_pairs_marks_the_answers_and_pads_right():
    from slimkit.tasks import pad_pairs
    from slimkit.toy.sft import collate

    ids, attention, answer = pad_pairs([([1, 2], [3]), ([4], [5, 6, 7])], pad_id=0, multiple=8)
    assert ids.tolist() == [[1, 2, 3, 0, 0, 0, 0, 0], [4, 5, 6, 7, 0, 0, 0, 0]]
    assert attention.sum(1).tolist() == [3, 4]
    assert answer.nonzero().tolist() == [[0, 2], [1, 1], [1, 2], [1, 3]]
    labels = collate([([1, 2], [3]), ([4], [5, 6, 7])], pad=0, multiple=8)["labels"]
    assert labels.tolist() == [[-100, -100, 3] + [-100] * 5, [-100, 5, 6, 7] + [-100] * 4]


def test_jobs_short_postings_are_a_training_variant():
    """`filler_lines` makes shorter postings with the same fields and labels; the default task (the
    one evaluated) is unchanged by the option."""
    from slimkit.tasks.jobs import FILLER, FILLER_LINES, Jobs

    assert Jobs().split("test", 50) == get_task("jobs").split("test", 50) and FILLER_LINES == (4, 7)
    short = Jobs(filler_lines=(0, 1)).split("train", 60)
    full = get_task("jobs").split("train", 60)
    for exs, lo, hi in ((short, 0, 1), (full, 4, 7)):
        counts = [sum(f in ex.meta["posting"] for f in FILLER) for ex in exs]
        assert lo <= min(counts) and max(counts) <= hi
    assert {ex.meta["label"] for ex in short} == {0, 1}
