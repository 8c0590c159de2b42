"""Where a student goes wrong: the TIP quadrant of its first error in each wrong answer.

For each arith validation prompt the student answers greedily. In every wrong answer, the first position
where the student's argmax differs from the teacher's (both reading the student's own prefix) is
classified by the student's entropy H and the teacher-student JSD D, with absolute thresholds:
Q1 H >= h, D >= d; Q2 H >= h, D < d; Q3 H < h, D >= d ("overconfident"); Q4 H < h, D < d.
If most first errors are uncertain (Q1), Q3-only distillation cannot reach most of them.

    .venv/bin/python benchmarks/first_errors.py                                   # the toy student
    .venv/bin/python benchmarks/first_errors.py --students toy:student,runs/toy-student-l4

Writes benchmarks/results/first_errors.{json,md} (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def first_errors(student, teacher, tok, n: int, h: float, d: float) -> dict:
    """Scores and quadrants are the trainer's own (`losses.scores`, `select.quadrant_masks`)."""
    import torch

    from slimkit.compress.distill.losses import Teacher, lm_head, scores
    from slimkit.compress.distill.select import quadrant_masks
    from slimkit.tasks import format_prompt, get_task
    from slimkit.tasks.generate import generate

    task = get_task("arith")
    exs = task.split("validation", n)
    prompts = [format_prompt(tok, x.prompt) for x in exs]
    outs = generate(student, tok, prompts, max_new_tokens=160, temperature=0.0, batch_size=64)
    ws, wt = lm_head(student)[0], lm_head(teacher)[0]
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
            sc = scores(hs[k : k + 1], ws, Teacher(hidden=ht[k : k + 1], weight=wt), temperature=1.0,
                        vocab_size=len(tok))
        quadrants.update(q for q, m in quadrant_masks(sc, h, d).items() if bool(m[0]))
        top_p.append(float(probs[k].max()))
    return {"n": n, "wrong": wrong, "quadrants": dict(quadrants),
            "top_prob_median": statistics.median(top_p) if top_p else None,
            "top_prob_ge_0.9": sum(p >= 0.9 for p in top_p)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="toy:teacher")
    ap.add_argument("--students", default="toy:student")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--entropy-threshold", type=float, default=1.0, help="nats")
    ap.add_argument("--divergence-threshold", type=float, default=0.05, help="nats (JSD)")
    ap.add_argument("--out", default="benchmarks/results/first_errors")
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
        shown = str(Path(path).expanduser()).replace(str(Path.home()), "~", 1)
        rows.append({"student": shown, "params": params,
                     **first_errors(student, teacher, tok, args.n, args.entropy_threshold, args.divergence_threshold)})
        print(rows[-1], flush=True)

    meta = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": platform.platform(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "teacher": args.teacher,
            "entropy_threshold": args.entropy_threshold, "divergence_threshold": args.divergence_threshold}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    md = [f"# Quadrant of the student's first error (arith validation, greedy)\n\n`{meta['command']}`  \n"
          f"{meta['machine']}, {meta['time']}; thresholds H {args.entropy_threshold} nats, "
          f"JSD {args.divergence_threshold} nats\n",
          "| student | params | wrong / n | Q1 (unsure) | Q3 (overconfident) | Q2 | Q4 | no disagreement "
          "| student top-prob at the error: median, ≥ 0.9 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        q = r["quadrants"]
        md.append(f"| {r['student']} | {r['params'] / 1e6:.2f}M | {r['wrong']} / {r['n']} | {q.get('Q1', 0)} | "
                  f"{q.get('Q3', 0)} | {q.get('Q2', 0)} | {q.get('Q4', 0)} | {q.get('no disagreement', 0)} | "
                  f"{r['top_prob_median']:.2f}, {r['top_prob_ge_0.9']} |")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
