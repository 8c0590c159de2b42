import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from slimkit import artifacts
from slimkit.errors import SlimkitError
from slimkit.tasks import format_prompt
from slimkit.tasks.eval import evaluate


def test_save_load_round_trip_same_logits_and_eval(tiny, tmp_path):
    model, tok = tiny
    out = artifacts.save(model, tok, tmp_path / "copy", stage="test", parent=None, metrics={"x": 1})
    model2, tok2 = artifacts.load(out)
    x = tok(format_prompt(tok, "What is 2 + 2?"), return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(x).logits, model2(x).logits)
    assert tok2(format_prompt(tok2, "What is 2 + 2?")).input_ids == x[0].tolist()
    manifest = artifacts.read_manifest(out)
    assert manifest["stage"] == "test" and manifest["metrics"] == {"x": 1} and manifest["hash"]
    a = evaluate(model, tok, "arith", n=5, max_new_tokens=6)
    b = evaluate(model2, tok2, "arith", n=5, max_new_tokens=6)
    for key in ("accuracy", "mean_tokens", "by_level"):
        assert a[key] == b[key]


def test_slimkit_eval_on_saved_dir_matches_in_memory(tiny, tiny_dir, tmp_path):
    model, tok = tiny
    out = tmp_path / "res.json"
    r = subprocess.run([sys.executable, "-m", "slimkit.cli", "eval", str(tiny_dir), "--task", "jobs", "--n", "12",
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads(out.read_text())
    ref = evaluate(model, tok, "jobs", n=12)
    assert got["auc"] == pytest.approx(ref["auc"], abs=1e-9)
    assert got["accuracy"] == ref["accuracy"]
    assert "AUC" in r.stdout


def test_atomic_save_leaves_nothing_on_crash(tiny, tmp_path, monkeypatch):
    model, tok = tiny

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(tok, "save_pretrained", boom)
    with pytest.raises(RuntimeError):
        artifacts.save(model, tok, tmp_path / "m", stage="test")
    assert list(tmp_path.iterdir()) == []


def test_atomic_save_keeps_old_dir_on_crash(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    out = artifacts.save(model, tok, tmp_path / "m", stage="first")
    monkeypatch.setattr(tok, "save_pretrained", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x")))
    with pytest.raises(RuntimeError):
        artifacts.save(model, tok, out, stage="second")
    assert artifacts.read_manifest(out)["stage"] == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


@pytest.mark.parametrize("kind", ["missing", "file", "empty", "garbage", "bad-weights"])
def test_loading_a_non_model_path_is_one_clear_error(tmp_path, kind):
    p = tmp_path / "x"
    if kind == "file":
        p.write_text("hi")
    elif kind == "empty":
        p.mkdir()
    elif kind == "garbage":
        p.mkdir()
        (p / "config.json").write_text('{"model_type": "nonsense-model"}')
        (p / "model.safetensors").write_bytes(b"garbage")
    elif kind == "bad-weights":
        p.mkdir()
        (p / "config.json").write_text(json.dumps({"model_type": "qwen3", "hidden_size": 64, "num_hidden_layers": 1,
                                                   "num_attention_heads": 2, "num_key_value_heads": 1,
                                                   "head_dim": 32, "intermediate_size": 64, "vocab_size": 100}))
        (p / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(SlimkitError) as e:
        artifacts.load(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_killed_toy_build_leaves_no_model_dir(tmp_path):
    """SIGTERM mid-build removes the temporary directory; the target never appears half-built."""
    out = tmp_path / "toy"
    env = dict(os.environ, SLIMKIT_TOY_STEPS_SCALE="0.5")
    proc = subprocess.Popen([sys.executable, "-m", "slimkit.cli", "toy", "build", "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".toy.tmp-*")):
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_sigkilled_writer_leftovers_are_swept(tmp_path):
    """A SIGKILLed writer cannot clean up; its hidden temp dir never loads as a model and the next
    write to the same target removes it (a live writer's temp dir is left alone)."""
    out = tmp_path / "model"
    code = ("import sys, time\nfrom slimkit import artifacts\n"
            "with artifacts.atomic_dir(sys.argv[1]) as tmp:\n"
            "    (tmp / 'config.json').write_text('{}')\n    print(tmp, flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    stale = proc.stdout.readline().strip()
    proc.kill()
    proc.wait(timeout=30)
    assert os.path.isdir(stale) and not out.exists()
    with pytest.raises(SlimkitError):
        artifacts.load(stale)
    live = tmp_path / f".model.tmp-{os.getpid()}-keep"
    live.mkdir()
    with artifacts.atomic_dir(out) as tmp:
        (tmp / "x").write_text("1")
    assert not os.path.exists(stale) and live.is_dir() and (out / "x").read_text() == "1"
