"""Where a student goes wrong: the TIP quadrant of its first error in each wrong answer.

For each arith validation prompt the student answers greedily. In every wrong answer, the first position
where the student's argmax differs from the teacher's (both reading the student's own prefix) is
classified by the student's entropy H and the teacher-student JSD D, with absolute thresholds:
Q1 H >= h, D >= d; Q2 H >= h, D < d; Q3 H < h, D >= d ("overconfident"); Q4 H < h, D < d.
If most first errors are uncertain (Q1), Q3-only distillation cannot reach most of them.

    .venv/bin/python benchmarks/first_errors.py                                   # the toy student
    .venv/bin/python benchmarks/first_errors.py --students toy:student,runs/toy-student-l4

Results: table "first errors" of benchmarks/results/distill.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from _common import RESULTS, model_name, save  # noqa: E402


def first_errors(student, teacher, tok, n: int, h: float, d: float) -> dict:
    """Scores and quadrants are the trainer's own (`select.scores`, `select.quadrant_masks`)."""
    import torch

    from slimkit import kernels
    from slimkit.compress.distill.select import quadrant_masks, scores
    from slimkit.tasks import format_prompt, get_task
    from slimkit.tasks.generate import generate

    task = get_task("arith")
    exs = task.split("validation", n)
    prompts = [format_prompt(tok, x.prompt) for x in exs]
    outs = generate(student, tok, prompts, max_new_tokens=160, temperature=0.0, batch_size=64)
    ws, wt = student.get_output_embeddings().weight, teacher.get_output_embeddings().weight
    quadrants: Counter = Counter()
    top_p = []
    wrong = 0
    for x, prompt, out in zip(exs, prompts, outs, strict=True):
        if task.verify(x, out[0].text):
            continue
        wrong += 1
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + tok(out[0].text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():  # hidden states at the positions that predict completion tokens
            hs = student.model(input_ids=ids).last_hidden_state[0, len(p_ids) - 1 : -1]
            ht = teacher.model(input_ids=ids).last_hidden_state[0, len(p_ids) - 1 : -1]
            probs = (hs @ ws.T).softmax(-1)
            where = (probs.argmax(-1) != (ht @ wt.T).argmax(-1)).nonzero()
            if not len(where):
                quadrants["no disagreement"] += 1
                continue
            k = int(where[0])
            sc = scores(hs[k : k + 1], ws, kernels.LiveTeacher(ht[k : k + 1], wt), temperature=1.0,
                        vocab_size=len(tok))
        quadrants.update(q for q, m in quadrant_masks(sc, h, d).items() if bool(m[0]))
        top_p.append(float(probs[k].max()))
    return {"n": n, "wrong": wrong, "quadrants": dict(quadrants),
            "top_prob_median": statistics.median(top_p) if top_p else None,
            "top_prob_ge_0.9": sum(p >= 0.9 for p in top_p)}

ABOUT_FIRST_ERRORS = ("Greedy answers to n arith validation prompts; in each wrong one, the first token where the "
                      "student's argmax differs from the teacher's, by quadrant (Q1 unsure: H >= h, D >= d; Q3 "
                      "overconfident: H < h, D >= d; thresholds in the run's settings), and the student's top "
                      "probability there (median; count >= 0.9).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="toy:teacher")
    ap.add_argument("--students", default="toy:student")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--entropy-threshold", type=float, default=1.0, help="nats")
    ap.add_argument("--divergence-threshold", type=float, default=0.05, help="nats (JSD)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory (default: the record)")
    args = ap.parse_args()

    import torch

    from slimkit import artifacts

    torch.set_num_threads(2)
    teacher, tok = artifacts.load(Path(args.teacher).expanduser())
    teacher.eval()
    rows = []
    for path in args.students.split(","):
        student, stok = artifacts.load(Path(path).expanduser())
        if len(stok) != len(tok):
            sys.exit(f"{path}: tokenizer differs from the teacher's")
        student.eval()
        params = sum(p.numel() for p in student.parameters())
        res = first_errors(student, teacher, tok, args.n, args.entropy_threshold, args.divergence_threshold)
        q = res.pop("quadrants")
        rows.append({"student": model_name(path), "params_m": round(params / 1e6, 2), **res,
                     **{k: q.get(k, 0) for k in ("Q1", "Q3", "Q2", "Q4", "no disagreement")}})
        print(rows[-1], flush=True)

    save("distill", "first errors", rows, key=("student",), about=ABOUT_FIRST_ERRORS,
         settings={"teacher": model_name(args.teacher), "entropy_threshold": args.entropy_threshold,
                   "divergence_threshold": args.divergence_threshold}, out=args.out)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
