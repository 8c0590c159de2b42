"""`slimkit prune` end to end on a tiny Qwen3 parent: a standard HF directory with its manifest, the
user errors (one line, nothing written), and recovery by the distillation trainer."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from slimkit import cli


def run(monkeypatch, capsys, *args: str) -> tuple[int, list[str]]:
    monkeypatch.setattr(sys, "argv", ["slimkit", *args])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err
    return e.value.code, [ln for ln in err.splitlines() if ln.strip()]


def test_prune_writes_a_standard_model_dir(parent, tmp_path, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "pruned"
    code, _ = run(monkeypatch, capsys, "prune", str(parent), "--out", str(out), "--target-params", "0.6",
                  "--axes", "width,depth", "--calib-n", "8")
    assert code == 0
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "slimkit.json"} <= {
        p.name for p in out.iterdir()}
    model = AutoModelForCausalLM.from_pretrained(out)           # no custom code
    AutoTokenizer.from_pretrained(out)
    manifest = json.loads((out / "slimkit.json").read_text())
    assert manifest["stage"] == "prune" and manifest["parent"]["path"] == str(parent.absolute())
    p = manifest["pruning"]
    assert p["importance"]["method"] == "activation" and p["importance"]["calibration"]["tasks"] == ["arith", "jobs"]
    assert p["params"]["pruned"] == sum(x.numel() for x in model.parameters())
    assert abs(p["params"]["kept_fraction"] - 0.6) < 0.05
    assert len(p["removed"]["layers"]) == 3 - model.config.num_hidden_layers >= 1
    assert model.config.head_dim == 32 and len(model.config.layer_types) == model.config.num_hidden_layers
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[5, 6, 7]])).logits).all()


def test_random_importance_and_explicit_widths(parent, tmp_path, monkeypatch, capsys):
    out = tmp_path / "random"
    code, _ = run(monkeypatch, capsys, "prune", str(parent), "--out", str(out), "--hidden", "96", "--heads", "2",
                  "--mlp", "160", "--importance", "random", "--seed", "1")
    assert code == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"],
            cfg["num_hidden_layers"]) == (96, 2, 1, 160, 3)
    assert json.loads((out / "slimkit.json").read_text())["pruning"]["importance"]["method"] == "random"


def test_user_errors_are_one_line_and_leave_nothing(parent, tmp_path, monkeypatch, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, bos_token_id=0,
                               eos_token_id=0)).save_pretrained(gpt2)
    capsys.readouterr()
    out = tmp_path / "never"
    cases = [
        (["--target-params", "0"], "strictly between 0 and 1"),
        (["--target-params", "1"], "strictly between 0 and 1"),
        (["--target-params", "1.5"], "strictly between 0 and 1"),
        (["--layers", "0"], "removes all 3 layers"),
        (["--layers", "5"], "more than the parent's 3"),
        (["--heads", "3"], "not a whole number of KV groups"),
        (["--kv-heads", "4"], "more than the parent's 2"),
        (["--axes", "height", "--target-params", "0.5"], "choose from width, depth"),
        ([], "nothing to prune"),
        (["--target-params", "0.5", "--recover", str(tmp_path / "missing.yaml")], "does not exist"),
    ]
    for extra, message in cases:
        code, lines = run(monkeypatch, capsys, "prune", str(parent), "--out", str(out), *extra)
        assert code != 0 and len(lines) == 1 and message in lines[0], (extra, lines)
        assert not out.exists() and not list(tmp_path.glob(".never*")), extra
    code, lines = run(monkeypatch, capsys, "prune", str(gpt2), "--out", str(out), "--target-params", "0.5")
    assert code != 0 and len(lines) == 1 and "'gpt2'" in lines[0] and "llama, mistral, qwen2, qwen3" in lines[0]
    assert not out.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    code, lines = run(monkeypatch, capsys, "prune", str(parent), "--out", str(mine), "--target-params", "0.5")
    assert code != 0 and "not written by slimkit" in lines[0] and (mine / "notes.txt").read_text() == "keep"


@pytest.mark.slow
def test_prune_and_recover_by_distillation(parent, tmp_path, monkeypatch, capsys):
    from slimkit import artifacts

    out, run_dir = tmp_path / "recovered", tmp_path / "run"
    sets = [f"out={run_dir}", "data.n=16", "train.steps=2", "train.prompts_per_step=4", "train.micro_batch=4",
            "train.live_table=false", "eval.n=2", "eval.max_new_tokens=4"]
    code, lines = run(monkeypatch, capsys, "prune", str(parent), "--out", str(out), "--target-params", "0.6",
                      "--calib-n", "4", "--recover", "recipes/prune_recover_toy.yaml",
                      *[a for s in sets for a in ("--set", s)])
    assert code == 0, lines
    manifest = artifacts.read_manifest(out)
    assert manifest["stage"] == "prune" and manifest["recovery"]["metrics"]["steps"] == 2
    recipe = artifacts.read_manifest(run_dir)["recipe"]
    assert recipe["teacher"] == str(parent) and recipe["data"]["task"] == "arith+jobs"
    student, _ = artifacts.load(run_dir / "student", with_tokenizer=False)
    model, _ = artifacts.load(out, with_tokenizer=False)
    for a, b in zip(model.state_dict().values(), student.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert not list(tmp_path.glob(".recovered*"))           # the scratch copy of the pruned model is gone
