"""The `trl_gkd` row of benchmarks/distill.py: a row's recipe run through TRL's GKDTrainer instead of
`slimkit distill`, from its own environment (.venv-trl, `make trl-env`, pins in constraints/trl.txt).

Same teacher, student, training prompts, step budget, prompts per step, rollout length and
temperature, learning rate, warmup + cosine schedule and gradient clipping as the recipe; GKD with
on-policy fraction lmbda = 1 (every step samples the student) and beta = 0 (forward KL, the recipe's
loss). TRL draws the prompts in its own order from the same pool. The run writes OUT/metrics.jsonl
in slimkit's format (a step record per step: time and step peak memory from the same probe as
slimkit's; eval records from the same greedy eval), which benchmarks/distill.py reads like any row.

    .venv-trl/bin/python benchmarks/distill_trl.py runs/repro/trl_gkd.yaml
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import slimkit  # noqa: E402,F401  (sets OMP_WAIT_POLICY before torch loads)


def evaluate(model, tok, cfg) -> dict:
    """The trainer's eval: greedy answers to the eval split, accuracy and tokens per answer by group."""
    from slimkit.compress.distill.trainer import eval_groups
    from slimkit.tasks import format_prompt, get_task
    from slimkit.tasks.generate import generate

    task = get_task(cfg.data.task)
    exs = task.split(cfg.eval.split, cfg.eval.n)
    was = model.training
    model.eval()
    outs = generate(model, tok, [format_prompt(tok, x.prompt) for x in exs],
                    max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens, batch_size=cfg.rollout.batch_size)
    model.train(was)
    ok = [bool(task.verify(x, o[0].text)) for x, o in zip(exs, outs, strict=True)]
    ntok = [len(o[0].token_ids) for o in outs]
    out = {}
    for name, idx in eval_groups(exs).items():
        out[f"eval_acc{name}"] = sum(ok[i] for i in idx) / max(len(idx), 1)
        out[f"eval_tokens{name}"] = sum(ntok[i] for i in idx) / max(len(idx), 1)
    out["eval_n"] = len(exs)
    return out


def main() -> None:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from slimkit import artifacts
    from slimkit.compress.distill import load_recipe
    from slimkit.compress.distill.metrics import PeakMemory
    from slimkit.compress.distill.models import load_examples

    cfg = load_recipe(sys.argv[1])
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "metrics.jsonl", "w")
    torch.set_num_threads(cfg.train.threads or 1)
    student, tok = artifacts.load(artifacts.resolve(cfg.student))
    teacher, _ = artifacts.load(artifacts.resolve(cfg.teacher), with_tokenizer=False)
    data = Dataset.from_list([{"messages": [{"role": "user", "content": ex.prompt},
                                            {"role": "assistant", "content": ex.answer}]}
                              for ex in load_examples(cfg.data)])
    o, t = cfg.optim, cfg.train
    args = GKDConfig(
        output_dir=str(out / "trl"), lmbda=1.0, beta=0.0, temperature=cfg.rollout.temperature,
        max_new_tokens=cfg.rollout.max_new_tokens, per_device_train_batch_size=t.prompts_per_step,
        gradient_accumulation_steps=1, max_steps=t.steps, learning_rate=o.lr, weight_decay=o.weight_decay,
        adam_beta1=o.betas[0], adam_beta2=o.betas[1], warmup_steps=o.warmup_steps, max_grad_norm=o.grad_clip or math.inf,
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": o.min_lr_ratio},
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=t.seed, data_seed=t.seed,
        dataloader_num_workers=0, disable_tqdm=True,
        # TRL's defaults are bf16 autocast and gradient checkpointing, which turns off the KV cache in
        # generation; on a CPU without native bf16 both cost many times a step. fp32 and the cache, as slimkit.
        bf16=False, gradient_checkpointing=False)

    class Record(TrainerCallback):
        """slimkit's step and eval records: step time and peak from the step's start to its end."""

        def on_train_begin(self, *_a, **_k):
            log.write(json.dumps({"step": 0, **evaluate(student, tok, cfg)}) + "\n")

        def on_step_begin(self, *_a, **_k):
            self.t0 = time.perf_counter()
            self.mem = PeakMemory("cpu").__enter__()

        def on_step_end(self, _args, state, *_a, **_k):
            self.mem.__exit__(None, None, None)
            self.step = {"step": state.global_step, "step_s": time.perf_counter() - self.t0,
                         "peak_mem_mb": self.mem.peak_bytes / 2**20, "mem_start_mb": self.mem.start_bytes / 2**20,
                         "tokens": 1, "kept": 1}  # GKD trains on every completion token

        def on_log(self, _args, state, _control, logs=None, **_k):
            if logs and "loss" in logs and getattr(self, "step", None):
                rec = {**self.step, "loss": logs["loss"], "lr": logs.get("learning_rate")}
                every = cfg.eval.every
                if every and state.global_step % every == 0 and state.global_step < t.steps:
                    rec.update(evaluate(student, tok, cfg))
                log.write(json.dumps(rec) + "\n")
                log.flush()
                self.step = None

        def on_train_end(self, _args, state, *_a, **_k):
            log.write(json.dumps({"step": state.global_step, **evaluate(student, tok, cfg)}) + "\n")

    trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data, processing_class=tok,
                         callbacks=[Record()])
    trainer.train()
    log.close()


if __name__ == "__main__":
    main()
