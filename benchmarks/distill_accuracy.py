"""Toy-world accuracy of on-policy distillation with and without token selection (TIP).

Runs `slimkit distill recipes/opd_toy.yaml` once per selector, one after another (same steps, seed and
budget), then evaluates the starting student and every distilled student on the arith test split.

    .venv/bin/python benchmarks/distill_accuracy.py                    # all, entropy_top r=0.5, Q3
    .venv/bin/python benchmarks/distill_accuracy.py --steps 100 --configs all,q3

Results: table "opd" of benchmarks/results/distill_accuracy.{json,md}: per student, selector and
extra overrides, the fraction of tokens trained on, accuracies, wall and CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle threads sleep on a shared CPU

from _common import RESULTS, model_name, save  # noqa: E402

CONFIGS = {
    "all": ["select.method=all"],
    "entropy_top_0.5": ["select.method=entropy_top", "select.ratio=0.5"],
    # Q3 = low student entropy and high teacher-student divergence ("overconfident and wrong"). On a
    # peaked model (most tokens H ~ 0, D ~ 0) median thresholds make "high D" mean D > 1e-4, i.e. tokens
    # where both agree; the student is then trained only to flatten its confident tokens and collapses
    # (q3_median). Absolute thresholds pick real disagreements: H < 1 nat, JSD >= 0.05 nats.
    "q3": ["select.method=quadrant", "select.quadrants=[Q3]", "select.threshold=absolute",
           "select.entropy_threshold=1.0", "select.divergence_threshold=0.05"],
    "q3_median": ["select.method=quadrant", "select.quadrants=[Q3]"],
    "entropy_sample_0.5": ["select.method=entropy_sample", "select.ratio=0.5"],
}

ABOUT = ("`slimkit distill` with the recipe, one run per selector (CONFIGS in benchmarks/distill_accuracy.py; "
         "q3: H < 1 nat and JSD >= 0.05 nats), then arith test accuracy (greedy) of the starting and the "
         "distilled student. settings: recipe overrides of the run beyond the selector's; tokens_trained: the "
         "fraction of supervised tokens selected; gain_pts / vs_all_pts: accuracy points vs the starting "
         "student / vs `all` in the same invocation. Wall times of runs that shared the machine are not comparable.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/opd_toy.yaml")
    ap.add_argument("--configs", default="all,entropy_top_0.5,q3")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], help="extra recipe override for every run")
    ap.add_argument("--runs", default="runs/distill_accuracy")
    ap.add_argument("--test-n", type=int, default=600)
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory (default: the record)")
    ap.add_argument("--q3-divergence-quantile", type=float, default=0.5,
                    help="q3_median: entropy below its median and divergence above this quantile")
    ap.add_argument("--reuse", action="store_true", help="skip runs whose student already exists")
    args = ap.parse_args()
    CONFIGS["q3_median"] = [*CONFIGS["q3_median"], f"select.divergence_threshold={args.q3_divergence_quantile}"]

    import torch

    from slimkit import artifacts
    from slimkit.compress.distill import load_recipe
    from slimkit.tasks.eval import evaluate

    torch.set_num_threads(2)
    extra = list(args.set) + ([f"train.steps={args.steps}"] if args.steps else [])
    base = load_recipe(args.recipe, extra)
    student = model_name(base.student)
    settings = " ".join(x for x in extra if not x.startswith("student="))
    rows = []
    for name in args.configs.split(","):
        out = Path(args.runs) / name
        sets = [*extra, *CONFIGS[name], f"out={out}"]
        cmd = [sys.executable, "-m", "slimkit.cli", "distill", args.recipe] + [a for s in sets for a in ("--set", s)]
        print(" ".join(cmd), flush=True)
        t0 = time.time()
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_s = None
        if args.reuse and (out / "student" / "slimkit.json").is_file():
            done = json.loads((out / "wall.json").read_text())
            wall, cpu_s = done["wall_s"], done.get("cpu_s")
        else:
            p = subprocess.run(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True)
            wall = time.time() - t0
            cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
            if p.returncode:
                sys.exit(f"{name} failed:\n{p.stderr[-3000:]}")
            (out / "wall.json").write_text(json.dumps({"wall_s": wall, "cpu_s": cpu_s, "cmd": cmd}) + "\n")
        recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in recs if "loss" in r]
        evals = [(r["step"], r["eval_acc"]) for r in recs if "eval_acc" in r]
        train_s = sum(r["step_s"] for r in steps)
        rows.append({"student": student, "selector": name, "settings": settings,
                     "tokens_trained": sum(r["kept"] for r in steps) / sum(r["tokens"] for r in steps),
                     "steps": len(steps), "start_acc": None, "test_acc": None, "gain_pts": None,
                     "vs_all_pts": None, "wall_s": wall, "cpu_s": cpu_s, "train_s": train_s,
                     "peak_mem_mb_max": max(r["peak_mem_mb"] for r in steps), "val_curve": evals})
        print(f"  {name}: {wall:.0f}s wall, {train_s:.0f}s in steps, val {evals}", flush=True)

    # test-split accuracy of the starting student and of each distilled student
    start, tok = artifacts.load(Path(base.student).expanduser())
    start_acc = evaluate(start, tok, "arith", split="test", n=args.test_n)["accuracy"]
    for r in rows:
        model, tok = artifacts.load(Path(args.runs) / r["selector"] / "student")
        r["start_acc"] = start_acc
        r["test_acc"] = evaluate(model, tok, "arith", split="test", n=args.test_n)["accuracy"]
        r["gain_pts"] = 100 * (r["test_acc"] - start_acc)
    ref = next((r["test_acc"] for r in rows if r["selector"] == "all"), None)
    for r in rows:
        r["vs_all_pts"] = None if ref is None else 100 * (r["test_acc"] - ref)
    save("distill_accuracy", "opd", rows, key=("student", "selector", "settings"), about=ABOUT,
         settings={"recipe": args.recipe, "test_n": args.test_n}, out=args.out)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
