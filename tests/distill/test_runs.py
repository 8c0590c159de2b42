"""End-to-end runs in subprocesses: resume after SIGTERM / SIGKILL, and 2-process DDP (gloo, CPU)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from distill_helpers import overrides
from safetensors.torch import load_file

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _cmd(pair, out: Path, *extra: str, resume: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "slimkit.cli", "distill", str(_recipe(pair, out, *extra))]
    return cmd + (["--resume"] if resume else [])


def _recipe(pair, out: Path, *extra: str) -> Path:
    import yaml

    from slimkit.recipe import apply_overrides

    data = apply_overrides({}, overrides(pair, out, *extra))
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _final(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "student" / "model.safetensors"))


def _losses(out: Path) -> dict[int, float]:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


def _wait_for(pred, proc, timeout=120.0):
    t0 = time.time()
    while not pred():
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.time() - t0 < timeout
        time.sleep(0.01)


RUN = ("train.steps=80", "train.checkpoint_every=5", "rollout.source=student", "rollout.temperature=1.0",
       "optim.lr=3e-3", "optim.warmup_steps=5", "eval.n=2")


@pytest.fixture(scope="module")
def reference(pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    subprocess.run(_cmd(pair, out, *RUN), env=ENV, check=True, capture_output=True)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_resume_after_kill_gives_identical_weights(pair, tmp_path, reference, sig):
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(pair, out, *RUN), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        if sig == signal.SIGTERM:
            _wait_for(lambda: len(_losses(out)) >= 12 if (out / "metrics.jsonl").exists() else False, proc)
        else:
            _wait_for(lambda: (out / "checkpoints" / "step-00000010.pt").exists(), proc)
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    if sig == signal.SIGTERM:
        assert proc.returncode == 143, proc.stderr.read().decode()[-2000:]
    assert not (out / "student").exists()
    done = max(_losses(out))
    assert done < 80
    subprocess.run(_cmd(pair, out, *RUN, resume=True), env=ENV, check=True, capture_output=True)
    ref, got = _final(reference), _final(out)
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    assert _losses(out) == _losses(reference)  # metrics log continues seamlessly, no duplicates


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(pair, tmp_path):
    run = ("train.steps=3", "train.micro_batch=2", "train.prompts_per_step=4", "optim.lr=1e-3",
           "train.device=cpu")
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(_cmd(pair, one, *run), env=ENV, check=True, capture_output=True)
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           *_cmd(pair, two, *run)[1:]]
    p = subprocess.run(ddp, env=ENV, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    worlds = {json.loads(x).get("world") for x in (two / "metrics.jsonl").read_text().splitlines()}
    assert worlds == {2, None}  # step records say 2 ranks; eval records carry no world
    l1, l2 = _losses(one), _losses(two)
    assert l1.keys() == l2.keys() == {1, 2, 3}
    for s in l1:
        assert l2[s] == pytest.approx(l1[s], rel=1e-5)
    w1, w2 = _final(one), _final(two)
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_two_process_fsdp_matches_one_process_and_resumes(pair, tmp_path):
    """FSDP2 (fully_shard) on 2 CPU processes (gloo): the loss curve and weights of one process on the same
    global batch; a checkpoint of the sharded run resumes under FSDP to the same weights; the final
    student is one ordinary HF directory."""
    import shutil

    run = ("train.steps=3", "train.micro_batch=2", "train.prompts_per_step=4", "optim.lr=1e-3",
           "train.device=cpu", "train.checkpoint_every=1", "train.keep_checkpoints=5", "eval.n=4")
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(_cmd(pair, one, *run), env=ENV, check=True, capture_output=True)

    def fsdp(out, resume=False):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               *_cmd(pair, out, *run, "train.parallel=fsdp", resume=resume)[1:]]
        p = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr[-3000:]

    fsdp(two)
    l1, l2 = _losses(one), _losses(two)
    assert l1.keys() == l2.keys() == {1, 2, 3}
    for s in l1:
        assert l2[s] == pytest.approx(l1[s], rel=1e-5)
    w1, w2 = _final(one), _final(two)
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=1e-5)
    again = tmp_path / "again"
    shutil.copytree(two, again)
    shutil.rmtree(again / "student")
    (again / "checkpoints" / "step-00000003.pt").unlink()
    fsdp(again, resume=True)
    w3 = _final(again)
    for k in w2:
        torch.testing.assert_close(w3[k], w2[k], rtol=0, atol=1e-7)
