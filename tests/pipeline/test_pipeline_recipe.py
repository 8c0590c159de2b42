"""`slimkit pipeline --dry-run`: the shipped recipes validate (the real-model ones against model
directories of their shapes that hold no weights); a typo, a stage out of order, a bad stage option,
a missing input and a missing environment each end in one line naming the problem, before any work."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from slimkit import cli
from slimkit.compress import quantize as q
from slimkit.pipeline import PipelineError, pipeline

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, list[str]]:
    monkeypatch.setattr(sys, "argv", ["slimkit", "pipeline", *args])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err
    return e.value.code, [ln for ln in err.splitlines() if ln.strip()]


def test_toy_recipe_dry_run(tmp_path):
    plan = pipeline(RECIPES / "toy.yaml", out=tmp_path / "run", dry_run=True)["plan"]
    assert [line.split(":")[0] for line in plan] == ["distill", "prune", "recover", "quantize", "context", "serve"]
    assert not (tmp_path / "run").exists()                       # a dry run writes nothing


def test_qwen3_8b_to_1_7b_dry_run_loads_no_weights(shapes_only, tmp_path):
    plan = pipeline(RECIPES / "qwen3-8b-to-1.7b.yaml", out=tmp_path / "run", dry_run=True,
                    overrides=[f"teacher={shapes_only / 'Qwen3-8B'}", f"student={shapes_only / 'Qwen3-1.7B'}"])["plan"]
    assert plan[0].startswith("distill: reads student; 2000 steps")
    assert plan[-1] == "serve: reads distill; engine torch"


@pytest.mark.skipif(not all((q.ROOT / env / "bin/python").exists() for env in (".venv-quant", ".venv-vllm")),
                    reason="job-scorer quantizes in .venv-quant and serves in .venv-vllm (make envs)")
def test_job_scorer_dry_run_loads_no_weights(shapes_only, tmp_path):
    plan = pipeline(RECIPES / "job-scorer.yaml", out=tmp_path / "run", dry_run=True,
                    overrides=[f"teacher={shapes_only / 'qwen3-0.6b-jobs'}"])["plan"]
    # the parameter count comes from the config, built on the meta device
    assert plan[0] == "prune: reads teacher; to 60% of 596.0M parameters"
    assert [line.split(":")[0] for line in plan] == ["prune", "recover", "quantize", "context", "serve"]


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


BASE = "teacher: toy:teacher\nstudent: toy:student\n"


@pytest.mark.parametrize("body, message", [
    ("stagse: {}", "unknown key 'stagse' (did you mean 'stages'?)"),
    ("stages: {prun: {target_params: 0.5}}", "unknown key 'stages.prun' (did you mean 'prune'?)"),
    ("stages: {prune: {target_param: 0.5}}", "unknown key 'stages.prune.target_param' (did you mean 'target_params'?)"),
    ("stages: {distill: {recipe: {train: {step: 5}}}}",
     "unknown key 'stages.distill.recipe.train.step' (did you mean 'steps'?)"),
    ("stages: {quantize: {scheme: onnx-int8}, prune: {target_params: 0.5}}", "stages run in the order"),
    ("stages: {recover: {}}", "add a prune stage before it"),
    ("stages: {prune: {target_params: 1.5}}", "must lie strictly between 0 and 1"),
    ("stages: {prune: {target_params: 0.5, gate: {arith_accuracy: '>= parent'}}}",
     "unknown metric 'arith_accuracy' (did you mean 'arith_acc'?)"),
    ("stages: {prune: {target_params: 0.5, gate: {arith_acc: '>= parnet'}}}", "'parnet' is not allowed in a gate"),
    ("stages: {quantize: {scheme: int3}}", "unknown scheme 'int3'"),
    ("stages: {distill: {recipe: {loss: {kind: sideways}}}}", "loss.kind"),
    ("stages: {context: {rate: 2.0}, serve: {}}", "rate must be in (0, 1]"),
    ("stages: {context: {compressor: head, rate: 0.5}, serve: {}}", "baseline that `slimkit serve` does not load"),
    ("stages: {context: {rate: 0.5}}", "add a serve stage after it"),
    ("stages: {distill: {recipe: {data: {task: null, path: /nowhere.jsonl}}}}", "data.path /nowhere.jsonl does not exist"),
])
def test_recipe_errors_are_one_line(monkeypatch, capsys, tmp_path, body, message):
    code, lines = run_cli(monkeypatch, capsys, str(write(tmp_path, BASE + body)), "--out", str(tmp_path / "run"),
                          "--dry-run")
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_missing_input_is_named(monkeypatch, capsys, tmp_path):
    recipe = write(tmp_path, f"teacher: {tmp_path / 'nowhere'}\nstages: {{prune: {{target_params: 0.5}}}}")
    code, lines = run_cli(monkeypatch, capsys, str(recipe), "--out", str(tmp_path / "run"))
    assert code == 2 and len(lines) == 1 and "teacher:" in lines[0] and "nowhere does not exist" in lines[0], lines
    recipe = write(tmp_path, "teacher: toy:teacher\nstages: {distill: {}}")
    with pytest.raises(PipelineError, match="stage distill needs a student"):
        pipeline(recipe, out=tmp_path / "run", dry_run=True)


def test_missing_environment_names_the_make_target(monkeypatch, capsys, tmp_path):
    """Every side environment is missing (slimkit looks for them beside the package): the toy recipe's
    quantize stage needs .venv-onnx; nothing is written."""
    monkeypatch.setattr(q, "ROOT", tmp_path / "fresh-clone")
    code, lines = run_cli(monkeypatch, capsys, str(RECIPES / "toy.yaml"), "--out", str(tmp_path / "run"))
    assert code == 2 and len(lines) == 1, lines
    assert ("stage quantize (scheme onnx-int8) runs in .venv-onnx, which is not installed: create it with "
            "`make .venv-onnx/.installed`") in lines[0]
    assert not (tmp_path / "run").exists()


def test_refuses_a_users_directory(monkeypatch, capsys, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    code, lines = run_cli(monkeypatch, capsys, str(RECIPES / "toy.yaml"), "--out", str(tmp_path / "mine"), "--dry-run")
    assert code == 2 and "is not a pipeline run directory" in lines[0]
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
