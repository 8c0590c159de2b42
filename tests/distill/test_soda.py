"""SODA: the cached student snapshot and reference log-probs, the DPO (+ mix) gradient against a
plain-torch implementation on full logits, and a few steps that widen the reward margin."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from distill_helpers import overrides

from slimkit.compress.distill import load_recipe
from slimkit.compress.distill.rollouts import collate
from slimkit.compress.distill.trainer import Distiller
from slimkit.errors import SlimkitError
from slimkit.recipe import RecipeError

SODA = ("rollout.source=teacher", "soda.beta=0.5", "soda.temperature=1.0")


def _distiller(pair, out, *extra, **kw):
    return Distiller(load_recipe(None, overrides(pair, out, *SODA, *extra)), **kw)


def _logits_logprob(model, batch):
    """Per-sequence log-probs of the supervised tokens from full logits (the plain-torch oracle)."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    lp = torch.log_softmax(logits.double(), -1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    return (lp * batch.target_mask).sum(1), lp, logits


def test_snapshot_and_reference_are_cached_reused_and_stale_ones_refused(pair, tmp_path):
    out = tmp_path / "run"
    d = _distiller(pair, out)
    snap, ref = out / "student_snapshot.jsonl", out / "student_snapshot.reference.json"
    head = json.loads(snap.read_text().splitlines()[0])
    assert head["prompts"] == 32 and len(d.soda.pairs) == 32
    stamps = (snap.stat().st_mtime_ns, ref.stat().st_mtime_ns)
    again = _distiller(pair, out, overwrite=True)
    assert (snap.stat().st_mtime_ns, ref.stat().st_mtime_ns) == stamps  # reused, not made again
    assert [p[0].rejected.completion_ids for p in again.soda.pairs] == [p[0].rejected.completion_ids
                                                                        for p in d.soda.pairs]
    # the reference is the starting student's sequence log-prob, as full logits give it
    p = d.soda.pairs[0][0]
    batch = collate([p.chosen, p.rejected], d.pad_id)
    with torch.no_grad():
        want = _logits_logprob(d.student, batch)[0]
    assert [p.ref_chosen, p.ref_rejected] == pytest.approx(want.tolist(), rel=1e-5)
    with pytest.raises(SlimkitError, match="student rollout cache .* was made for another student, data or sampling"):
        _distiller(pair, out, "soda.temperature=0.5", overwrite=True)
    data = json.loads(ref.read_text())
    ref.write_text(json.dumps({**data, "fingerprint": "0" * 16}))
    with pytest.raises(SlimkitError, match="SODA reference cache .* was made for another student"):
        _distiller(pair, out, overwrite=True)


@pytest.mark.parametrize("mix, contrast, mix_on", [("forward", "sequence", "chosen"), ("sft", "sequence", "chosen"),
                                                    ("forward", "first_divergence", "chosen"),
                                                    ("forward", "sequence", "both")])
def test_gradient_equals_dpo_on_full_logits(pair, tmp_path, mix, contrast, mix_on):
    d = _distiller(pair, tmp_path / "r", f"soda.mix={mix}", "soda.mix_weight=0.7", "train.fuse_weight_grad=false",
                   "train.sparse_embedding_grad=false", f"soda.contrast={contrast}", f"soda.mix_on={mix_on}")
    differ = [i for i, (x,) in enumerate(d.soda.pairs) if x.chosen.completion_ids != x.rejected.completion_ids]
    d.soda.pairs[differ[1]][0].contrast = False  # as soda.rejected=wrong leaves a pair whose student response is correct
    part = d.soda.get(differ[:3])
    with torch.no_grad():  # move the student off the reference, so the DPO margin is not 0
        for q in d.student.parameters():
            q.add_(torch.randn_like(q) * 0.02)
    d.opt.zero_grad(set_to_none=True)
    sums = {k: 0.0 for k in ("tokens", "kept", "norm", "contrast_n", "sequences", "loss_sum", "dpo_sum", "margin_sum",
                              "reward_acc_n", "completion_tokens")}
    d._micro_step(part, 0, sums)
    got = {n: q.grad.clone() for n, q in d.student.named_parameters()}
    # the oracle: full logits, plain torch
    d.student.zero_grad(set_to_none=True)
    n = len(part)
    chosen = [x.chosen for x in part]
    con = [part[0], part[2]]  # only these pairs have a DPO term
    batch = collate(chosen + [x.rejected for x in con], d.pad_id)
    pi, lp, logits = _logits_logprob(d.student, batch)
    if contrast == "first_divergence":  # the log-prob of the pair's first differing response token only
        at = [x.first for x in part] + [x.first for x in con]
        pi = torch.stack([lp[b][batch.target_mask[b].nonzero()[at[b], 0]] for b in range(len(at))])
        full = json.loads((tmp_path / "r" / "student_snapshot.reference.json").read_text())  # per-token reference
        assert [(x.ref_chosen, x.ref_rejected) for x in con] == [
            (full["chosen_tokens"][x.chosen.example][x.first], full["rejected_tokens"][x.chosen.example][x.first])
            for x in con]
    ref = torch.tensor([[x.ref_chosen, x.ref_rejected] for x in con], dtype=torch.float64)
    margin = 0.5 * ((pi[[0, 2]] - ref[:, 0]) - (pi[n:] - ref[:, 1]))
    loss = -F.logsigmoid(margin).sum()
    mixed = len(batch.input_ids) if mix_on == "both" else n  # both: the contrasted student responses too
    lens = torch.tensor([len(r.completion_ids) for r in (chosen + [x.rejected for x in con])[:mixed]],
                        dtype=torch.float64)
    mask = batch.target_mask[:mixed]
    if mix == "sft":
        per_seq = -(lp[:n] * mask).sum(1)
    else:
        with torch.no_grad():
            t = d.teacher(input_ids=batch.input_ids[:mixed], attention_mask=batch.attention_mask[:mixed]).logits[:, :-1]
        lq = torch.log_softmax(t.double(), -1)
        kl = (lq.exp() * (lq - torch.log_softmax(logits[:mixed].double(), -1))).sum(-1)
        per_seq = (kl * mask).sum(1)
    loss = loss + 0.7 * per_seq.sum() / lens.sum() * n  # the mean over the step's mixed tokens, x pairs
    loss.backward()
    assert sums["loss_sum"] == pytest.approx(float(loss.detach()), rel=1e-4)
    assert sums["kept"] == n and sums["contrast_n"] == 2 and sums["sequences"] == n + 2 and 0 < abs(sums["margin_sum"])
    for k, g in got.items():
        torch.testing.assert_close(g, d.student.get_parameter(k).grad, rtol=1e-3, atol=1e-6)


def test_the_mix_term_reads_the_cached_top_k_teacher(pair, tmp_path):
    """loss.teacher=topk: the forward-KL mix term reads the teacher cached once on its responses (no live
    teacher forward in the step); with every id but one cached, the loss is the live teacher's."""
    sums = []
    cases = [(f"{where}_{name}", extra + (f"soda.mix_on={where}",)) for where in ("chosen", "both")
             for name, extra in (("live", ()), ("topk", ("loss.teacher=topk", "loss.topk=100000")))]
    for name, extra in cases:
        d = _distiller(pair, tmp_path / name, "soda.mix=forward", "soda.mix_weight=0.7", *extra)
        assert (d.topk is None) == name.endswith("live")
        # mix_on both: the teacher's top-k on the snapshot responses is cached beside the snapshot
        assert (d.soda.snapshot_topk is not None) == (name == "both_topk")
        assert (tmp_path / name / "student_snapshot.teacher_topk" / "ids.npy").is_file() == (name == "both_topk")
        part = d.soda.get(list(range(4)))
        assert sum(p.contrast for p in part) > 0
        sums.append({k: 0.0 for k in ("tokens", "kept", "norm", "contrast_n", "sequences", "loss_sum", "dpo_sum",
                                      "margin_sum", "reward_acc_n", "completion_tokens")})
        d._micro_step(part, 0, sums[-1])
    for live, topk in (sums[0:2], sums[2:4]):
        assert topk["loss_sum"] == pytest.approx(live["loss_sum"], rel=1e-2)
        assert topk["dpo_sum"] == pytest.approx(live["dpo_sum"], rel=1e-6)
    # another K: a fresh top-k cache for the teacher responses, but the snapshot's is stale and refused
    with pytest.raises(SlimkitError, match="student_snapshot.teacher_topk was made for another .* set soda.cache"):
        _distiller(pair, tmp_path / "both_topk", "soda.mix=forward", "soda.mix_on=both", "loss.teacher=topk",
                   "loss.topk=4", f"loss.topk_cache={tmp_path / 'k4'}", overwrite=True)


def test_steps_start_at_ln2_and_widen_the_margin(pair, tmp_path):
    d = _distiller(pair, tmp_path / "r", "data.n=4", "train.steps=6", "optim.lr=1e-2")
    recs = [d.train_step() for _ in range(6)]
    assert recs[0]["dpo_loss"] == pytest.approx(0.693147, rel=1e-4)  # policy = reference at the start
    assert recs[-1]["margin"] > 0 and recs[-1]["reward_acc"] == 1.0 and recs[-1]["dpo_loss"] < 0.6
    assert recs[0]["completion_len"] > 0


@pytest.mark.parametrize("extra, message", [
    (("rollout.source=dataset",), "soda pairs the teacher's response"),
    (("select.method=entropy_top",), "soda trains on whole responses with a DPO loss: select.method=all"),
    (("soda.beta=0",), "soda.beta: Input should be greater than 0"),
    (("soda.mix=kl",), "soda.mix: Input should be 'none', 'forward' or 'sft'"),
    (("soda.mix=sft", "soda.mix_on=both"), "soda.mix_on=both needs soda.mix=forward"),
])
def test_bad_soda_settings_are_one_clear_error(pair, tmp_path, extra, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(None, overrides(pair, tmp_path / "r", *SODA, *extra))


def test_rejected_wrong_contrasts_only_the_responses_the_verifier_rejects(pair, tmp_path):
    out = tmp_path / "run"
    d = _distiller(pair, out, "soda.rejected=all")
    assert all(p.contrast for ps in d.soda.pairs for p in ps)
    # the snapshot's first response becomes the right answer; the reference is then computed again
    snap = out / "student_snapshot.jsonl"
    lines = snap.read_text().splitlines()
    row = json.loads(lines[1])
    right = d.tok(d.examples[row["example"]].answer + d.tok.eos_token, add_special_tokens=False)["input_ids"]
    lines[1] = json.dumps({**row, "completion_ids": right})
    snap.write_text("\n".join(lines) + "\n")
    (out / "student_snapshot.reference.json").unlink()
    d = _distiller(pair, out, "soda.rejected=wrong", overwrite=True)
    flags = {p.rejected.example: p.contrast for ps in d.soda.pairs for p in ps}
    assert flags[row["example"]] is False and sum(flags.values()) == len(flags) - 1
    rec = d.train_step()
    assert 0 < rec["contrast_frac"] <= 1 and rec["dpo_loss"] == pytest.approx(0.693147, rel=1e-4)
