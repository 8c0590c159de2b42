"""Distillation methods on the tiny pair: concise self-distillation (teacher: self), PACED pass-rate
weighting, and staged schedules (stages:, with checkpoints and resume at stage boundaries)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from distill_helpers import overrides

from slimkit.compress.distill import load_recipe
from slimkit.compress.distill import weighting as wt
from slimkit.compress.distill.config import WeightingConfig
from slimkit.compress.distill.rollouts import Rollout
from slimkit.compress.distill.trainer import Distiller
from slimkit.errors import SlimkitError
from slimkit.recipe import RecipeError

SELF = ("teacher=self", "rollout.source=student")


def _grads(d: Distiller) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in d.student.named_parameters() if p.grad is not None}


# ---------------------------------------------------------------- concise self-distillation (OPSDC)
def test_self_teacher_differs_from_the_student_by_its_instruction_only(pair, tmp_path):
    plain = Distiller(load_recipe(None, overrides(pair, tmp_path / "plain", *SELF, "teacher_instruction=")))
    assert plain.train_step()["loss"] == 0.0  # the frozen copy on the same prompt: no divergence at all
    d = Distiller(load_recipe(None, overrides(pair, tmp_path / "concise", *SELF)))
    assert d.cfg.instruction == "Be concise."
    ex, ids = d.examples[0], d.teacher_prompt_ids[0]
    assert d.tok.decode(ids).count("Be concise.") == ex.prompt.count("Be concise.") + 1
    initial = {k: v.clone() for k, v in d.student.state_dict().items()}
    assert d.train_step()["loss"] > 0
    d.train_step()
    for k, v in d.teacher.state_dict().items():  # frozen: the student's initial weights, not its current ones
        assert torch.equal(v, initial[k]), k
    assert any(not torch.equal(v, initial[k]) for k, v in d.student.state_dict().items())


def test_live_self_teacher_follows_the_student(pair, tmp_path):
    d = Distiller(load_recipe(None, overrides(pair, tmp_path / "live", *SELF, "self_teacher=live")))
    assert d.teacher is d.student
    d.train_step()
    assert all(p.grad is None or p.grad.abs().sum() > 0 for p in d.student.parameters())
    first = d.teacher.get_output_embeddings().weight.detach().clone()
    d.train_step()
    assert not torch.equal(first, d.teacher.get_output_embeddings().weight)  # it moved with the student


def test_every_eval_logs_tokens_per_answer(pair, tmp_path):
    out = tmp_path / "eval"
    Distiller(load_recipe(None, overrides(pair, out, *SELF, "eval.at_start=true", "eval.every=2"))).run()
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "eval_acc" in x]
    assert [e["step"] for e in evals] == [0, 2, 3]
    for e in evals:
        assert 0 < e["eval_tokens"] <= 8 and "eval_acc_style_verbose" in e and "eval_tokens_level_1" in e


@pytest.mark.parametrize("extra, message", [
    (("self_teacher=frozen",), "self_teacher applies to teacher: self only"),
    (("teacher=self", "rollout.source=teacher"), "teacher_instruction conditions the live teacher"),
    (("teacher=self", "rollout.source=dataset", "loss.teacher=topk"), "teacher_instruction conditions"),
    (("weighting.method=paced", "weighting.alpha=-1"), "weighting.alpha: Input should be greater than or equal to 0"),
    (("weighting.method=paced", "rollout.source=student", "weighting.beta=-0.5"), "weighting.beta"),
    (("weighting.method=paced",), "rollout.source=student and rollout.samples >= 2"),
    (("stages=[{steps: 1}, {steps: 2, loss: {kind: bogus}}]",), "stages[1]: loss.kind"),
    (("stages=[{steps: 3, rollout: {sorce: teacher}}]",), "stages[0]: rollout.sorce: Extra inputs"),
    (("stages=[{name: warm, steps: 3, loss: {teacher: topk}, rollout: {source: student}}]",),
     "stages[0] (warm): loss.teacher=topk caches the teacher on fixed sequences"),
    (("stages=[{steps: 0}]",), "steps: Input should be greater than or equal to 1"),
    (("stages=[{steps: 3, epochs: 3}]",), "unknown key 'stages.0.epochs'"),
    (("stages=[{steps: 2}, {steps: 2}]",), "train.steps=3 but the stages add up to 4 steps"),
])
def test_a_bad_method_setting_is_one_clear_error(pair, tmp_path, extra, message):
    with pytest.raises(RecipeError) as e:
        load_recipe(None, overrides(pair, tmp_path / "r", *extra))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_self_teacher_needs_a_student_model_dir(tmp_path):
    cfg = load_recipe(None, ["teacher=self", f"student={tmp_path / 'missing'}", f"out={tmp_path / 'r'}"])
    with pytest.raises(SlimkitError, match="student: "):
        Distiller(cfg)


@pytest.mark.parametrize("broken, message", [
    # more tokens than the model's lm_head rows: it passed unchecked and failed in the first step
    ("extra_tokens", r"its tokenizer has \d+ tokens but its lm_head only \d+ rows"),
    ("unloadable", "cannot load the tokenizer of"),
])
def test_self_teacher_with_a_tokenizer_that_does_not_fit_is_one_clear_error(pair, tmp_path, broken, message):
    from slimkit import artifacts

    student = tmp_path / "student"
    shutil.copytree(pair[1], student)
    if broken == "extra_tokens":
        tok = artifacts.load_tokenizer(student)
        tok.add_tokens([f"<extra_{i}>" for i in range(len(tok))])
        tok.save_pretrained(student)
    else:
        (student / "tokenizer.json").write_text("{}")
    cfg = load_recipe(None, overrides(pair, tmp_path / "r", *SELF, f"student={student}"))
    with pytest.raises(SlimkitError, match=message) as e:
        Distiller(cfg)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "r" / "checkpoints").exists()


# ---------------------------------------------------------------- PACED
def _rollouts(passes: list[list[bool]]) -> tuple[list[Rollout], dict[tuple[int, int], bool]]:
    rs, ok = [], {}
    for ex, group in enumerate(passes):
        for j, good in enumerate(group):
            rs.append(Rollout([1] * 3, [ex, j] + [0] * (j + 1), ex))
            ok[(ex, j)] = good
    return rs, ok


def test_paced_weights_drop_solved_and_unsolved_prompts_and_normalise():
    rs, ok = _rollouts([[True] * 4, [True, False, False, False], [True, True, True, False], [False] * 4])
    kept, stats = wt.weigh(WeightingConfig(method="paced", alpha=1, beta=1), rs,
                           lambda ex, ids: ok[(ids[0], ids[1])], lambda v: v, keep_one=False)
    assert {r.example for r in kept} == {1, 2}  # p = 1 and p = 0 carry no signal: dropped before the teacher
    w = {r.example: r.weight for r in kept}
    raw = 0.25 * 0.75  # both prompts have p(1-p) = 3/16; normalised to mean 1 over the step's 4 prompts
    assert w[1] == w[2] == pytest.approx(raw / (2 * raw / 4))
    assert stats["pass_rate"] == pytest.approx((1 + 0.25 + 0.75 + 0) / 4)
    assert stats["prompts_dropped"] == 0.5
    tokens = [len(r.prompt_ids) + len(r.completion_ids) for r in rs]
    assert stats["teacher_saved_frac"] == pytest.approx(1 - sum(tokens[4:12]) / sum(tokens))
    kept, _ = wt.weigh(WeightingConfig(method="paced", alpha=2, beta=0), rs,
                       lambda ex, ids: ok[(ids[0], ids[1])], lambda v: v, keep_one=False)
    w = {r.example: r.weight for r in kept}
    assert w[0] / w[2] == pytest.approx(1 / 0.75**2) and 3 not in w
    nothing, _ = wt.weigh(WeightingConfig(method="paced"), rs[:4], lambda *_: True, lambda v: v, keep_one=True)
    assert len(nothing) == 1 and nothing[0].weight == 0.0  # a DDP rank still joins the all-reduce


def _paced_step(pair, out, micro: int, *extra):
    cfg = load_recipe(None, overrides(pair, out, "rollout.source=student", "rollout.samples=3",
                                      "weighting.method=paced", f"train.micro_batch={micro}",
                                      "optim.grad_clip=null", *extra))
    d = Distiller(cfg)
    # The tiny random student never solves arith, so its verifier would give every prompt p = 0; a rule on
    # the completion's ids stands in for it here (the real verifier: the PACED row of benchmarks/distill.py).
    d._verify = lambda ex, ids: sum(ids) % 2 == 0
    rec = d.train_step()
    return rec, _grads(d)


def test_paced_update_is_exact_under_gradient_accumulation(pair, tmp_path):
    weighted = ("weighting.alpha=2", "weighting.beta=1")
    (big, g_big), (small, g_small) = (_paced_step(pair, tmp_path / f"mb{m}", m, *weighted) for m in (12, 1))
    assert 0 < big["prompts_dropped"] < 1 and 0 < big["teacher_saved_frac"] < 1
    assert big["loss"] == pytest.approx(small["loss"], rel=1e-5)
    for k in g_big:
        torch.testing.assert_close(g_small[k], g_big[k], rtol=1e-4, atol=1e-7)
    _, g_flat = _paced_step(pair, tmp_path / "flat", 12, "weighting.alpha=0", "weighting.beta=0")
    assert any(not torch.allclose(g_flat[k], g_big[k], rtol=1e-3, atol=1e-6) for k in g_big)  # weights matter


# ---------------------------------------------------------------- stages
STAGES = ("stages=[{name: kd, steps: 2, rollout: {source: dataset}, loss: {kind: forward}}, "
          "{name: opd, steps: 2, lr: 0.002, rollout: {source: student}, loss: {kind: reverse}}]",
          "train.steps=4", "train.checkpoint_every=0", "train.keep_checkpoints=5", "optim.warmup_steps=0", "optim.min_lr_ratio=1.0")


def test_stages_run_back_to_back_with_a_checkpoint_at_each_boundary(pair, tmp_path):
    out = tmp_path / "staged"
    cfg = load_recipe(None, overrides(pair, out, *STAGES))
    assert cfg.train.steps == 4
    Distiller(cfg).run()
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "loss" in x]
    assert [(r["stage"], r["lr"]) for r in recs] == [(0, 1e-2), (0, 1e-2), (1, 2e-3), (1, 2e-3)]
    assert [r["completion_len"] == 8 for r in recs[2:]]  # stage 1 samples the student (8 new tokens)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002.pt", "step-00000004.pt"]
    # --resume from the boundary lands in stage 1 and ends where the uninterrupted run ended
    again = tmp_path / "again"
    shutil.copytree(out, again)
    (again / "checkpoints" / "step-00000004.pt").unlink()
    shutil.rmtree(again / "student")
    d = Distiller(load_recipe(None, overrides(pair, again, *STAGES)), resume=True)
    assert (d.step, d.stage, d.cfg.rollout.source) == (2, 1, "student")
    d.run()
    from safetensors.torch import load_file

    a, b = (load_file(str(p / "student" / "model.safetensors")) for p in (out, again))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_equal_weights_give_the_unweighted_update(pair, tmp_path):
    """The weighted loss path (per-token losses times weights, over the summed weights) against the fused
    unweighted one: equal weights give the same step."""
    import dataclasses

    def step(out, weight):
        d = Distiller(load_recipe(None, overrides(pair, out, "optim.grad_clip=null")))
        source = d.source

        class Weighted:
            def get(self, idx, **kw):
                return [dataclasses.replace(r, weight=weight) for r in source.get(idx, **kw)]

        d.source = Weighted()
        return d.train_step()["loss"], _grads(d)

    (l1, g1), (l2, g2) = step(tmp_path / "one", 1.0), step(tmp_path / "w", 0.3)
    assert l2 == pytest.approx(l1, rel=1e-6)
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], rtol=1e-5, atol=1e-8)
