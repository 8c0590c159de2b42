"""The distillation reproduction table: every method on the toy world, equal step budgets, one seed.

Each row (ROWS, a registry) is a recipe under recipes/repro/ plus `--set` overrides, run by
`slimkit distill` in its own process (its whole-process peak RSS is that process's, from wait4). The
columns come from the run's metrics log: arith validation accuracy (overall and per level) and mean
generated tokens per answer at the last eval, the accuracy and tokens at step 0, the fraction of
supervised tokens trained on, the median step time (rollouts included), the whole-process peak
(what decides an out-of-memory: the larger of wait4's peak RSS and every step's start RSS plus
its step peak) and the largest step peak (RSS over a step minus RSS at its start).
Two PNGs: validation accuracy against step for every row (distill.png), and the student-entropy x
teacher-student-divergence scatter of one batch of student rollouts with the quadrants and the tokens
two selectors keep (distill_scatter.png).

    python benchmarks/distill.py                          # every row: benchmarks/results/distill.{json,md,png}
    python benchmarks/distill.py --rows opd_all,bridge    # some rows (the others stay in the record)
    python benchmarks/distill.py --quick --out /tmp/d     # every row for 2 steps: a check that each is produced

Rows run --jobs at a time (default 2, one CPU thread each on this 2-core machine; the largest first),
TRL's row among them on the same terms, the whole table under an exclusive lock on --lock (the
machine's timing lock): a row shares the CPU only with another of the table's rows, each on its own core.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle threads sleep on a shared CPU

from _common import RESULTS, ROOT, save  # noqa: E402

RECIPES = ROOT / "recipes" / "repro"
Q3 = ("select.method=quadrant", "select.threshold=absolute", "select.entropy_threshold=1.0",
      "select.divergence_threshold=0.05")


@dataclass(frozen=True)
class Row:
    recipe: str
    about: str
    sets: tuple[str, ...] = ()
    trl: bool = False  # run by TRL's GKDTrainer (benchmarks/distill_trl.py, in .venv-trl)


ROWS: dict[str, Row] = {
    "opd_all": Row("opd.yaml", "all-token OPD (student rollouts, live teacher, forward KL)"),
    "tip_entropy_top50": Row("opd.yaml", "TIP: the 50% highest-entropy tokens",
                             ("select.method=entropy_top", "select.ratio=0.5")),
    "tip_entropy_sample50": Row("opd.yaml", "TIP: 50% sampled by (H/ln V)(D/ln 2)",
                                ("select.method=entropy_sample", "select.ratio=0.5")),
    "q3_only": Row("opd.yaml", "Q3 only: H < 1 nat, JSD >= 0.05", (*Q3, "select.quadrants=[Q3]")),
    "q1_q3": Row("opd.yaml", "Q1 or Q3: JSD >= 0.05", (*Q3, "select.quadrants=[Q1, Q3]")),
    "kd_topk": Row("kd_topk.yaml", "forward-KL KD on cached teacher rollouts, top-32 cached teacher"),
    "bridge": Row("bridge.yaml", "bridge: KD on teacher rollouts (1/3 of the steps), then OPD"),
    "paced_off": Row("paced.yaml", "G=4 rollouts per prompt, unweighted", ("weighting.method=none",)),
    "paced_on": Row("paced.yaml", "PACED: G=4, w = p(1-p), w=0 prompts dropped"),
    "forward_then_reverse": Row("forward_then_reverse.yaml", "PACED forward KL, then PACED reverse KL"),
    "opsdc_teacher": Row("opsdc.yaml", "OPSDC on the teacher: itself + \"Be concise.\", forward KL"),
    "opsdc_teacher_reverse": Row("opsdc.yaml", "OPSDC as above with the paper's reverse KL", ("loss.kind=reverse",)),
    "trl_gkd": Row("opd.yaml", "opd_all's recipe through TRL's GKDTrainer (lmbda 1, beta 0: forward KL; fp32, "
                   "KV cache on)", trl=True),
}
TRL_PYTHON = ROOT / ".venv-trl" / "bin" / "python"
# a row's time relative to opd_all's (roughly): the scheduling order, largest first
COST = {"opsdc_teacher": 2.3, "opsdc_teacher_reverse": 2.3, "trl_gkd": 1.2}

# --quick: every row for two steps on small batches (stages: one step each)
QUICK = {"data.n": 64, "train.prompts_per_step": 4, "rollout.max_new_tokens": 24, "eval.max_new_tokens": 24,
         "eval.n": 8, "eval.every": 2, "train.threads": 1}

ABOUT = ("One `slimkit distill` process per row (recipe under recipes/repro/, the row's overrides in "
         "`sets`), same seed and step budget. acc*: arith validation accuracy at the last eval (greedy; "
         "L1-L3: per level), start_acc at step 0; tokens: mean generated tokens per answer (start_tokens "
         "at step 0); tokens_trained: supervised tokens trained on / tokens scored; teacher_saved: share of "
         "the rollout tokens PACED dropped before the teacher ran; step_s: median step time (rollouts "
         "included); process_peak_mb: the row's whole-process peak RSS over its steps; step_peak_mb: largest step peak "
         "(RSS over the step minus RSS at its start).")


def recipe_for(name: str, quick: bool, runs: Path, threads: int | None = None) -> Path:
    """The row's effective recipe, written beside its run directory (validated before it runs);
    `threads`: its train.threads (default: the recipe's)."""
    import yaml

    from slimkit.compress.distill import load_recipe
    from slimkit.recipe import apply_overrides, load_yaml

    row = ROWS[name]
    data = apply_overrides(load_yaml(RECIPES / row.recipe), [*row.sets, f"out={runs / name}",
                                                             *([f"train.threads={threads}"] if threads else [])])
    if quick:
        data = apply_overrides(data, [f"{k}={v}" for k, v in QUICK.items()])
        if data.get("stages"):
            for stage in data["stages"]:
                stage["steps"] = 1
        else:
            data = apply_overrides(data, ["train.steps=2"])
    path = runs / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    load_recipe(path)
    return path


def run_row(name: str, recipe: Path, runs: Path) -> dict:
    """Run one row in its own process; its metrics summarised, with the process's peak RSS."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    cmd = ([str(TRL_PYTHON), str(ROOT / "benchmarks" / "distill_trl.py"), str(recipe)] if ROWS[name].trl else
           [sys.executable, "-m", "slimkit.cli", "distill", str(recipe), "--overwrite"])
    t0 = time.perf_counter()
    with open(runs / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        tail = (runs / f"{name}.log").read_text()[-2000:]
        raise SystemExit(f"row {name} failed (exit {proc.returncode}):\n{tail}")
    recs = [json.loads(x) for x in (runs / name / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    evals = [r for r in recs if "eval_acc" in r]
    first, last = evals[0], evals[-1]
    out = {"row": name, "method": ROWS[name].about, "sets": " ".join(ROWS[name].sets), "steps": last["step"],
           "start_acc": first["eval_acc"], "acc": last["eval_acc"]}
    out.update({f"acc_L{lv}": last.get(f"eval_acc_level_{lv}") for lv in (1, 2, 3)})
    tokens = sum(r["tokens"] for r in steps)
    out.update({"start_tokens": first["eval_tokens"], "tokens": last["eval_tokens"],
                "tokens_trained": sum(r["kept"] for r in steps) / max(tokens, 1),
                "teacher_saved": (statistics.mean(r["teacher_saved_frac"] for r in steps)
                                  if "teacher_saved_frac" in steps[0] else None),
                "step_s": statistics.median(r["step_s"] for r in steps), "wall_s": wall,
                # the kernel's high-water mark is reset at every step (the step peaks): take the larger of
                # the process's RSS peak since then and every step's start RSS + step peak
                "process_peak_mb": max(usage.ru_maxrss / 1024, max(r["mem_start_mb"] + r["peak_mem_mb"] for r in steps)),
                "step_peak_mb": max(r["peak_mem_mb"] for r in steps),
                "curve": [[r["step"], r["eval_acc"], r["eval_tokens"]] for r in evals]})
    return out


def batch_scores(runs: Path, quick: bool) -> dict:
    """Per-token student entropy and teacher-student JSD of one batch of toy-student rollouts (the first
    step's, as opd_all trains on them), and the tokens two selectors keep."""
    import torch

    from slimkit.compress.distill import load_recipe
    from slimkit.compress.distill.config import SelectConfig
    from slimkit.compress.distill.hidden import supervised
    from slimkit.compress.distill.rollouts import collate
    from slimkit.compress.distill.select import keep_mask, scores
    from slimkit.compress.distill.trainer import Distiller, step_indices

    recipe = recipe_for("opd_all", quick, runs / "scatter")
    d = Distiller(load_recipe(recipe, ["eval.at_start=false"]), overwrite=True)
    idx = step_indices(0, len(d.examples), d.cfg.train.prompts_per_step, d.cfg.train.seed)
    part = d.source.get(idx, model=d.student, seed=d._seed(0, 0, -1))
    batch = collate(part, d.pad_id)
    with torch.no_grad():
        h = supervised(d.model(batch.input_ids, batch.attention_mask), batch)
        sc = scores(h, d.student.get_output_embeddings().weight, d._teacher_rows(batch, part), temperature=1.0,
                    vocab_size=len(d.tok))
    q3 = SelectConfig(method="quadrant", quadrants=["Q3"], threshold="absolute", entropy_threshold=1.0,
                      divergence_threshold=0.05)
    return {"entropy": sc.entropy.tolist(), "divergence": sc.divergence.tolist(),
            "entropy_top50": keep_mask(SelectConfig(method="entropy_top", ratio=0.5), sc).tolist(),
            "q3": keep_mask(q3, sc).tolist(), "h": 1.0, "d": 0.05}


def plot_curves(rows: list[dict]):
    def plot(path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 5))
        for r in rows:
            steps, acc = zip(*[(s, a) for s, a, _ in r["curve"]], strict=True)
            ax.plot(steps, acc, marker="o", label=r["row"])
        ax.set(xlabel="step", ylabel="arith validation accuracy", title="Toy-world distillation: accuracy vs step")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=110)
        plt.close(fig)

    return plot


def plot_scatter(s: dict):
    def plot(path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 5))
        h, d = s["entropy"], s["divergence"]
        top, q3 = s["entropy_top50"], s["q3"]
        ax.scatter(h, d, s=6, c="lightgray", label="all tokens")
        ax.scatter([x for x, k in zip(h, top, strict=True) if k], [y for y, k in zip(d, top, strict=True) if k],
                   s=6, c="tab:blue", label="entropy_top 50%")
        ax.scatter([x for x, k in zip(h, q3, strict=True) if k], [y for y, k in zip(d, q3, strict=True) if k],
                   s=10, c="tab:red", marker="x", label="Q3 (H < 1, JSD >= 0.05)")
        ax.axvline(s["h"], color="k", lw=0.8)
        ax.axhline(s["d"], color="k", lw=0.8)
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_ylim(bottom=0)
        for text, x, y in (("Q1", 0.98, 0.98), ("Q2", 0.98, 0.02), ("Q3", 0.02, 0.98), ("Q4", 0.02, 0.02)):
            ax.text(x, y, text, transform=ax.transAxes, ha="right" if x > 0.5 else "left",
                    va="top" if y > 0.5 else "bottom", fontsize=12)
        ax.set(xlabel="student entropy H (nats)", ylabel="teacher-student JSD (nats)",
               title=f"One batch of toy-student rollouts ({len(h)} tokens)")
        ax.legend(fontsize=8, loc="center right")
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=110)
        plt.close(fig)

    return plot


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    ap.add_argument("--quick", action="store_true", help="two steps per row on small batches (a check, not figures)")
    ap.add_argument("--runs", type=Path, default=None, help="run directories (default runs/repro[-quick])")
    ap.add_argument("--out", type=Path, default=None, help="results directory (default: the record; "
                                                             "--quick: RUNS/results)")
    ap.add_argument("--lock", type=Path, default=Path("/tmp/slimkit-bench.lock"),
                    help="held while the table runs (timing runs never overlap); '' for none")
    ap.add_argument("--jobs", type=int, default=2, help="rows at a time (each gets cores / jobs threads)")
    args = ap.parse_args()
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    unknown = sorted(set(names) - ROWS.keys())
    if unknown:
        ap.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    if not TRL_PYTHON.exists():
        skipped = [n for n in names if ROWS[n].trl]
        names = [n for n in names if not ROWS[n].trl]
        if skipped:
            print(f"skipping {', '.join(skipped)}: no .venv-trl (make trl-env)", file=sys.stderr)
    runs = (args.runs or ROOT / "runs" / ("repro-quick" if args.quick else "repro")).resolve()
    out = args.out or (runs / "results" if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    jobs, cores = max(1, args.jobs), os.cpu_count() or 1
    threads = None if args.quick else max(1, cores // jobs)  # every row, TRL's included
    recipes = {n: recipe_for(n, args.quick, runs, threads) for n in names}  # all validate first
    settings = {"quick": args.quick, "rows": names, "jobs": jobs}
    order = sorted(names, key=lambda n: -COST.get(n, 1))  # largest first
    lock = args.lock if str(args.lock) not in ("", ".") else None
    with open(lock, "w") if lock else open(os.devnull) as held, ThreadPoolExecutor(jobs) as pool:
        if lock:
            fcntl.flock(held, fcntl.LOCK_EX)
        futures = [pool.submit(run_row, n, recipes[n], runs) for n in order]
        for done in as_completed(futures):
            row = done.result()  # each row is recorded as soon as it has run
            print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
            save("distill", "rows", [{k: v for k, v in row.items() if k != "curve"}], key=["row"], about=ABOUT,
                 settings=settings, out=out)
            save("distill", "curves", [{"row": row["row"], "step": s, "acc": a, "tokens": t} for s, a, t in row["curve"]],
                 key=["row", "step"], show=False, settings=settings, out=out,
                 about="Validation accuracy and tokens per answer at every eval of every row (distill.png).",
                 plot=lambda path: plot_curves(_all_curves(out))(path))  # the record on disk, this row merged
    sc = batch_scores(runs, args.quick)
    total = len(sc["entropy"])
    hi_h = [x >= sc["h"] for x in sc["entropy"]]
    hi_d = [y >= sc["d"] for y in sc["divergence"]]
    quads = {"Q1": (True, True), "Q2": (True, False), "Q3": (False, True), "Q4": (False, False)}
    summary = {"tokens": total, **{q: sum((a, b) == hd for a, b in zip(hi_h, hi_d, strict=True)) / total
                                   for q, hd in quads.items()},
               "entropy_top50_kept": sum(sc["entropy_top50"]) / total, "q3_kept": sum(sc["q3"]) / total}
    save("distill", "scatter", [summary], settings=settings, out=out, plot=plot_scatter(sc), plot_name="scatter",
         about="One batch of toy-student rollouts scored by the toy teacher (distill_scatter.png): share of "
               "tokens per quadrant (H >= 1 nat: Q1, Q2; JSD >= 0.05 nats: Q1, Q3) and kept by two selectors.")


def _all_curves(out: Path) -> list[dict]:
    """The curve of every row in the record."""
    from _common import load

    table = next((t for t in load("distill", out)["tables"] if t["name"] == "curves"), {"rows": []})
    by_row: dict[str, list] = {}
    for c in table["rows"]:
        by_row.setdefault(c["row"], []).append([c["step"], c["acc"], c["tokens"]])
    return [{"row": k, "curve": sorted(v)} for k, v in by_row.items()]


if __name__ == "__main__":
    main()
