"""The run directory: nothing of an earlier run (or a user's) is lost without --overwrite; --resume
refuses a recipe change that alters training and a checkpoint that does not fit; errors are one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml
from distill_helpers import overrides

from slimkit.compress.distill import load_recipe, train
from slimkit.compress.distill.trainer import Distiller
from slimkit.errors import SlimkitError
from slimkit.recipe import RecipeError

ONE = ("train.steps=2", "train.checkpoint_every=1")


def _cfg(pair, out, *extra):
    return load_recipe(None, overrides(pair, out, *ONE, *extra))


def _run(pair, out, *extra, **kw):
    return train(_cfg(pair, out, *extra), **kw)


def test_existing_run_is_refused_without_resume_or_overwrite(pair, tmp_path):
    out = tmp_path / "run"
    _run(pair, out)
    before = {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()}
    metrics = (out / "metrics.jsonl").read_text()
    with pytest.raises(SlimkitError, match="already holds a distillation run: use --resume .* or --overwrite"):
        _run(pair, out)
    assert {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()} == before
    assert (out / "metrics.jsonl").read_text() == metrics and (out / "student" / "slimkit.json").is_file()


def test_overwrite_starts_over_and_keeps_the_teacher_cache(pair, tmp_path):
    out = tmp_path / "run"
    _run(pair, out, "rollout.source=teacher", "train.steps=3")
    cache = out / "teacher_rollouts.jsonl"
    mtime = cache.stat().st_mtime_ns
    assert [p.name for p in (out / "checkpoints").iterdir()][-1] == "step-00000003.pt"
    _run(pair, out, "rollout.source=teacher", overwrite=True)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000001.pt", "step-00000002.pt"]
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 2]  # two step records and the final eval: nothing of the 3-step run
    assert cache.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_users_directory_is_never_a_run_directory(pair, tmp_path, overwrite):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(SlimkitError, match="is not a slimkit run directory"):
        _run(pair, out, overwrite=overwrite)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_a_users_student_directory_in_the_run_is_refused(pair, tmp_path):
    out = tmp_path / "run"
    _run(pair, out)
    (out / "student" / "slimkit.json").unlink()  # now it is not slimkit's
    with pytest.raises(SlimkitError, match="student exists and was not written by slimkit"):
        _run(pair, out, "train.steps=3", resume=True)


def test_resume_refuses_a_recipe_change_that_alters_training(pair, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(pair, out, "train.steps=4")
    d = Distiller(cfg)
    d.train_step()
    d.save_checkpoint()
    with pytest.raises(SlimkitError, match=r"optim\.lr: 0\.01 -> 0\.02, select\.method: 'all' -> 'entropy_top'"):
        Distiller(_cfg(pair, out, "train.steps=4", "optim.lr=2e-2", "select.method=entropy_top"), resume=True)
    # logging, checkpointing, evaluation and threads do not alter the weights: allowed
    d2 = Distiller(_cfg(pair, out, "train.steps=4", "eval.n=2", "train.log_every=2", "train.keep_checkpoints=3"),
                   resume=True)
    assert d2.step == 1


def test_resume_from_a_checkpoint_that_does_not_fit_is_one_clear_error(pair, tmp_path):
    from slimkit.toy import make_tiny_model_dir

    student = make_tiny_model_dir(tmp_path / "student", hidden=32, layers=1, heads=1, seed=2)
    out = tmp_path / "run"
    _run(pair, out, f"student={student}", "train.steps=3", "train.checkpoint_every=2")
    other = make_tiny_model_dir(tmp_path / "other", hidden=64, layers=1, heads=2, seed=2)
    (student / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    (student / "config.json").write_text((other / "config.json").read_text())
    with pytest.raises(SlimkitError, match="does not fit this run's student") as e:
        _run(pair, out, f"student={student}", "train.steps=3", "train.checkpoint_every=2", resume=True)
    assert "\n" not in str(e.value)
    ckpt = sorted((out / "checkpoints").iterdir())[-1]
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(SlimkitError, match="cannot read checkpoint"):
        _run(pair, out, f"student={student}", "train.steps=3", resume=True)


def test_resume_after_a_torn_last_metrics_line(pair, tmp_path):
    out = tmp_path / "run"
    d = Distiller(_cfg(pair, out, "train.steps=3"))
    for _ in range(2):
        d.log.write(d.train_step())
    d.save_checkpoint()
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.5, "lr"')  # killed mid-write
    res = train(_cfg(pair, out, "train.steps=3"), resume=True)
    assert res["step"] == 3
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 3]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    with pytest.raises(SlimkitError, match="metrics.jsonl:2 is not a JSON record"):
        Distiller(_cfg(pair, out, "train.steps=3"), resume=True)


@pytest.mark.parametrize("device, message", [("gpu", "'gpu' is not a device"), ("cuda:0", "CUDA is not available")])
def test_bad_train_device_is_one_clear_error(pair, tmp_path, device, message):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("CUDA is there")
    with pytest.raises(SlimkitError, match=message):
        Distiller(_cfg(pair, tmp_path / "r", f"train.device={device}"))
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("extra, message", [
    (("rollout.engine=vllm", "rollout.source=dataset"), "rollout.engine=vllm samples the student"),
    (("rollout.source=student", "rollout.cache=x.jsonl"), "rollout.cache holds teacher rollouts"),
    (("rollout.refresh_every=4",), "refresh_every applies to rollout.engine=vllm"),
    (("loss.topk=16",), "loss.topk / loss.topk_cache apply to loss.teacher=topk"),
])
def test_an_option_the_setting_does_not_use_is_refused(pair, tmp_path, extra, message):
    with pytest.raises(RecipeError, match=message):
        _cfg(pair, tmp_path / "r", *extra)


def test_an_lm_head_bias_is_refused(pair, tmp_path):
    from transformers import PhiConfig, PhiForCausalLM

    from slimkit import artifacts
    from slimkit.toy import toy_tokenizer

    tok = toy_tokenizer()
    torch.manual_seed(0)
    phi = PhiForCausalLM(PhiConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=256))
    assert phi.get_output_embeddings().bias is not None
    student = artifacts.save(phi, tok, tmp_path / "phi", stage="test")
    with pytest.raises(SlimkitError, match="lm_head has a bias"):
        Distiller(_cfg(pair, tmp_path / "r", f"student={student}"))


def test_cli_existing_run_is_one_line_and_keeps_the_run(pair, tmp_path):
    from slimkit.recipe import apply_overrides

    out = tmp_path / "run"
    _run(pair, out)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(apply_overrides({}, overrides(pair, out, *ONE))))
    n = len((out / "metrics.jsonl").read_text())
    for args in ([], ["--resume", "--overwrite"]):
        p = subprocess.run([sys.executable, "-m", "slimkit.cli", "distill", str(recipe), *args],
                           capture_output=True, text=True, timeout=300)
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "--resume" in lines[0] and len((out / "metrics.jsonl").read_text()) == n
