"""vLLM rollouts (runs only where vllm imports, i.e. from .venv-vllm):
.venv-vllm/bin/python -m pytest tests/distill/test_vllm.py"""

import pytest
import torch
from distill_helpers import overrides

pytest.importorskip("vllm")


@pytest.mark.slow
def test_vllm_rollouts_follow_the_students_weights(pair, tmp_path):
    from slimkit.compress.distill import load_recipe
    from slimkit.compress.distill.trainer import Distiller
    from slimkit.tasks.generate import generate

    cfg = load_recipe(None, overrides(pair, tmp_path / "r", "rollout.source=student", "rollout.engine=vllm",
                                      "rollout.temperature=0.0", "rollout.refresh_every=1", "optim.lr=5e-2"))
    d = Distiller(cfg)
    for _ in range(2):
        d.train_step()
    src = d.source
    got = src.get([0, 1, 2, 3], model=d.student, seed=0, step=d.step)  # pushes the trained weights
    ref = generate(d.student, d.tok, [d.prompts[i] for i in range(4)], max_new_tokens=8, temperature=0.0)
    assert [r.completion_ids for r in got] == [c[0].token_ids for c in ref]
    # and the engine really changed: the starting student's greedy output differs
    with torch.no_grad():
        for p in d.student.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    src.refresh(d.student)
    moved = src.get([0, 1, 2, 3], model=d.student, seed=0, step=d.step)
    ref2 = generate(d.student, d.tok, [d.prompts[i] for i in range(4)], max_new_tokens=8, temperature=0.0)
    assert [r.completion_ids for r in moved] == [c[0].token_ids for c in ref2]
    assert [r.completion_ids for r in moved] != [r.completion_ids for r in got]
