"""`slimkit pipeline` end to end on tiny real models (random Qwen3 + the toy tokenizer): a failed gate
stops the run with what failed by how much and leaves the earlier artifacts as they were; a rerun
skips unchanged stages and goes on; a stage whose input has no weights stops at that stage; an
interrupted distillation resumes."""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from slimkit import artifacts
from slimkit.pipeline import PipelineError, pipeline

pytestmark = pytest.mark.slow

EVAL = "eval: {arith_n: 4, jobs_n: 6, max_new_tokens: 8, items: 4, requests: 2}\n"
DISTILL = ("{data: {task: arith+jobs, n: 200}, rollout: {source: dataset}, loss: {kind: forward}, "
           "select: {method: all, log_quadrants: false}, train: {steps: %d, prompts_per_step: 4, micro_batch: 4, "
           "checkpoint_every: %d, live_table: false}, eval: {at_start: false, n: 4, max_new_tokens: 8}}")


def run(recipe: Path, out: Path, *overrides: str) -> tuple[dict, str]:
    buf = io.StringIO()
    record = pipeline(recipe, out=out, overrides=list(overrides), console=Console(file=buf, width=200))
    return record, buf.getvalue()


def test_gate_failure_stops_and_a_rerun_skips_what_is_unchanged(tiny_teacher, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"teacher: {tiny_teacher}\n" + EVAL + "stages:\n"
                      "  prune: {mlp: 64, layers: 2, calib_n: 8, gate: {params: '<= parent'}}\n"
                      f"  recover: {{recipe: {DISTILL % (3, 0)}, gate: {{jobs_auc: '>= parent + 2'}}}}\n"
                      "  serve: {gate: {jobs_auc: '>= parent - 0.001'}}\n")
    out = tmp_path / "run"
    with pytest.raises(PipelineError, match=r"stage recover: gate failed: jobs_auc [\d.]+ is not >= parent \+ 2 = "
                                            r"[\d.]+ \(short by [\d.]+\)\. .*earlier ones \(prune\) are in"):
        run(recipe, out)
    prune_manifest = (out / "prune" / "slimkit.json").read_text()
    assert artifacts.is_model_dir(out / "recover" / "student") and not (out / "serve").exists()
    assert "FAILED jobs_auc" in (out / "report.md").read_text()
    lineage = artifacts.read_manifest(out / "recover" / "student")["pipeline"]
    assert lineage["parent"] == str(out / "prune") and lineage["section"] == "stages.recover"

    record, log = run(recipe, out, "stages.recover.gate={}")
    assert "prune: unchanged since the last run (skipped)" in log and "recover: unchanged" in log
    assert (out / "prune" / "slimkit.json").read_text() == prune_manifest            # left as it was
    assert record["stages"]["serve"]["status"] == "ok"
    served = artifacts.read_manifest(out / "serve")
    assert served["pipeline"]["parent"] == str(out / "recover" / "student")
    assert len(json.loads((out / "serve" / "batch.json").read_text())["items"]) == 8
    for name in ("report.md", "quality_vs_size.png", "throughput_vs_latency.png"):
        assert (out / name).is_file()
    assert "| serve | recover |" in (out / "report.md").read_text()


def test_stage_input_without_weights_stops_at_that_stage(tiny_teacher, tmp_path):
    """The recovery teacher holds config and tokenizer only: the dry run passes (it loads no weights);
    the recover stage stops with one message; the pruned model stays."""
    hollow = tmp_path / "hollow"
    shutil.copytree(tiny_teacher, hollow, ignore=shutil.ignore_patterns("*.safetensors"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"teacher: {tiny_teacher}\n" + EVAL + "stages:\n"
                      "  prune: {mlp: 64, layers: 2, calib_n: 8}\n"
                      f"  recover: {{teacher: {hollow}, recipe: {DISTILL % (3, 0)}}}\n")
    with pytest.raises(PipelineError, match=r"^stage recover: teacher: .*hollow is not a model directory: no "
                                            r"\*\.safetensors weights\. Earlier artifacts \(prune\) are intact"):
        run(recipe, tmp_path / "run")
    assert artifacts.is_model_dir(tmp_path / "run" / "prune")


def test_interrupted_distillation_resumes(tiny_teacher, tiny_student, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"teacher: {tiny_teacher}\nstudent: {tiny_student}\n" + EVAL +
                      f"stages:\n  distill: {{recipe: {DISTILL % (100, 5)}}}\n")
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "slimkit.cli", "pipeline", str(recipe), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list((out / "distill" / "checkpoints").glob("step-*.pt")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "stage distill: stopped at step" in err and "rerun the pipeline to resume" in err
    stopped = int(err.split("stopped at step ")[1].split()[0])
    assert 0 < stopped < 100 and not (out / "distill" / "student").exists()

    record, log = run(recipe, out)
    assert "distill: resuming the interrupted run from step-" in log
    assert record["stages"]["distill"]["status"] == "ok"
    steps = [json.loads(ln)["step"] for ln in (out / "distill" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 100 and artifacts.read_manifest(out / "distill" / "student")["metrics"]["steps"] == 100
