import subprocess
import sys

from typer.testing import CliRunner

from slimkit.cli import app


def _slimkit(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "slimkit.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_help_lists_stages():
    r = CliRunner().invoke(app, ["--help"])
    assert r.exit_code == 0
    assert "eval" in r.output and "toy" in r.output
    r = CliRunner().invoke(app, ["toy", "--help"])
    assert "build" in r.output and "report" in r.output
    for cmd in (["eval", "--help"], ["toy", "build", "--help"], ["toy", "report", "--help"], ["toy", "path", "--help"]):
        r = CliRunner().invoke(app, cmd)
        assert r.exit_code == 0 and "Examples" in r.output


def test_eval_missing_model_is_one_line_exit_2():
    r = _slimkit("eval", "/nonexistent/model", "--task", "arith")
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "/nonexistent/model" in lines[0] and "does not exist" in lines[0]


def test_eval_garbage_model_is_one_line_exit_2(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes(b"junk")
    r = _slimkit("eval", str(tmp_path), "--task", "arith")
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(tmp_path) in lines[0]


def test_eval_bad_task_is_one_line_exit_2(tiny_dir):
    r = _slimkit("eval", str(tiny_dir), "--task", "poetry")
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown task 'poetry'" in lines[0]


def test_toy_report_without_build_is_one_line(tmp_path):
    r = _slimkit("toy", "report", "--dir", str(tmp_path / "none"))
    assert r.returncode == 2 and "slimkit toy build" in r.stderr
