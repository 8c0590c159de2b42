"""The trainer's memory options change where gradients are written, not the training run."""

import torch
from distill_helpers import overrides

from slimkit import kernels
from slimkit.compress.distill import load_recipe
from slimkit.compress.distill.trainer import Distiller

PLAIN = ("train.fuse_weight_grad=false", "train.sparse_embedding_grad=false")


def _run(pair, out, *extra, steps=3):
    d = Distiller(load_recipe(None, overrides(pair, out, "train.micro_batch=2", *extra)))
    grads = []
    for _ in range(steps):
        d.train_step()
        grads.append({n: p.grad.clone() for n, p in d.student.named_parameters() if p.grad is not None})
    return d, grads


def test_memory_options_reach_the_same_weights(pair, tmp_path, monkeypatch):
    calls = []
    real = kernels.linear_kl

    def spy(*a, **kw):
        calls.append(kw.get("weight_grad_into"))
        return real(*a, **kw)

    monkeypatch.setattr(kernels, "linear_kl", spy)
    base, g0 = _run(pair, tmp_path / "plain", *PLAIN)
    assert all(c is None for c in calls) and not base.student.get_input_embeddings().sparse
    calls.clear()
    new, g1 = _run(pair, tmp_path / "new", "train.teacher_micro_batch=1")
    w = new.student.get_output_embeddings().weight
    fused = [c for c in calls if c is not None]
    assert fused and all(c is w.grad for c in fused)  # 2 micro-batches per step accumulate into .grad
    assert new.student.get_input_embeddings().sparse
    assert all(p.grad is not None and not p.grad.is_sparse for p in new.params)  # AdamW sees dense grads
    for a, b in zip(g0, g1, strict=True):  # each step's gradient (sum over micro-batches, scaled)
        assert a.keys() <= b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6 * float(a[k].abs().max()))
    for k, v in base.student.state_dict().items():
        torch.testing.assert_close(new.student.state_dict()[k], v, rtol=1e-5, atol=1e-6)


def test_gradients_stay_allocated_across_steps(pair, tmp_path):
    d = Distiller(load_recipe(None, overrides(pair, tmp_path / "r", "train.gradient_checkpointing=true")))
    ptrs = {n: p.grad.data_ptr() for n, p in d.student.named_parameters()}
    for _ in range(2):
        rec = d.train_step()
        assert rec["grad_norm"] > 0
    assert {n: p.grad.data_ptr() for n, p in d.student.named_parameters()} == ptrs
    # the fused AdamW update ran on them (the state is the optimizer's usual one)
    assert d.opt.param_groups[0]["fused"] and all("exp_avg" in d.opt.state[p] for p in d.params)


def test_plain_path_frees_gradients_between_steps(pair, tmp_path):
    d = Distiller(load_recipe(None, overrides(pair, tmp_path / "r", *PLAIN, "optim.fused=false")))
    assert not d.persistent_grads and all(p.grad is None for p in d.params)
    d.train_step()
    d.train_step()  # set_to_none between steps: gradients are rebuilt, still correct
    assert all(p.grad is not None for p in d.params)


def test_tiled_mlp_gives_the_same_gradients_and_parameter_names(pair, tmp_path):
    ref, g_ref = _run(pair, tmp_path / "ref", steps=1)
    for ckpt in ("false", "true"):  # nested in the whole-layer checkpoint too
        d, g = _run(pair, tmp_path / f"t{ckpt}", "train.mlp_tiles=3", f"train.gradient_checkpointing={ckpt}", steps=1)
        assert d.student.state_dict().keys() == ref.student.state_dict().keys()
        assert all(layer.mlp.forward.args[1] == 3 for layer in d.student.model.layers)  # tiled
        for k in g_ref[0]:
            torch.testing.assert_close(g[0][k], g_ref[0][k], rtol=1e-5, atol=1e-6 * float(g_ref[0][k].abs().max()))
