"""`slimkit quantize`: an unknown scheme, an unsupported architecture, a bad calibration source, a
missing environment, a user's directory in the way, a tool that fails: one line, and no output."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from slimkit.compress import quantize as q
from slimkit.errors import SlimkitError


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slimkit.cli", "quantize", *args], capture_output=True,
                          text=True, timeout=300)


def _one_line(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for needle in needles:
        assert needle in r.stderr


def test_unknown_scheme_and_architecture_leave_nothing(tiny_model, tmp_path):
    out = tmp_path / "out"
    _one_line(_cli(str(tiny_model), "--scheme", "int3", "--out", str(out)), "unknown scheme 'int3'", "w8a8")
    other = tmp_path / "gpt2"
    shutil.copytree(tiny_model, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(cfg | {"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(SlimkitError, match="is a GPT2LMHeadModel: quantize supports .*Qwen3ForCausalLM"):
        q.quantize(other, "onnx-int8", out)
    with pytest.raises(SlimkitError, match="does not exist"):
        q.quantize(tmp_path / "missing", "w8a8", out)
    assert not out.exists()


def test_bad_calibration_sources(tiny_model, tmp_path):
    out = tmp_path / "out"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1", "answer": "2"}\nnot json\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    for calib, message in [("poetry", "neither a JSONL file nor tasks"), (str(bad), "bad.jsonl:2: not valid JSON"),
                           (str(empty), "gave no examples"), (str(tmp_path / "none.jsonl"), "does not exist")]:
        with pytest.raises(SlimkitError, match=message):
            q.quantize(tiny_model, "w8a8", out, calib=calib)
    assert not out.exists()


def test_calibration_from_tasks_and_files(tiny_model, tmp_path):
    ids = q.calibration_ids(tiny_model, "arith,jobs", 5)
    assert len(ids) == 5 and all(0 < len(r) <= q.MAX_CALIB_TOKENS for r in ids)
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i} + 1", "answer": str(i + 1)}) + "\n" for i in range(4)))
    assert len(q.calibration_ids(tiny_model, str(data), 3)) == 3


def test_missing_environment_says_how_to_create_it(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setitem(q.ENVS, "llm-compressor", ".venv-nowhere")
    with pytest.raises(SlimkitError, match=r"\.venv-nowhere, which is missing: create it with "
                                           r"`make \.venv-nowhere/\.installed`"):
        q.quantize(tiny_model, "w8a8", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_a_users_directory(tiny_model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _one_line(_cli(str(tiny_model), "--scheme", "onnx-fp32", "--out", str(out)), "not written by slimkit")
    with pytest.raises(SlimkitError, match="not written by slimkit"):
        q.quantize(tiny_model, "onnx-int8", out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.slow
@pytest.mark.skipif(not (q.ROOT / q.ENVS["llm-compressor"] / "bin/python").exists(),
                    reason="no .venv-quant: run `make .venv-quant/.installed`")
def test_a_failing_tool_leaves_no_output(tiny_model, tmp_path):
    """The model loads its config but its weights are broken: the work fails inside llm-compressor's
    environment; the caller gets one line, and neither the output nor a temporary directory is left."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    r = _cli(str(broken), "--scheme", "w8a8", "--out", str(tmp_path / "out"), "--n", "2")
    _one_line(r, "quantizing", "failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]
