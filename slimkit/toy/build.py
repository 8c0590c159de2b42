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


def default_workers() -> int:
    """Data-parallel training processes: one per core, up to 2 (a second torch thread in one process
    buys little on these small matmuls; a second process nearly halves the step)."""
    return default_threads()


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


def _plan(name: str, seed: int, scale: float, tok):
    """(shape, task weights, SFTConfig) of the teacher or the student."""
    from slimkit.toy.sft import SFTConfig

    if name == "teacher":
        shape, steps, model_seed, weights, lr = TEACHER, TEACHER_STEPS, seed, TEACHER_WEIGHTS, TEACHER_LR
        extra = {"task_batch_size": TEACHER_BATCH, "prompt_loss": TEACHER_PROMPT_LOSS,
                 "prompt_loss_only": posting_fields(tok) if TEACHER_FIELD_LOSS else None,
                 "task_steps": scaled_windows(TEACHER_WINDOWS, scale)}
    else:
        shape, steps, model_seed, weights, lr, extra = STUDENT, STUDENT_STEPS, seed + 1, STUDENT_WEIGHTS, SFTConfig.lr, {}
    cfg = SFTConfig(steps=max(1, round(steps * scale)), seed=model_seed, lr=lr,
                    warmup=min(100, max(1, round(steps * scale) // 10)), **extra)
    return shape, weights, cfg


def _fit(name: str, seed: int, scale: float, eval_n: dict[str, int], data, tok, ring=None, console=None):
    """Train the teacher or the student from its seed; on a data-parallel `ring`, this rank's part."""
    from slimkit import toy
    from slimkit.toy.sft import train

    shape, weights, cfg = _plan(name, seed, scale, tok)
    model = toy.new_model(tok, seed=cfg.seed, **shape)
    if console is not None:
        params = sum(p.numel() for p in model.parameters())
        console.print(f"[bold]{name}[/]: Qwen3 {shape}, {params / 1e6:.2f}M parameters, {cfg.steps} steps"
                      + (f", {ring.world} processes" if ring is not None else ""))
    stop = stop_at(model, tok, STUDENT_STOP, max(1, round(STUDENT_CHECK * scale)),
                   n=min(200, eval_n.get("arith", 200))) if name == "student" else None
    stats = train(model, tok, data, weights, cfg, description=f"  train {name}", on_step=stop, ring=ring,
                  progress=ring is None or ring.rank == 0)
    return model, shape, weights, cfg, stats


def _rank(rank: int, world: int, address: str, name: str, seed: int, scale: float, eval_n: dict[str, int]) -> None:
    """A data-parallel worker process (ranks 1..world-1): the same data and model, its rows of each batch."""
    import torch

    from slimkit import toy
    from slimkit.toy.sft import Ring

    torch.set_num_threads(1)
    ring = Ring(rank, world, address)
    try:
        _fit(name, seed, scale, eval_n, training_data(), toy.toy_tokenizer(), ring)
    finally:
        ring.close()


def _free_address() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _fit_parallel(name: str, seed: int, scale: float, eval_n: dict[str, int], data, tok, workers: int, console):
    """`_fit` as rank 0 of `workers` processes (the others spawned here, one thread each)."""
    import multiprocessing

    from slimkit.errors import SlimkitError
    from slimkit.toy.sft import Ring

    if workers == 1:
        return _fit(name, seed, scale, eval_n, data, tok, console=console)
    address = _free_address()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_rank, args=(r, workers, address, name, seed, scale, eval_n), daemon=True)
             for r in range(1, workers)]
    for p in procs:
        p.start()
    try:
        ring = Ring(0, workers, address)
        try:
            out = _fit(name, seed, scale, eval_n, data, tok, ring, console=console)
        finally:
            ring.close()
        for p in procs:
            p.join(timeout=60)
        if any(p.exitcode != 0 for p in procs):
            raise SlimkitError(f"a toy-build worker process failed (exit codes {[p.exitcode for p in procs]})")
        return out
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join()


def build(root: str | os.PathLike, *, seed: int = 0, threads: int | None = None, workers: int | None = None,
          scale: float | None = None, eval_n: dict[str, int] | None = None, overwrite: bool = False,
          console=None) -> dict[str, Any]:
    """Train tokenizer, teacher (seed `seed`) and student (seed `seed + 1`) into `root`, written
    atomically; `overwrite` replaces an earlier toy build there. Training runs data-parallel over
    `workers` processes (default: one per core, up to 2) of `threads` torch threads (default 1 with
    several workers); evaluation in this process. Returns the build record."""
    import torch
    from rich.console import Console
    from transformers.utils import logging as hf_logging

    from slimkit import artifacts, toy

    hf_logging.disable_progress_bar()
    console = console or Console(stderr=True)
    scale = steps_scale() if scale is None else scale
    eval_n = dict(EVAL_N if eval_n is None else eval_n)
    root = Path(root)
    workers = workers or default_workers()
    threads = threads or (1 if workers > 1 else default_threads())
    old = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    t0, cpu0 = time.perf_counter(), time.process_time()
    load0 = os.getloadavg()[0]
    try:
        with artifacts.atomic_dir(root, overwrite=overwrite) as tmp:
            console.print(f"[bold]building the toy world[/] into {root} (steps x{scale:g})")
            data = training_data()
            tok = toy.toy_tokenizer()
            record: dict[str, Any] = {"version": toy.VERSION, "seed": seed, "threads": threads, "workers": workers,
                                      "steps_scale": scale, "vocab": len(tok), "models": {}}
            for name in ("teacher", "student"):
                torch.set_num_threads(threads)
                model, shape, weights, cfg, stats = _fit_parallel(name, seed, scale, eval_n, data, tok, workers,
                                                                  console)
                torch.set_num_threads(min(threads * workers, os.cpu_count() or 1))  # evaluation: here alone
                params = sum(p.numel() for p in model.parameters())
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
            record["build_cpu_seconds"] = time.process_time() - cpu0  # this process (not the workers)
            record["loadavg_start"] = load0
            record["loadavg_end"] = os.getloadavg()[0]
            (tmp / "toy.json").write_text(json.dumps(record, indent=2) + "\n")
    finally:
        signal.signal(signal.SIGTERM, old)
    console.print(f"[bold green]toy world built[/] in {record['build_seconds']:.0f} s: {root}")
    return record
