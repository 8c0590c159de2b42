"""User paths of a distillation recipe that the other tests do not take: teacher rollouts with their
cache, data from a JSONL file, stop strings, periodic eval, checkpoint retention, and the shipped
recipes themselves."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml
from distill_helpers import overrides

from slimkit.compress.distill import load_recipe, train
from slimkit.compress.distill.trainer import Distiller
from slimkit.errors import SlimkitError


def _is_pipeline(path: Path) -> bool:
    """`slimkit pipeline` recipes (stages by name) are checked by tests/pipeline, not as distill recipes."""
    return isinstance((yaml.safe_load(path.read_text()) or {}).get("stages"), dict)


RECIPES = sorted(p for p in (Path(__file__).resolve().parents[2] / "recipes").rglob("*.yaml") if not _is_pipeline(p))


def _examples_in_comments(path: Path) -> list[list[str]]:
    """The `--set` overrides of each `slimkit distill RECIPE ...` example in the recipe's comments."""
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("#") and "slimkit distill" in line:
            words = shlex.split(line.lstrip("# ").split("slimkit distill", 1)[1])
            out.append([words[i + 1] for i, w in enumerate(words) if w == "--set"])
    return out


def test_there_are_recipes():
    assert len(RECIPES) >= 2


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads_and_validates(path):
    from slimkit.tasks import get_task

    cfg = load_recipe(path)
    if cfg.data.task:
        assert get_task(cfg.data.task).split(cfg.data.split, 1)
    for extra in _examples_in_comments(path):  # the examples a recipe advertises validate too
        load_recipe(path, extra)


def test_teacher_rollouts_are_cached_reused_and_a_stale_cache_refused(pair, tmp_path):
    out = tmp_path / "run"
    args = overrides(pair, out, "rollout.source=teacher", "rollout.temperature=0.7", "rollout.samples=2")
    d = Distiller(load_recipe(None, args))
    cache = out / "teacher_rollouts.jsonl"
    head, *rows = [json.loads(x) for x in cache.read_text().splitlines()]
    assert head["prompts"] == 32 and head["samples"] == 2 and len(rows) == 64
    assert d.train_step()["tokens"] > 0
    mtime = cache.stat().st_mtime_ns
    again = Distiller(load_recipe(None, args), overwrite=True)
    assert cache.stat().st_mtime_ns == mtime  # reused, not generated again
    assert [r.completion_ids for r in again.source.all()] == [r.completion_ids for r in d.source.all()]
    with pytest.raises(SlimkitError, match="teacher rollout cache .* was made for another teacher, data or sampling"):
        Distiller(load_recipe(None, [*args, "rollout.temperature=1.0"]), overwrite=True)
    elsewhere = tmp_path / "cache.jsonl"
    Distiller(load_recipe(None, [*args, "rollout.temperature=1.0", f"rollout.cache={elsewhere}"]), overwrite=True)
    assert json.loads(elsewhere.read_text().splitlines()[0])["fingerprint"] != head["fingerprint"]


def test_data_path_is_the_prompts_and_completions(pair, tmp_path):
    from slimkit.tasks import get_task, write_jsonl

    exs = get_task("arith").split("validation", 6)
    data = write_jsonl(tmp_path / "mine.jsonl", exs)
    d = Distiller(load_recipe(None, overrides(pair, tmp_path / "run", f"data.path={data}", "data.n=null")))
    assert [e.prompt for e in d.examples] == [e.prompt for e in exs]
    tok = d.tok
    first = d.source.get([0])[0]
    assert tok.decode(first.completion_ids, skip_special_tokens=True) == exs[0].answer
    assert d.train_step()["loss"] > 0
    with pytest.raises(SlimkitError, match="data.path .*nope.jsonl does not exist"):
        Distiller(load_recipe(None, overrides(pair, tmp_path / "r2", f"data.path={tmp_path / 'nope.jsonl'}")))


def test_rollout_stop_cuts_student_completions(pair, tmp_path):
    base = ("rollout.source=student", "rollout.temperature=0.0", "rollout.max_new_tokens=8")
    d = Distiller(load_recipe(None, overrides(pair, tmp_path / "a", *base)))
    free = d.source.get([0, 1, 2, 3], model=d.student, seed=0)
    assert all(len(r.completion_ids) == 8 for r in free)  # a random model: no EOS within 8 tokens
    stop = d.tok.decode(free[0].completion_ids[2:3])
    assert stop
    cut = Distiller(load_recipe(None, overrides(pair, tmp_path / "b", *base, f"rollout.stop=[{json.dumps(stop)}]")))
    rows = cut.source.get([0, 1, 2, 3], model=cut.student, seed=0)
    first = free[0].completion_ids
    upto = next(i for i in range(1, 9) if stop in d.tok.decode(first[:i]))
    assert rows[0].completion_ids == first[:upto]   # ends with the token that completed the stop string
    for r, f in zip(rows, free, strict=True):
        assert r.completion_ids == f.completion_ids[:len(r.completion_ids)]


def test_eval_every_and_keep_checkpoints(pair, tmp_path):
    out = tmp_path / "run"
    train(load_recipe(None, overrides(pair, out, "train.steps=5", "eval.every=2", "train.checkpoint_every=1",
                                      "train.keep_checkpoints=3")))
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "eval_acc" in r] == [2, 4, 5]  # every 2 steps, and the final eval
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-00000003.pt", "step-00000004.pt", "step-00000005.pt"]
