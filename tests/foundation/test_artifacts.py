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
        artifacts.save(model, tok, out, stage="second", overwrite=True)
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
    while time.time() < deadline and not list(tmp_path.glob(".toy.tmp-*")) and proc.poll() is None:
        time.sleep(0.2)
    started = list(tmp_path.glob(".toy.tmp-*"))
    time.sleep(1.0)
    still_running = proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert started and still_running, "the build never began writing, or ended before the signal"
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


def test_a_users_directory_is_never_replaced(tiny, tmp_path):
    """A directory slimkit did not write (no slimkit.json) is refused before any work, with or without
    overwrite, and keeps its files; the message names the path."""
    model, tok = tiny
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(SlimkitError, match="not written by slimkit") as e:
            artifacts.save(model, tok, user, stage="test", overwrite=overwrite)
        assert str(user) in str(e.value) and "\n" not in str(e.value)
    assert [p.name for p in user.iterdir()] == ["notes.txt"] and (user / "notes.txt").read_text() == "keep me"
    a_file = tmp_path / "file"
    a_file.write_text("mine too")
    with pytest.raises(SlimkitError, match="refusing to replace"):
        with artifacts.atomic_dir(a_file, overwrite=True):
            raise AssertionError("the writer must not start")
    assert a_file.read_text() == "mine too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "mine"]  # no temporary left


def test_own_earlier_output_is_replaced_only_when_told(tiny, tmp_path):
    model, tok = tiny
    out = artifacts.save(model, tok, tmp_path / "m", stage="first")
    with pytest.raises(SlimkitError, match="pass --overwrite to replace it") as e:
        artifacts.save(model, tok, out, stage="second")
    assert str(out) in str(e.value)
    with pytest.raises(SlimkitError, match="pass --force"):
        with artifacts.atomic_dir(out, flag="--force"):
            pass
    assert artifacts.read_manifest(out)["stage"] == "first"
    artifacts.save(model, tok, out, stage="second", overwrite=True)
    assert artifacts.read_manifest(out)["stage"] == "second"
    empty = tmp_path / "empty"
    empty.mkdir()
    artifacts.save(model, tok, empty, stage="into-empty")  # an empty directory holds nothing to lose
    assert artifacts.read_manifest(empty)["stage"] == "into-empty"


def test_own_output_rule_is_the_writers_choice(tmp_path):
    """A writer whose output carries no slimkit.json names what marks it (e.g. the toy world's toy.json)."""
    def own(p):
        return (p / "toy.json").is_file()

    root = tmp_path / "world"
    with artifacts.atomic_dir(root, is_own=own) as tmp:
        (tmp / "toy.json").write_text("{}")
    with pytest.raises(SlimkitError, match="pass --force"):
        with artifacts.atomic_dir(root, is_own=own, flag="--force"):
            pass
    with artifacts.atomic_dir(root, is_own=own, overwrite=True) as tmp:
        (tmp / "toy.json").write_text('{"again": 1}')
    assert json.loads((root / "toy.json").read_text()) == {"again": 1}


def test_atomic_write_text_keeps_a_users_file(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("user data")
    with pytest.raises(SlimkitError, match="refusing to replace"):
        artifacts.atomic_write_text(target, "new", overwrite=True)
    assert target.read_text() == "user data"
    own = tmp_path / "own.json"
    artifacts.atomic_write_text(own, '{"task": "x"}')
    with pytest.raises(SlimkitError, match="--overwrite"):
        artifacts.atomic_write_text(own, "2", is_own=lambda p: True)
    artifacts.atomic_write_text(own, "2", overwrite=True, is_own=lambda p: True)
    assert own.read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["own.json", "results.json"]
