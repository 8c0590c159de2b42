"""Why Q3-only selection fails on a small student: it learns to hedge.

Trains the toy student a few dozen OPD steps with each selector (recipes/opd_toy.yaml, on-policy) and,
every few steps, measures the student on fixed reference completions (the arith answers of 256
held-out training prompts, teacher-forced): mean and median entropy, gold-token NLL, token accuracy
(argmax = gold) and sequence accuracy (every token's argmax = gold).

    .venv/bin/python benchmarks/distill_q3_probe.py
    .venv/bin/python benchmarks/distill_q3_probe.py --student runs/toy-student-l4 --set optim.lr=3e-4

Results: table "probe" of benchmarks/results/distill.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from _common import RESULTS, model_name, save  # noqa: E402

SELECTORS = {
    "all": ["select.method=all"],
    "q3": ["select.method=quadrant", "select.quadrants=[Q3]", "select.threshold=absolute",
           "select.entropy_threshold=1.0", "select.divergence_threshold=0.05"],
}

ABOUT_PROBE = ("The student during OPD, every few steps, on fixed teacher-forced reference completions (the arith "
               "answers of 256 held-out training prompts): entropy (nats), gold-token NLL, token accuracy "
               "(argmax = gold) and sequence accuracy (every argmax = gold). tokens_trained: fraction selected "
               "so far; q1_frac: the share of Q1 tokens in the metrics record of that step.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/opd_toy.yaml")
    ap.add_argument("--student", default=None, help="student dir (default: the recipe's)")
    ap.add_argument("--selectors", default="all,q3")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--set", action="append", default=[], help="extra recipe override")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory (default: the record)")
    args = ap.parse_args()

    import torch

    from slimkit.compress.distill import load_recipe
    from slimkit.compress.distill.rollouts import DatasetSource, collate
    from slimkit.compress.distill.trainer import Distiller
    from slimkit.tasks import training_text

    rows = []
    for name in args.selectors.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            sets = [*SELECTORS[name], *args.set, f"out={tmp}", f"train.threads={args.threads}",
                    "train.live_table=false", "train.checkpoint_every=0", "eval.at_start=false",
                    f"train.steps={args.steps}", *([f"student={args.student}"] if args.student else [])]
            d = Distiller(load_recipe(args.recipe, sets))
            ref = list(range(len(d.examples) - 256, len(d.examples)))  # the run's data, never reached in --steps
            src = DatasetSource(d.tok, [d.prompts[i] for i in ref],
                                [training_text(d.tok, d.examples[i])[1] for i in ref])
            batch = collate(src.get(list(range(len(ref)))), d.pad_id)

            @torch.no_grad()
            def probe(d=d, batch=batch) -> dict[str, float]:
                d.student.eval()
                lp = d.student(batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
                d.student.train()
                lp = lp.log_softmax(-1)
                m, gold = batch.target_mask, batch.input_ids[:, 1:]
                ent = -(lp.exp() * lp).sum(-1)[m]
                hit = lp.argmax(-1) == gold
                return {"entropy_mean": ent.mean().item(), "entropy_median": ent.median().item(),
                        "gold_nll": -lp.gather(-1, gold[..., None])[..., 0][m].mean().item(),
                        "token_acc": hit[m].float().mean().item(), "seq_acc": (hit | ~m).all(1).float().mean().item()}

            curve = [{"step": 0, "tokens_trained": None, "q1_frac": None, **probe()}]
            kept = tokens = 0
            for step in range(1, args.steps + 1):
                rec = d.train_step()
                kept, tokens = kept + rec["kept"], tokens + rec["tokens"]
                if step % args.every == 0:
                    curve.append({"step": step, "tokens_trained": kept / tokens, "q1_frac": rec.get("q1_frac"),
                                  **probe()})
                    print(name, curve[-1], flush=True)
            student = model_name(args.student or d.cfg.student)
            rows += [{"student": student, "selector": name, "settings": " ".join(args.set), **r} for r in curve]
            del d

    save("distill", "probe", rows, key=("student", "selector", "settings"), about=ABOUT_PROBE,
         settings={"recipe": args.recipe, "steps": args.steps, "threads": args.threads}, out=args.out)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
