import json

import torch
from rich.console import Console

from slimkit import artifacts, toy
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


def test_tiny_toy_build_end_to_end(tmp_path, capsys):
    root = tmp_path / "toy"
    record = build(root, scale=0.01, eval_n={"arith": 6, "jobs": 8}, console=Console(quiet=True))
    assert toy.is_built(root)
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
