"""Build the toy world from nothing (`slimkit toy build`): tokenizer, teacher and student.

Fixed seeds and fixed step counts: the same command builds the same models on one machine; across
machines float rounding differs, which is why the built world ships with the package. The budgets
aim to train each task to convergence, not to the edge of a plateau; how rebuilds at other seeds
land is recorded in benchmarks/results/toy.md. Sized for a 2-core CPU. Everything is written into a temporary
directory that replaces the target only when complete, so an interrupted build leaves nothing that
loads as a model.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

# init_std well above HF's default 0.02 (sized for hidden >= 1024): with 0.02 the teacher never learns
# `jobs` (a query/posting comparison) within the budget, and arith learns slower.
TEACHER = {"hidden": 128, "layers": 4, "heads": 4, "kv_heads": 2, "head_dim": 32, "intermediate": 512,
           "init_std": 0.15}
STUDENT = {"hidden": 128, "layers": 2, "heads": 4, "kv_heads": 2, "head_dim": 32, "intermediate": 256,
           "init_std": 0.08}
TEACHER_STEPS = 2400
TEACHER_LR = 3e-3  # with init_std 0.15, jobs leaves its plateau sooner than with 0.08 and 2e-3
# jobs sits on a plateau (AUC ~0.75: one of the two fields compared) for ~2,000 steps unless the teacher
# also predicts each posting's title and place tokens (TEACHER_FIELD_LOSS: a language-model loss on just
# those tokens, weight TEACHER_PROMPT_LOSS["jobs"]), which makes it look up the query's; with it jobs
# converges within ~600 jobs steps, so arith takes most of the steps. Also available, off: per-task step
# windows (e.g. jobs alone on short postings first) and the loss on every prompt token; neither
# shortened the plateau (benchmarks/results/toy.md).
TEACHER_WINDOWS = {"jobs-short": (0, 0), "jobs": (0, TEACHER_STEPS), "arith": (0, TEACHER_STEPS)}
JOBS_SHORT_FILLER = (0, 1)  # filler lines of the short postings (the full ones have 4-7)
TEACHER_PROMPT_LOSS = {"jobs-short": 0.0, "jobs": 1.0}
TEACHER_FIELD_LOSS = True
STUDENT_STEPS = 1000  # at most; the student stops once it reaches STUDENT_STOP on validation
STUDENT_STOP = 0.30  # validation arith accuracy, checked every STUDENT_CHECK steps (deterministic)
STUDENT_CHECK = 50  # often enough to stop near STUDENT_STOP, not far above it
TEACHER_WEIGHTS = {"arith": 0.65, "jobs": 0.35, "jobs-short": 0.35}
TEACHER_BATCH = {"arith": 64, "jobs": 32, "jobs-short": 32}  # jobs needs many steps, not many examples
STUDENT_WEIGHTS = {"arith": 1.0}  # the student starts from arith only: distillation brings the rest
TRAIN_SIZES = {"arith": 50000, "jobs": 20000, "jobs-short": 10000}
EVAL_N = {"arith": 600, "jobs": 600}


def steps_scale() -> float:
    """SLIMKIT_TOY_STEPS_SCALE (default 1) scales every step count, e.g. 0.02 for a smoke build."""
    raw = os.environ.get("SLIMKIT_TOY_STEPS_SCALE", "1")
    try:
        scale = float(raw)
    except ValueError:
        from slimkit.errors import SlimkitError

        raise SlimkitError(f"SLIMKIT_TOY_STEPS_SCALE={raw!r} is not a number") from None
    return scale


def default_threads() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def training_data() -> dict[str, list]:
    """Train examples per task, and the teacher's short jobs postings ("jobs-short")."""
    from slimkit.tasks import get_task
    from slimkit.tasks.jobs import Jobs

    data = {name: get_task(name).split("train", n) for name, n in TRAIN_SIZES.items() if name != "jobs-short"}
    if len(range(*TEACHER_WINDOWS["jobs-short"])):
        data["jobs-short"] = Jobs(filler_lines=JOBS_SHORT_FILLER).split("train", TRAIN_SIZES["jobs-short"])
    return data


def posting_fields(tok) -> dict[str, tuple[int, list[int]]]:
    """The jobs prompt loss's tokens: titles and places (one token each) after "Posting:"."""
    from slimkit.tasks.jobs import PLACES, TITLES

    marker = tok("Posting:", add_special_tokens=False).input_ids
    ids = [tok(word, add_special_tokens=False).input_ids for word in [*TITLES, *PLACES]]
    if len(marker) != 1 or any(len(i) != 1 for i in ids):
        raise ValueError("the field loss needs the marker, titles and places to be single tokens")
    return {name: (marker[0], [i[0] for i in ids]) for name in ("jobs", "jobs-short")}


def scaled_windows(windows: dict[str, tuple[int, int]], scale: float) -> dict[str, tuple[int, int]]:
    """Step windows scaled like the step counts (the last one ends at the scaled total)."""
    total = max(1, round(TEACHER_STEPS * scale))
    return {name: (min(total, round(lo * scale)), total if hi >= TEACHER_STEPS else min(total, round(hi * scale)))
            for name, (lo, hi) in windows.items()}


def _eval_all(model, tok, eval_n: dict[str, int]) -> dict[str, Any]:
    from slimkit.tasks.eval import evaluate

    return {task: evaluate(model, tok, task, split="test", n=n, progress=True, description=f"  eval {task}")
            for task, n in eval_n.items()}


def stop_at(model, tok, target: float, every: int, n: int = 200):
    """on_step callback: every `every` steps, stop once validation arith accuracy reaches `target`."""
    from slimkit.tasks.eval import evaluate

    def check(step: int) -> bool:
        if step % every:
            return False
        model.eval()
        acc = evaluate(model, tok, "arith", split="validation", n=n)["accuracy"]
        model.train()
        return acc >= target

    return check


class _Terminated(Exception):
    pass


def _raise_on_sigterm(signum, frame):
    raise _Terminated(f"terminated by signal {signum}")


def build(root: str | os.PathLike, *, seed: int = 0, threads: int | None = None, scale: float | None = None,
          eval_n: dict[str, int] | None = None, overwrite: bool = False, console=None) -> dict[str, Any]:
    """Train tokenizer, teacher (seed `seed`) and student (seed `seed + 1`) into `root`, written
    atomically; `overwrite` replaces an earlier toy build there. Returns the build record."""
    import torch
    from rich.console import Console
    from transformers.utils import logging as hf_logging

    from slimkit import artifacts, toy
    from slimkit.toy.sft import SFTConfig, train

    hf_logging.disable_progress_bar()
    console = console or Console(stderr=True)
    scale = steps_scale() if scale is None else scale
    eval_n = dict(EVAL_N if eval_n is None else eval_n)
    root = Path(root)
    torch.set_num_threads(threads or default_threads())
    old = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    t0, cpu0 = time.perf_counter(), time.process_time()
    load0 = os.getloadavg()[0]
    try:
        with artifacts.atomic_dir(root, overwrite=overwrite) as tmp:
            console.print(f"[bold]building the toy world[/] into {root} (steps x{scale:g})")
            data = training_data()
            tok = toy.toy_tokenizer()
            record: dict[str, Any] = {"version": toy.VERSION, "seed": seed, "threads": torch.get_num_threads(),
                                      "steps_scale": scale, "vocab": len(tok), "models": {}}
            for name, shape, steps, model_seed, weights, lr, extra in (
                    ("teacher", TEACHER, TEACHER_STEPS, seed, TEACHER_WEIGHTS, TEACHER_LR,
                     {"task_batch_size": TEACHER_BATCH, "prompt_loss": TEACHER_PROMPT_LOSS,
                      "prompt_loss_only": posting_fields(tok) if TEACHER_FIELD_LOSS else None,
                      "task_steps": scaled_windows(TEACHER_WINDOWS, scale)}),
                    ("student", STUDENT, STUDENT_STEPS, seed + 1, STUDENT_WEIGHTS, SFTConfig.lr, {})):
                cfg = SFTConfig(steps=max(1, round(steps * scale)), seed=model_seed, lr=lr,
                                warmup=min(100, max(1, round(steps * scale) // 10)), **extra)
                model = toy.new_model(tok, seed=model_seed, **shape)
                params = sum(p.numel() for p in model.parameters())
                console.print(f"[bold]{name}[/]: Qwen3 {shape}, {params / 1e6:.2f}M parameters, {cfg.steps} steps")
                stop = stop_at(model, tok, STUDENT_STOP, max(1, round(STUDENT_CHECK * scale)),
                                n=min(200, eval_n.get("arith", 200))) if name == "student" else None
                stats = train(model, tok, data, weights, cfg, description=f"  train {name}", on_step=stop)
                metrics = _eval_all(model, tok, eval_n)
                metrics["train"] = stats
                recipe = {"shape": shape, "sft": vars(cfg), "weights": weights, "train_sizes": TRAIN_SIZES}
                artifacts.save(model, tok, tmp / name, stage=f"toy-{name}", recipe=recipe, metrics=metrics)
                record["models"][name] = {"params": params, "shape": shape, "steps": stats["steps"],
                                          "train_seconds": stats["seconds"],
                                          "train_tokens_per_s": stats["tokens_per_s"],
                                          "arith": metrics["arith"], "jobs": metrics["jobs"]}
                console.print(f"  {name}: arith {metrics['arith']['accuracy']:.1%}  jobs AUC "
                              f"{metrics['jobs']['auc']:.3f}  ({stats['seconds']:.0f} s training)")
            record["build_seconds"] = time.perf_counter() - t0
            record["build_cpu_seconds"] = time.process_time() - cpu0
            record["loadavg_start"] = load0
            record["loadavg_end"] = os.getloadavg()[0]
            (tmp / "toy.json").write_text(json.dumps(record, indent=2) + "\n")
    finally:
        signal.signal(signal.SIGTERM, old)
    console.print(f"[bold green]toy world built[/] in {record['build_seconds']:.0f} s: {root}")
    return record
