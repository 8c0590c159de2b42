"""Offline mode: a JSONL catalog in, a JSONL of compressed items out, written atomically and resumable
after a kill; its user errors are one line each (through the real CLI)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slimkit import cli
from slimkit.compress.context.offline import compress_file
from slimkit.errors import SlimkitError


@pytest.fixture
def catalog(tmp_path, postings):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": p, "query": q}) + "\n" for i, (q, p) in enumerate(postings)))
    return src


def run(src, out, **kw):
    return compress_file(src, out, "head", tokenizer="toy:teacher", rate=0.25, query_field="query", batch_size=4, **kw)


def test_output_rows_and_resume_after_an_interruption(catalog, tmp_path):
    whole = tmp_path / "whole.jsonl"
    res = run(catalog, whole)
    rows = [json.loads(x) for x in whole.read_text().splitlines()]
    assert res["rows"] == len(rows) == 24 and [r["id"] for r in rows] == list(range(24))
    assert all(r["tokens_out"] <= r["tokens_in"] and r["compressed"] for r in rows)

    out = tmp_path / "out.jsonl"

    def stop_after_two_batches(done, total):
        if done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(catalog, out, progress=stop_after_two_batches)
    assert not out.exists()                                        # never a partial output file
    journal = tmp_path / ".out.jsonl.partial"
    with open(journal, "a") as f:                                  # a line torn by a kill
        f.write('{"id": 8, "text": "cut')
    res = run(catalog, out)
    assert res["resumed_at"] == 8 and out.read_text() == whole.read_text()
    assert not journal.exists() and not (tmp_path / ".out.jsonl.partial.json").exists()
    # A rerun refuses to replace the output without --overwrite; with it, it starts over.
    with pytest.raises(SlimkitError, match="--overwrite"):
        run(catalog, out)
    assert run(catalog, out, overwrite=True)["resumed_at"] == 0


def test_changed_input_starts_over(catalog, tmp_path):
    out = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run(catalog, out, progress=lambda done, total: (_ for _ in ()).throw(KeyboardInterrupt) if done else None)
    catalog.write_text(catalog.read_text().replace("Berlin", "Bern"))
    assert run(catalog, out)["resumed_at"] == 0


def cli_run(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["slimkit", *args])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    return e.value.code, err


def test_cli_errors_are_one_line_and_leave_no_output(tmp_path, catalog, monkeypatch, capsys):
    bad_utf8 = tmp_path / "latin1.jsonl"
    bad_utf8.write_bytes(b'{"text": "caf\xe9"}\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": "fine"}\n{"text": "  "}\n')
    mine = tmp_path / "mine.jsonl"
    mine.write_text("my notes\n")
    out = str(tmp_path / "o.jsonl")
    base = ["compress-context", "--compressor", "head", "--tokenizer", "toy:teacher"]
    cases = [
        ([*base, "-i", str(catalog), "-o", out, "--rate", "0"], "rate must be in (0, 1]"),
        ([*base, "-i", str(catalog), "-o", out, "--rate", "1.5"], "rate must be in (0, 1]"),
        ([*base, "-i", str(catalog), "-o", out], "give either a rate"),
        ([*base, "-i", str(bad_utf8), "-o", out, "--rate", "0.5"], "not UTF-8 text"),
        ([*base, "-i", str(empty), "-o", out, "--rate", "0.5"], "'text' is empty"),
        ([*base, "-i", str(tmp_path / "missing.jsonl"), "-o", out, "--rate", "0.5"], "cannot read"),
        ([*base, "-i", str(catalog), "-o", str(mine), "--rate", "0.5"], "not written by slimkit"),
        (["compress-context", "-i", str(catalog), "-o", out, "--rate", "0.5", "--compressor", "/no/such/dir"],
         "does not exist"),
        (["compress-context", "--rate", "0.5"], "needs --input and --out"),
    ]
    for args, message in cases:
        code, err = cli_run(monkeypatch, capsys, *args)
        assert code == 2 and len(err) == 1 and message in err[0], (args, err)
    assert not Path(out).exists() and mine.read_text() == "my notes\n"


@pytest.mark.slow
def test_sigkill_leaves_no_output_and_a_rerun_resumes(tmp_path, postings):
    """The real command, killed with SIGKILL mid-run, then run again."""
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": p}) + "\n" for _, p in postings * 20))     # 480 rows
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "slimkit.cli", "compress-context", "-i", str(src), "-o", str(out), "--rate", "0.25",
           "--compressor", "toy:student", "--batch-size", "8"]
    env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[1])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = tmp_path / ".out.jsonl.partial"
    deadline = time.time() + 120
    while time.time() < deadline and (not journal.exists() or journal.read_text().count("\n") < 16):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists() and journal.read_text().count("\n") >= 16
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "resumed at row" in done.stderr and len(out.read_text().splitlines()) == 480
