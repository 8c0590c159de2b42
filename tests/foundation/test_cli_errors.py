"""Every `slimkit` command with a wrong path, a wrong option value, or a target that holds a user's file:
one line on stderr, a non-zero exit, the user's file untouched. (The serve command's cases, which need a
server process, are in tests/serve/test_serve_errors.py.)"""

from __future__ import annotations

import sys

import pytest

from slimkit import cli


def run(monkeypatch, capsys, *args: str) -> tuple[int, list[str]]:
    monkeypatch.setattr(sys, "argv", ["slimkit", *args])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err
    return e.value.code, [ln for ln in err.splitlines() if ln.strip()]


@pytest.fixture
def user_files(tmp_path):
    d = tmp_path / "users_dir"
    d.mkdir()
    (d / "thesis.txt").write_text("years of work")
    f = tmp_path / "results.json"
    f.write_text('{"mine": true}')
    return d, f


def cases(model: str, d, f, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"teacher: {model}\nstudent: {model}\nout: {d}\n")
    return [
        (["eval", "/nonexistent/model", "--task", "arith"], "does not exist"),
        (["eval", model, "--task", "poetry"], "unknown task 'poetry'"),
        (["eval", model, "--task", "arith", "--split", "dev"], "unknown split 'dev'"),
        (["eval", model, "--task", "arith", "--n", "0"], "--n"),
        (["eval", model, "--task", "arith", "--n", "many"], "--n"),
        (["eval", model, "--task", "arith", "--k", "0"], "--k"),
        (["eval", model, "--task", "jobs", "--k", "4"], "apply to arith only"),
        (["eval", model, "--task", "arith", "--temperature", "0.5"], "give k > 1"),
        (["eval", model, "--task", "arith", "--batch-size", "0"], "--batch-size"),
        (["eval", model, "--task", "arith", "--data", str(tmp_path / "none.jsonl")], "does not exist"),
        (["eval", model, "--task", "arith", "--data", str(f), "--split", "test"], "drop --split"),
        (["eval", model, "--task", "arith", "--out", str(f)], "refusing to replace"),
        (["eval", model, "--task", "arith", "--out", str(f), "--overwrite"], "refusing to replace"),
        (["eval", model, "--task", "arith", "--out", str(d)], "refusing to replace"),
        (["eval", model, "--task", "arith", "--bogus"], "No such option"),
        (["evaluate"], "No such command"),
        (["distill", str(tmp_path / "none.yaml")], "does not exist"),
        (["distill", str(recipe), "--set", "train.steps=zero"], "train.steps"),
        (["distill", str(recipe), "--set", "train.device=gpu"], "'gpu' is not a device"),
        (["distill", str(recipe)], "is not a slimkit run directory"),
        (["distill", str(recipe), "--overwrite"], "is not a slimkit run directory"),
        (["distill", str(recipe), "--resume"], "no checkpoint"),
        (["distill", str(recipe), "--set", "select.method=all_of_them"], "select.method"),
        (["score", "--query", "q", "--items", str(tmp_path / "none.txt")], "does not exist"),
        (["score", "--query", "q", "--items", str(f), "--normalization", "softmax"], "unknown normalization"),
        (["score", "--query", "q", "--items", str(f), "--timeout", "0"], "--timeout"),
        (["serve", model, "--port", "70000"], "--port"),
        (["serve", model, "--workers", "0"], "--workers"),
        (["toy", "report", "--dir", str(tmp_path / "none")], "slimkit toy build"),
        (["toy", "build", "--out", str(d)], str(d)),
        (["toy", "build", "--out", str(d), "--force"], str(d)),
    ]


def test_every_command_error_is_one_line_and_keeps_the_users_files(tiny_dir, user_files, tmp_path, monkeypatch,
                                                                     capsys):
    d, f = user_files
    failures = []
    for args, needle in cases(str(tiny_dir), d, f, tmp_path):
        code, lines = run(monkeypatch, capsys, *args)
        if code == 0 or len(lines) != 1 or needle not in lines[0] or "Traceback" in " ".join(lines):
            failures.append((args, code, lines))
    assert failures == []
    assert [p.name for p in d.iterdir()] == ["thesis.txt"] and (d / "thesis.txt").read_text() == "years of work"
    assert f.read_text() == '{"mine": true}'


def test_eval_out_replaces_its_own_result_only_with_overwrite(tiny_dir, tmp_path, monkeypatch, capsys):
    import json

    out = tmp_path / "res.json"
    args = ["eval", str(tiny_dir), "--task", "jobs", "--n", "4", "--out", str(out)]
    assert run(monkeypatch, capsys, *args)[0] == 0
    first = json.loads(out.read_text())
    assert first["task"] == "jobs" and first["n"] == 4
    code, lines = run(monkeypatch, capsys, *args)
    assert code == 2 and len(lines) == 1 and "--overwrite" in lines[0]
    assert run(monkeypatch, capsys, *args[:-2], "--n", "6", "--out", str(out), "--overwrite")[0] == 0
    assert json.loads(out.read_text())["n"] == 6


def test_no_arguments_shows_help(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["slimkit"])
    with pytest.raises(SystemExit):
        cli.main()
    assert "Usage" in capsys.readouterr().out
