"""A toy-world student of another shape, trained exactly as `slimkit toy build` trains the default one.

Same tokenizer (taken from the toy world), same data, seed, schedule and early stop (arith only, until
validation accuracy reaches 30%) by default; the shape, the step budget, the stop and the arith levels
trained on can be changed. Used to see how a distillation result depends
on the student's capacity, e.g. Q3-only token selection (benchmarks/results/distill_q3.md):

    .venv/bin/python benchmarks/toy_student.py --layers 4 --intermediate 512 --out runs/toy-student-l4

Results: the model in --out, and its row in table "students" of benchmarks/results/distill.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from _common import RESULTS, model_name, save  # noqa: E402


def main() -> None:
    from slimkit.toy import build as toy_build

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer-from", default="toy:student", help="model whose tokenizer is reused")
    ap.add_argument("--out", required=True)
    for key in ("hidden", "layers", "heads", "kv_heads", "head_dim", "intermediate"):
        ap.add_argument(f"--{key.replace('_', '-')}", type=int, default=toy_build.STUDENT[key])
    ap.add_argument("--steps", type=int, default=toy_build.STUDENT_STEPS, help="SFT steps (at most, with --stop)")
    ap.add_argument("--stop", type=float, default=toy_build.STUDENT_STOP,
                    help=f"stop once validation arith accuracy reaches this (checked every "
                         f"{toy_build.STUDENT_CHECK} steps); 0: never")
    ap.add_argument("--levels", default="1,2,3", help="arith levels (operator counts) to train on, e.g. 1,2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", type=Path, default=RESULTS, help="results directory (default: the record)")
    args = ap.parse_args()

    import torch

    from slimkit import artifacts, toy
    from slimkit.tasks import get_task
    from slimkit.tasks.eval import evaluate
    from slimkit.toy.sft import SFTConfig, train

    torch.set_num_threads(args.threads)
    tok = artifacts.load_tokenizer(args.tokenizer_from)
    shape = {**toy_build.STUDENT, **{k: getattr(args, k) for k in toy_build.STUDENT if k != "init_std"}}
    steps = args.steps
    cfg = SFTConfig(steps=steps, seed=1, warmup=min(100, max(1, steps // 10)))
    levels = {int(x) for x in args.levels.split(",")}
    data = {"arith": [ex for ex in get_task("arith").split("train", toy_build.TRAIN_SIZES["arith"])
                      if ex.meta["level"] in levels]}
    model = toy.new_model(tok, seed=1, **shape)
    params = sum(p.numel() for p in model.parameters())
    stop = toy_build.stop_at(model, tok, args.stop, toy_build.STUDENT_CHECK) if args.stop > 0 else None
    stats = train(model, tok, data, toy_build.STUDENT_WEIGHTS, cfg, description="train student", on_step=stop)
    acc = evaluate(model, tok, "arith", split="test", n=toy_build.EVAL_N["arith"])
    metrics = {"arith": acc, "train": stats}
    artifacts.save(model, tok, Path(args.out).expanduser(), stage="toy-student-variant",
                   recipe={"shape": shape, "sft": vars(cfg), "weights": toy_build.STUDENT_WEIGHTS,
                           "levels": sorted(levels), "stop": args.stop}, metrics=metrics)
    row = {"student": model_name(args.out), "params_m": round(params / 1e6, 2), "shape": shape,
           "levels": args.levels, "stop": args.stop, "steps": stats["steps"], "arith_test_acc": acc["accuracy"]}
    save("distill", "students", [row], key=("student",), out=args.results,
         about="Toy students of other shapes or data, built by benchmarks/toy_student.py with the toy build's "
               "tokenizer, data, seed and schedule; arith test accuracy (greedy).")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
