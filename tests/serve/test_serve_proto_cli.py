"""The committed generated code is what `make proto` produces; the `slimkit score` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from serve_data import ITEMS, QUERY
from typer.testing import CliRunner

from slimkit.serve import protogen


def test_generated_code_is_up_to_date(tmp_path):
    out = protogen.generate(tmp_path)
    for name in protogen.GENERATED:
        fresh = (out / name).read_text()
        committed = (protogen.SERVE / "_proto" / name).read_text()
        assert fresh == committed, f"slimkit/serve/_proto/{name} is stale: run `make proto`"


@pytest.fixture
def items_file(tmp_path):
    p = tmp_path / "items.txt"
    p.write_text("\n".join(ITEMS) + "\n\n")
    return p


def test_score_command_json(torch_server, items_file, client):
    from slimkit.cli import app

    r = CliRunner().invoke(app, ["score", "--server", torch_server, "--query", QUERY, "--items",
                                 str(items_file), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [x["item"] for x in out["items"]] == ITEMS
    want = client.score(QUERY, ITEMS).scores
    assert [x["score"] for x in out["items"]] == pytest.approx(want, abs=1e-6)


def test_score_command_table_and_jsonl(torch_server, tmp_path):
    from slimkit.cli import app

    p = tmp_path / "items.jsonl"
    p.write_text("\n".join(json.dumps({"item": it}) for it in ITEMS[:3]))
    r = CliRunner().invoke(app, ["score", "--server", torch_server, "--query", QUERY, "--items", str(p),
                                 "--normalization", "logit_diff"])
    assert r.exit_code == 0, r.output
    assert "night nurse" in r.stdout and "logit_diff" in r.stdout


def test_score_command_bad_label_is_one_clear_error(torch_server, items_file):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "slimkit.cli", "score", "--server", torch_server, "--query", QUERY,
                        "--items", str(items_file), "--labels", "yes,absolutely not"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "INVALID_ARGUMENT" in r.stderr and "not a single token" in r.stderr
    assert "Traceback" not in r.stderr


def test_serve_command_subprocess_and_sigterm(tiny_dir, tmp_path):
    import shutil
    import sys

    from serve_data import start_server, stop_server

    from slimkit.serve.client import ScorerClient

    exe = shutil.which("slimkit", path=str(Path(sys.executable).parent))
    proc, addr = start_server([exe, "serve"], tiny_dir, "torch", tmp_path, timeout=180)
    try:
        with ScorerClient(addr) as c:
            assert c.model_info().engine == "torch"
            assert len(c.score(QUERY, ITEMS).scores) == len(ITEMS)
    finally:
        stop_server(proc)
    assert proc.returncode == 0


def test_serve_command_bad_model_dir(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "slimkit.serve", str(tmp_path / "nope")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
