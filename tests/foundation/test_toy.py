import json

import pytest
import torch
from rich.console import Console

from slimkit import artifacts, toy
from slimkit.errors import SlimkitError
from slimkit.toy.build import build
from slimkit.toy.report import report


def test_make_tiny_model_dir(tmp_path):
    out = toy.make_tiny_model_dir(tmp_path / "m", hidden=64, layers=1, seed=3)
    model, tok = artifacts.load(out)
    cfg = model.config
    assert cfg.model_type == "qwen3" and cfg.head_dim == 32 and cfg.num_hidden_layers == 1
    assert cfg.vocab_size == len(tok) and cfg.eos_token_id == tok.eos_token_id
    assert artifacts.read_manifest(out)["stage"] == "tiny-random"
    again = toy.make_tiny_model_dir(tmp_path / "m2", hidden=64, layers=1, seed=3)
    m2, _ = artifacts.load(again)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), m2.state_dict().values(), strict=True))


def test_rebuild_dir_honours_slimkit_home(monkeypatch, tmp_path):
    monkeypatch.setenv("SLIMKIT_HOME", str(tmp_path))
    assert toy.rebuild_dir() == tmp_path / toy.VERSION
    assert not toy.is_built(toy.rebuild_dir())


def test_toy_names_resolve_to_the_shipped_world():
    assert toy.resolve("toy:teacher") == toy.shipped_dir() / "teacher"
    assert artifacts.check_model_dir("toy:student") == toy.shipped_dir() / "student"
    with pytest.raises(SlimkitError, match="unknown toy model 'toy:teacherr'"):
        toy.resolve("toy:teacherr")


def test_tiny_toy_build_end_to_end(tmp_path, capsys):
    """A tiny build over two data-parallel processes; its teacher equals one trained in one process up
    to float rounding (same batches, same update)."""
    from slimkit.toy.build import _fit, training_data

    root = tmp_path / "toy"
    record = build(root, scale=0.01, workers=2, eval_n={"arith": 6, "jobs": 8}, console=Console(quiet=True))
    assert toy.is_built(root) and record["workers"] == 2 and record["threads"] == 1
    alone = _fit("teacher", 0, 0.01, {"arith": 6, "jobs": 8}, training_data(), toy.toy_tokenizer())[0].state_dict()
    built = artifacts.load(root / "teacher")[0].state_dict()
    assert max(float((alone[k] - built[k]).abs().max()) for k in alone) < 1e-4
    assert json.loads((root / "toy.json").read_text())["models"].keys() == {"teacher", "student"}
    assert record["models"]["teacher"]["params"] > record["models"]["student"]["params"]
    for name in ("teacher", "student"):
        m = artifacts.read_manifest(root / name)
        assert m["stage"] == f"toy-{name}" and {"arith", "jobs", "train"} <= set(m["metrics"])
        model, tok = artifacts.load(root / name)
        assert model.config.head_dim >= 32
    # report uses cached metrics, and recomputes missing ones
    manifest = json.loads((root / "student" / "slimkit.json").read_text())
    del manifest["metrics"]["jobs"]
    (root / "student" / "slimkit.json").write_text(json.dumps(manifest))
    console = Console(record=True, width=120)
    res = report(root, console=console, eval_n={"arith": 6, "jobs": 8})
    text = console.export_text()
    assert "teacher" in text and "student" in text and "AUC" in text and "level 1" in text
    assert res["jobs"]["student"]["n"] == 8
    assert "jobs" in artifacts.read_manifest(root / "student")["metrics"]


def test_shipped_world_report_equals_its_build_record():
    """`slimkit toy report` (what `make demo` prints) shows the figures the build recorded in toy.json."""
    record = json.loads((toy.shipped_dir() / "toy.json").read_text())
    assert record["version"] == toy.VERSION
    console = Console(record=True, width=160)
    res = report(toy.shipped_dir(), console=console)
    for name in toy.MODELS:
        for task in ("arith", "jobs"):
            assert res[task][name] == record["models"][name][task]
    teacher = record["models"]["teacher"]
    assert f"{teacher['arith']['accuracy']:.3f}" in console.export_text()


@pytest.mark.slow
def test_wheel_ships_the_toy_world(tmp_path):
    """A wheel built from the repository carries the toy world, and `slimkit toy report` runs from it
    in a new virtual environment. (Its dependencies come from the test's own environment on
    PYTHONPATH, which does not hold slimkit itself: the editable install is a .pth hook that
    PYTHONPATH entries do not run.)"""
    import shutil
    import subprocess
    import sys
    import sysconfig
    import zipfile
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    src = tmp_path / "src"  # a copy: an in-tree build writes build/ and *.egg-info/ into the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, src / name)
    shutil.copytree(repo / "slimkit", src / "slimkit", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("slimkit-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in toy.MODELS:
        assert f"slimkit/toy/world/{name}/model.safetensors" in names
        assert f"slimkit/toy/world/{name}/tokenizer.json" in names
    assert "slimkit/toy/world/toy.json" in names
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", str(wheel)], check=True)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": sysconfig.get_paths()["purelib"],
           "OMP_NUM_THREADS": "1"}
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import slimkit; print(slimkit.__file__)"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(venv)), where
    out = subprocess.run([str(venv / "bin" / "slimkit"), "toy", "report"], env=env, cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    record = json.loads((toy.shipped_dir() / "toy.json").read_text())
    assert f"{record['models']['teacher']['arith']['accuracy']:.3f}" in out.stdout


def test_sft_task_windows_and_prompt_loss():
    """Tasks interleave by weight within their step windows (a curriculum), and the prompt loss adds
    a language-model loss on the prompt tokens to the answer loss."""
    from slimkit.toy.sft import _next_task, collate, step_loss

    names, weights = ["arith", "jobs", "jobs-short"], {"arith": 1.0, "jobs": 1.0, "jobs-short": 1.0}
    windows = {"jobs-short": (0, 4), "jobs": (4, 12), "arith": (6, 12)}
    phase: dict = {}
    order = [_next_task(names, weights, windows, phase, step, 12) for step in range(12)]
    assert order == ["jobs-short"] * 4 + ["jobs"] * 2 + ["arith", "jobs"] * 3
    tok = toy.toy_tokenizer()
    model = toy.new_model(tok, seed=0, hidden=64, layers=1, heads=2, kv_heads=1, head_dim=32, intermediate=128)
    batch = collate([([5, 6, 7, 8], [9, 10]), ([11, 12], [13])], pad=tok.pad_token_id)
    with torch.no_grad():
        plain = step_loss(model, batch)
        assert torch.allclose(plain, model(**batch).loss)
        assert step_loss(model, batch, 0.5) > plain
        # only tokens 7 and 8 after the marker 6 (row 0), or a token that never follows it: no aux loss
        assert step_loss(model, batch, 0.5, only=(6, [7, 8])) > plain
        assert torch.allclose(step_loss(model, batch, 0.5, only=(6, [5])), plain)
    from slimkit.toy.build import posting_fields

    marker, ids = posting_fields(tok)["jobs"]
    assert tok.decode([marker]) == "Posting:" and len(ids) == 24
