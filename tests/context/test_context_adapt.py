"""Compression-aware adaptation of a scorer (`slimkit compress-context adapt`), on a real tiny model."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from slimkit import artifacts, cli
from slimkit.compress import context
from slimkit.compress.context.adapt import adapt_scorer, fit, make_pairs, rate_mix, teacher_targets
from slimkit.tasks import format_prompt
from slimkit.tasks.eval import label_token_ids
from slimkit.tasks.jobs import TEMPLATE


def _kl(model, tok, prompts, targets, ids) -> float:
    lp = teacher_targets(model, tok, prompts, ids)
    q = torch.log_softmax(targets, -1)
    return float((q.exp() * (q - torch.log_softmax(lp, -1))).sum(-1).mean())


def test_fit_moves_the_compressed_reading_toward_the_targets(tiny_dir, postings):
    """The student reading compressed prompts ends much closer (KL on the label tokens) to the targets
    that the full prompts were given (here: the items' own labels, as a confident teacher gives them)."""
    from slimkit.tasks import get_task

    model, tok = artifacts.load(tiny_dir)
    ids = label_token_ids(tok)
    comp = context.load("head", tokenizer=tok)
    exs = get_task("jobs").split("test", 16)
    items = [(ex.meta["query"], ex.meta["posting"]) for ex in exs]
    pairs = make_pairs(comp, items, [0.25], template=TEMPLATE, format_prompt=lambda p: format_prompt(tok, p))
    assert all(len(s) < len(f) for f, s, _ in pairs)
    label = {f: ex.meta["label"] for f, ex in zip(sorted(f for f, _, _ in pairs), sorted(
        exs, key=lambda ex: format_prompt(tok, TEMPLATE.format(query=ex.meta["query"], item=ex.meta["posting"]))),
        strict=True)}
    targets = torch.tensor([[0.95, 0.05] if label[f] else [0.05, 0.95] for f, _, _ in pairs]).log()
    short = [s for _, s, _ in pairs]
    before = _kl(model, tok, short, targets, ids)
    losses = fit(model, tok, short, targets, ids, steps=20, batch_size=16, lr=1e-2, warmup=2)
    model.eval()
    after = _kl(model, tok, short, targets, ids)
    assert len(losses) == 20 and after < 0.5 * before, (before, after)


def test_adapt_writes_an_ordinary_model_dir_with_lineage(tiny_dir, classifier_dir, tmp_path):
    out = tmp_path / "adapted"
    metrics = adapt_scorer(str(tiny_dir), out, compressor=str(classifier_dir), rate=0.3, n=8, steps=2,
                           batch_size=4, n_check=8, progress=False)
    manifest = json.loads((out / "slimkit.json").read_text())
    assert manifest["stage"] == "context-adapt" and manifest["parent"]["path"] == str(tiny_dir)
    assert manifest["recipe"]["rates"] == [1.0, 0.5, 0.3, 0.25, 0.1]
    assert manifest["recipe"]["compressor"] == str(classifier_dir)
    assert {"auc_before@1", "auc_before@0.3", "auc_after@1", "auc_after@0.3"} <= set(metrics)
    model, tok = artifacts.load(out)                   # loads as any causal LM
    assert model.config.architectures == ["Qwen3ForCausalLM"]
    # Nothing of the temporary write is left beside it; a second run does not replace it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapted"]
    with pytest.raises(artifacts.ArtifactError, match="earlier slimkit output"):
        adapt_scorer(str(tiny_dir), out, compressor="head", rate=0.3, n=4, steps=1, n_check=0, progress=False)


@pytest.mark.parametrize("rate, rates, message", [(0.0, None, "rate must be in"), (0.5, [1.5], "rate must be in")])
def test_rates_outside_0_1_are_refused(rate, rates, message):
    with pytest.raises(context.ContextError, match=message):
        rate_mix(rate, rates)


def test_cli_errors_are_one_line(tiny_dir, tmp_path, monkeypatch, capsys):
    for args, message in ((["--rate", "2"], "rate must be in (0, 1]"),
                          (["--rate", "0.25", "--rates", "0"], "rate must be in (0, 1]")):
        monkeypatch.setattr(sys, "argv", ["slimkit", "compress-context", "adapt", str(tiny_dir), "--compressor",
                                          "head", "--out", str(tmp_path / "x"), *args])
        with pytest.raises(SystemExit) as e:
            cli.main()
        code, err = e.value.code, [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "x").exists()
