"""Peak memory (and time) of one distillation training step vs the token-selection keep ratio.

Random-init Qwen3 teacher and student of realistic width (student hidden 512, teacher hidden 1024,
vocabulary 151936, a few layers), 8 sequences of 512 tokens, live teacher, reverse KL. Each config runs
in a fresh subprocess; the step's peak is measured by the trainer itself (CPU: peak RSS over the step
minus RSS at its start, via the kernel's resettable high-water mark; see
slimkit/compress/distill/metrics.py). A tiny warmup step first allocates the AdamW state and the
persistent gradients, so the measured step is a steady-state one (weights, gradients' and optimizer's
memory excluded).
glibc's mmap threshold is fixed at 64 KiB in the workers (MALLOC_MMAP_THRESHOLD_), so freed tensors go
back to the OS at once and RSS follows live memory; with glibc's dynamic threshold, tensors of up to
32 MiB stay in the heap after they are freed and the per-step RSS delta moves by hundreds of MiB
depending on what earlier steps left there.

A config is a selector (see SELECTORS) followed by variant tags (see VARIANTS), e.g.
"entropy_top r=0.5 +ckpt +tiles"; its ratio is taken against "all" with the same tags. `--set` adds
recipe overrides to every config. `--phases` runs one more, instrumented step per config and records
the peak of each phase of the step (teacher forward, student body, scoring, the fused KL kernel,
backward, optimizer) above the step's starting RSS: what the step's peak consists of.

    .venv/bin/python benchmarks/distill_memory.py                      # benchmarks/results/distill_memory.{json,md}
    .venv/bin/python benchmarks/distill_memory.py --layers 2 --seqs 8 --seq-len 512
    .venv/bin/python benchmarks/distill_memory.py --configs "all +ckpt,entropy_top r=0.5 +ckpt" --phases
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle threads sleep on a shared CPU

from _common import RESULTS, save  # noqa: E402

SELECTORS = {
    "all": ["select.method=all"],
    "entropy_top r=0.5": ["select.method=entropy_top", "select.ratio=0.5"],
    "entropy_top r=0.25": ["select.method=entropy_top", "select.ratio=0.25"],
    "quadrant Q3": ["select.method=quadrant", "select.quadrants=[Q3]"],
}
VARIANTS = {
    "+ckpt": ["train.gradient_checkpointing=true"],
    "+tiles": ["train.mlp_tiles=4"],
    # the pre-fusion gradient path: dense [V, H] lm_head / embedding gradients, foreach AdamW
    "+unfused": ["train.fuse_weight_grad=false", "train.sparse_embedding_grad=false", "optim.fused=false"],
}


ABOUT = ("Variant tags: " + "; ".join(f"{t} = {' '.join(o)}" for t, o in VARIANTS.items()) + ". peak_mem_mb "
         "(step peak) = peak RSS over the step minus RSS at its start; process_peak_mb = RSS at the step's start "
         "(Python, torch, both models, gradients, AdamW state) + step peak; peak_vs_all: against `all` with the "
         "same tags; process_vs_full_logits: process_peak_mb against the `full logits (TRL-style)` step's (the "
         "same step computed as TRL's GKDTrainer does: full [tokens x vocab] logits of both models, log_softmax, "
         "KL, backward; same models, batch and AdamW). Values of the last measured step; first_step_peak_mb of "
         "the first.")
ABOUT_PHASES = "Peak of each phase of one more (instrumented) step, MiB above the RSS at the step's start."


# The same step written the way TRL's trainers compute it (GKDTrainer.compute_loss): full [tokens x vocab]
# logits of student and teacher, log_softmax of both, the per-token KL, then backward and AdamW.
FULL_LOGITS = "full logits (TRL-style)"


def parse_config(name: str) -> tuple[str, list[str], list[str]]:
    """'entropy_top r=0.5 +ckpt' -> ('entropy_top r=0.5', ['+ckpt'], recipe overrides)."""
    if name == FULL_LOGITS:
        return name, [], []
    parts = name.split(" +")
    selector, tags = parts[0].strip(), ["+" + t.strip() for t in parts[1:]]
    if selector not in SELECTORS or any(t not in VARIANTS for t in tags):
        sys.exit(f"unknown config {name!r}: selectors {list(SELECTORS)}, variant tags {list(VARIANTS)}")
    return selector, tags, SELECTORS[selector] + [o for t in tags for o in VARIANTS[t]]


class SyntheticSource:
    """Fixed random sequences: `prompt` ids then `completion` ids, all supervised after the prompt."""

    def __init__(self, vocab: int, seqs: int, seq_len: int, prompt: int = 16, seed: int = 0):
        from slimkit.compress.distill.rollouts import Rollout

        rng = random.Random(seed)
        self.rollouts = [Rollout([rng.randrange(vocab) for _ in range(prompt)],
                                 [rng.randrange(vocab) for _ in range(seq_len - prompt)], i) for i in range(seqs)]

    def get(self, indices, **_):
        return self.rollouts


def phase_probe(d) -> dict[str, float]:
    """Instrument `d` so that its next train_step records each phase's peak RSS (MiB above the RSS right
    after the step's zero_grad) into the returned dict (max over repeats). Resets the kernel's RSS
    high-water mark at every phase boundary, so the trainer's own step peak is void for that step."""
    import torch

    from slimkit import kernels
    from slimkit.compress.distill import trainer
    from slimkit.compress.distill.metrics import _hwm, _reset_hwm, _rss

    peaks: dict[str, float] = {}
    state = {"base": None}

    def mark(phase: str) -> None:
        if state["base"] is not None:
            peaks[phase] = max(peaks.get(phase, 0.0), (_hwm() - state["base"]) / 2**20)
        _reset_hwm()

    def wrap(obj, attr: str, phase: str, when=lambda: True) -> None:
        f = getattr(obj, attr)

        def g(*a, **k):
            if not when():
                return f(*a, **k)
            mark("between phases")
            out = f(*a, **k)
            mark(phase)
            return out

        setattr(obj, attr, g)

    zero_grad = d.opt.zero_grad

    def zero_grad_then_base(*a, **k):
        zero_grad(*a, **k)
        state["base"] = _rss()
        _reset_hwm()

    d.opt.zero_grad = zero_grad_then_base
    wrap(d.teacher_body, "forward", "teacher forward")
    wrap(d.model, "forward", "student body forward")
    wrap(trainer, "scores", "scoring (no grad)")
    # the step's own linear_kl (with gradients); scoring calls it too, under no_grad
    wrap(kernels, "linear_kl", "fused KL forward", when=torch.is_grad_enabled)
    wrap(torch.autograd, "backward", "backward")
    wrap(torch.nn.utils, "clip_grad_norm_", "clip")
    wrap(d.opt, "step", "optimizer step")
    return peaks


def full_logits_step(d, batch) -> float:
    """One optimizer step of the Distiller's student computed as TRL does: reverse KL (the slimkit
    configs' loss) over full-vocabulary log-probs, mean over the completion tokens. Returns the loss."""
    import torch
    import torch.nn.functional as F

    ids, mask = batch.input_ids, batch.attention_mask
    logits = d.student(input_ids=ids, attention_mask=mask).logits[:, :-1]
    with torch.no_grad():
        teacher = d.teacher(input_ids=ids, attention_mask=mask).logits[:, :-1]
    s_lp, t_lp = F.log_softmax(logits, -1), F.log_softmax(teacher, -1)
    kl = F.kl_div(t_lp, s_lp, reduction="none", log_target=True).sum(-1)  # KL(student || teacher)
    loss = (kl * batch.target_mask).sum() / batch.target_mask.sum()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(d.params, 1.0)
    d.opt.step()
    d.opt.zero_grad(set_to_none=True)
    return float(loss)


def full_logits_worker(args, d) -> list[dict]:
    """The measured steps of FULL_LOGITS (same models, batch, optimizer and memory probe as the others)."""
    import time as _time

    from slimkit.compress.distill.metrics import PeakMemory
    from slimkit.compress.distill.rollouts import collate

    for p in d.params:  # the plain gradient path: autograd allocates each .grad (no persistent buffers)
        p.grad = None
    d.student.get_input_embeddings().sparse = False
    full_logits_step(d, collate(SyntheticSource(len(d.tok), 1, 32).rollouts, d.pad_id))
    batch = collate(SyntheticSource(len(d.tok), args.seqs, args.seq_len).rollouts, d.pad_id)
    recs = []
    for i in range(args.steps):
        t0 = _time.perf_counter()
        with PeakMemory("cpu") as mem:
            full_logits_step(d, batch)
        n = int(batch.target_mask.sum())
        recs.append({"step": i + 1, "peak_mem_mb": mem.peak_bytes / 2**20, "mem_start_mb": mem.start_bytes / 2**20,
                     "step_s": _time.perf_counter() - t0, "tokens": n, "kept": n, "keep_frac": 1.0,
                     "mem_method": mem.method})
    return recs


def check_free_memory(args) -> None:
    """Refuse FULL_LOGITS where its [tokens x vocab] float32 tensors (about 7 alive at the peak) would not
    fit in the free memory with a margin: on a shared machine an out-of-memory kill may hit another job."""
    need = 7 * args.seqs * args.seq_len * args.vocab * 4 + 4 * 2**30
    with open("/proc/meminfo") as f:
        avail = next(int(x.split()[1]) * 1024 for x in f if x.startswith("MemAvailable:"))
    if avail < 1.25 * need:
        sys.exit(f"{FULL_LOGITS}: needs about {need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB available: "
                 "not measured (run it where more memory is free, or with fewer --seqs / --seq-len)")


def worker(args) -> None:
    import torch

    from slimkit.compress.distill import load_recipe
    from slimkit.compress.distill.trainer import Distiller

    torch.set_num_threads(args.threads)
    cfg = load_recipe(None, [
        f"teacher={args.models}/teacher", f"student={args.models}/student", f"out={args.models}/run-{re.sub(r'[^A-Za-z0-9]+', '_', args.worker)}",
        "rollout.source=dataset", f"data.n={args.seqs}", f"train.prompts_per_step={args.seqs}",
        f"train.micro_batch={args.seqs}", f"train.steps={args.steps + 2}", "train.live_table=false",
        "eval.at_start=false", "loss.kind=reverse", *parse_config(args.worker)[2], *args.set])
    d = Distiller(cfg)
    if args.worker == FULL_LOGITS:
        print("RESULT " + json.dumps({"steps": full_logits_worker(args, d), "phases": None}))
        return
    # a tiny first step allocates AdamW's state (and .grad), so the measured steps are steady-state ones
    d.source = SyntheticSource(len(d.tok), 1, 32)
    d.train_step()
    d.source = SyntheticSource(len(d.tok), args.seqs, args.seq_len)
    recs = []
    for _ in range(args.steps):
        r = d.train_step()
        recs.append({k: r[k] for k in ("step", "peak_mem_mb", "mem_start_mb", "step_s", "tokens", "kept", "keep_frac",
                                       "mem_method")})
    phases = None
    if args.phases:
        phases = phase_probe(d)
        d.train_step()
    print("RESULT " + json.dumps({"steps": recs, "phases": phases}))


def build_models(root: Path, args) -> None:
    from slimkit.toy import make_tiny_model_dir

    common = dict(layers=args.layers, head_dim=64, vocab=args.vocab)
    make_tiny_model_dir(root / "teacher", hidden=args.teacher_hidden, heads=16, kv_heads=8,
                        intermediate=3 * args.teacher_hidden, seed=1, **common)
    make_tiny_model_dir(root / "student", hidden=args.student_hidden, heads=8, kv_heads=4,
                        intermediate=3 * args.student_hidden, seed=2, **common)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student-hidden", type=int, default=512)
    ap.add_argument("--teacher-hidden", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seqs", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=1, help="measured steps (after a tiny warmup step)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", default="all,entropy_top r=0.5,all +ckpt,entropy_top r=0.5 +ckpt",
                    help="comma-separated: a selector, then variant tags (+ckpt, +tiles, +unfused)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="recipe override for every config (repeatable), e.g. train.teacher_micro_batch=2")
    ap.add_argument("--phases", action="store_true", help="one more, instrumented step: peak per phase")
    ap.add_argument("--backend", default="chunked", choices=["chunked", "reference"],
                    help="kernel backend: chunked (fused, no [N, V] logits) or reference (materializes them)")
    ap.add_argument("--mmap-threshold", type=int, default=65536,
                    help="glibc MALLOC_MMAP_THRESHOLD_ for the workers (0: glibc's dynamic default)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory (default: the record)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--models", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    results = {}
    with tempfile.TemporaryDirectory(prefix="distill-mem-") as tmp:
        build_models(Path(tmp), args)
        names = [n.strip() for n in args.configs.split(",")]
        for name in names:
            parse_config(name)
        if FULL_LOGITS in names:
            check_free_memory(args)
        for name in names:
            cmd = [sys.executable, __file__, "--worker", name, "--models", tmp] + [
                f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                if k in ("seqs", "seq_len", "steps", "threads")] + [f"--set={o}" for o in args.set]
            cmd += ["--phases"] if args.phases else []
            t0 = time.time()
            env = {**os.environ, "SLIMKIT_KERNEL_BACKEND": args.backend}
            if args.mmap_threshold:
                env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if p.returncode:
                sys.exit(f"{name} failed:\n{p.stderr[-3000:]}")
            line = next(x for x in p.stdout.splitlines() if x.startswith("RESULT "))
            results[name] = json.loads(line[7:])
            print(f"{name}: {results[name]['steps'][-1]} ({time.time() - t0:.0f}s)", flush=True)

    rows = []
    for name, res in results.items():
        recs = res["steps"]
        last = recs[-1]
        ref = " ".join(["all", *parse_config(name)[1]]) if name != FULL_LOGITS else "all"
        base = results[ref]["steps"][-1]["peak_mem_mb"] if ref in results else None
        rows.append({"config": name, "seqs": args.seqs, "seq_len": args.seq_len, "keep_frac": last["keep_frac"],
                     "tokens": last["tokens"],
                     "peak_mem_mb": last["peak_mem_mb"], "peak_vs_all": last["peak_mem_mb"] / base if base else None,
                     "process_peak_mb": last["mem_start_mb"] + last["peak_mem_mb"],
                     "step_s": last["step_s"], "first_step_peak_mb": recs[0]["peak_mem_mb"],
                     "mem_method": last["mem_method"], "phase_peaks_mb": res["phases"]})
    full = next((r["process_peak_mb"] for r in rows if r["config"] == FULL_LOGITS), None)
    for r in rows:  # the saving a user feels: whole-process peak against the full-logits step's
        r["process_vs_full_logits"] = r["process_peak_mb"] / full if full else None
    settings = {"shape": {k: getattr(args, k) for k in ("student_hidden", "teacher_hidden", "vocab", "layers", "seqs",
                                                         "seq_len")},
                "threads": args.threads, "kernel_backend": args.backend, "malloc_mmap_threshold": args.mmap_threshold,
                "recipe_overrides": args.set}
    save("distill_memory", "steps", [{k: v for k, v in r.items() if k != "phase_peaks_mb"} for r in rows],
         key=("config", "seqs", "seq_len"), about=ABOUT, settings=settings, out=args.out)
    phases = [{"config": r["config"], **r["phase_peaks_mb"]} for r in rows if r["phase_peaks_mb"]]
    if phases:
        save("distill_memory", "phases", phases, key=("config",), about=ABOUT_PHASES, settings=settings, out=args.out)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
