"""Structured pruning of the toy teacher: size, quality and CPU forward time, before and after recovery.

For each parameter cut (20/40/60%) and axis set (width, depth, both), the teacher is pruned with
activation importance (measured once); the 40% width cut is also pruned with random importance of
the same widths (the baseline). Chosen cuts are recovered by `slimkit distill` with the recovery
recipe (the parent is the teacher), several runs at once (`--jobs`), each timed by its own CPU
seconds (one thread: CPU seconds are the wall time of the run on an unshared core). Every model is
evaluated on arith (test, greedy) and jobs (test, AUC); the forward time of a batch of jobs prompts
(last-position logits, as a scorer runs it) is measured for all models in one process, round-robin,
under the shared benchmark lock, and reported as a ratio to the parent's.

    .venv/bin/python benchmarks/prune.py                                  # recover the 40% rows
    .venv/bin/python benchmarks/prune.py --recover 0.2,0.4,0.6 --jobs 3
    .venv/bin/python benchmarks/prune.py --reuse     # after an interruption: keep what --runs holds

Results: table "toy" of benchmarks/results/prune.{json,md} and prune.png (quality against parameters).
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
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle threads sleep on a shared CPU

from _common import RESULTS, save  # noqa: E402

AXES = {"width": {"width"}, "depth": {"depth"}, "both": {"width", "depth"}}
LOCK = "/tmp/slimkit-bench.lock"
ABOUT = ("The toy teacher (Qwen3, hidden 128, 4 layers, MLP 512) pruned by `slimkit.compress.prune` with "
         "activation importance (`random`: random importance, same widths) at each parameter cut and axis "
         "set, before and after recovery (`slimkit distill` with the recovery recipe, the parent as "
         "teacher; recovery_cpu_s: CPU seconds of the whole run, 1 thread). arith: test accuracy (greedy); "
         "jobs: test AUC (eval_n: examples of each; fewer before recovery); forward_ratio: median CPU forward time of a batch of jobs prompts (last-position "
         "logits, 1 thread) over the parent's, measured round-robin in one process under the benchmark lock.")


def prune_all(args, runs: Path) -> list[dict]:
    """Prune every (cut, axes) with one importance measurement; the random baseline at 40% width."""
    import torch

    from slimkit import artifacts
    from slimkit.compress.prune import prune_model
    from slimkit.compress.prune.importance import calibration_texts, measure, random_scores

    parent, tok = artifacts.load("toy:teacher")
    imp = None
    todo = [(cut, axes, "activation") for cut in args.cuts for axes in args.axes]
    todo += [(0.4, "width", "random")] if args.random else []
    rows = []
    for cut, axes, method in todo:
        name = f"{axes}-{round(cut * 100)}" + ("-random" if method == "random" else "")
        out = runs / name
        if args.reuse and artifacts.is_slimkit_output(out):
            info = artifacts.read_manifest(out)["pruning"]
        else:
            if imp is None:
                imp = measure(parent, tok, calibration_texts(tok, tasks=["arith", "jobs"], n=args.calib_n))
            scores = imp if method == "activation" else random_scores(parent.config, seed=0)
            model, info = prune_model(parent, tok, keep=1 - cut, axes=AXES[axes], fixed={}, imp=scores)
            with torch.no_grad():
                artifacts.save(model, tok, out, stage="prune", parent="toy:teacher", pruning=info, overwrite=True)
        s = info["shape"]["pruned"]
        rows.append({"model": name, "axes": axes, "cut": cut, "importance": method, "stage": "pruned",
                     "hidden": s["hidden"], "mlp": s["mlp"], "kv_heads": s["kv_heads"], "layers": s["layers"],
                     "params": info["params"]["pruned"], "dir": str(out)})
        print(f"pruned {name}: {s}", flush=True)
    return rows


def recover_all(args, rows: list[dict], runs: Path) -> list[dict]:
    """`slimkit distill RECIPE` per chosen row, `--jobs` at a time; CPU seconds per run from wait4."""
    chosen = [r for r in rows if r["importance"] == "activation" and r["cut"] in args.recover]
    queue, running, done = [], {}, []
    for r in chosen:
        run = runs / f"{r['model']}-run"
        if args.reuse and (run / "student" / "slimkit.json").is_file() and (run / "cpu.json").is_file():
            done.append(finished(r, run, json.loads((run / "cpu.json").read_text())))
        else:
            queue.append(r)
    while queue or running:
        while queue and len(running) < args.jobs:
            r = queue.pop(0)
            run = runs / f"{r['model']}-run"
            sets = ["teacher=toy:teacher", f"student={r['dir']}", f"out={run}", "train.live_table=false", *args.set]
            cmd = [sys.executable, "-m", "slimkit.cli", "distill", args.recipe, "--overwrite"]
            cmd += [a for s in sets for a in ("--set", s)]
            log = open(runs / f"{r['model']}-run.log", "w")
            p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            running[p.pid] = (p, r, run, time.time(), log)
            print(f"recovering {r['model']}: {' '.join(cmd)}", flush=True)
        pid, status, usage = os.wait4(-1, 0)
        if pid not in running:
            continue
        p, r, run, t0, log = running.pop(pid)
        log.close()
        if status:
            sys.exit(f"recovery of {r['model']} failed: see {runs / (r['model'] + '-run.log')}")
        cpu = {"cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": time.time() - t0}
        (run / "cpu.json").write_text(json.dumps(cpu) + "\n")
        done.append(finished(r, run, cpu))
        print(f"recovered {r['model']}: {cpu['cpu_s']:.0f} CPU s", flush=True)
    return done


def finished(row: dict, run: Path, cpu: dict) -> dict:
    steps = sum(1 for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x)
    return {**row, "stage": "recovered", "dir": str(run / "student"), "recovery_steps": steps,
            "recovery_cpu_s": cpu["cpu_s"], "recovery_wall_s": cpu["wall_s"]}


def eval_one(job: tuple[str, str, int]) -> dict:
    """One model on one task (a worker of evaluate_all's pool, one thread)."""
    import torch

    from slimkit import artifacts
    from slimkit.tasks.eval import evaluate

    torch.set_num_threads(1)
    path, task, n = job
    model, tok = artifacts.load(path)
    return evaluate(model, tok, task, n=n)


def evaluate_all(args, rows: list[dict], runs: Path) -> None:
    """arith test accuracy and jobs test AUC of every model (`--eval-jobs` processes); the pruned
    models before recovery on fewer examples (`--pruned-n`) than the parent and the recovered ones."""
    import multiprocessing

    from slimkit import artifacts

    todo, files = [], {}
    for r in rows:
        model, _ = artifacts.load(r["dir"], with_tokenizer=False)
        r["params"] = sum(p.numel() for p in model.parameters())
        r["size_mb"] = sum(f.stat().st_size for f in Path(r["dir"]).glob("*.safetensors")) / 2**20
        small = r["stage"] == "pruned"
        for task, n in (("arith", args.pruned_n[0] if small else args.arith_n),
                        ("jobs", args.pruned_n[1] if small else args.jobs_n)):
            out = runs / "evals" / f"{r['model']}-{r['stage']}-{task}-{n}.json"
            files[(r["model"], r["stage"], task)] = out
            if not (args.reuse and out.is_file()):
                todo.append(((r["dir"], task, n), out))
    (runs / "evals").mkdir(exist_ok=True)
    with multiprocessing.get_context("fork").Pool(args.eval_jobs) as pool:
        for (_, out), res in zip(todo, pool.imap(eval_one, [job for job, _ in todo]), strict=True):
            out.write_text(json.dumps(res) + "\n")
    for r in rows:
        ev = {t: json.loads(files[(r["model"], r["stage"], t)].read_text()) for t in ("arith", "jobs")}
        r["arith"], r["jobs_auc"] = ev["arith"]["accuracy"], ev["jobs"]["auc"]
        r["eval_n"] = f"{ev['arith']['n']}/{ev['jobs']['n']}"
        print(f"{r['model']} {r['stage']}: arith {r['arith']:.3f} jobs {r['jobs_auc']:.3f}", flush=True)


def forward_times(args, rows: list[dict]) -> None:
    """Median forward time per model over round-robin repeats, as a ratio to the parent's."""
    import torch

    from slimkit import artifacts
    from slimkit.tasks import format_prompt, get_task
    from slimkit.tasks.generate import _left_pad

    models = [artifacts.load(r["dir"])[0] for r in rows]
    tok = artifacts.load_tokenizer(rows[0]["dir"])
    prompts = [format_prompt(tok, ex.prompt) for ex in get_task("jobs").split("test", args.batch)]
    ids, mask = _left_pad([tok(p, add_special_tokens=False).input_ids for p in prompts], tok.pad_token_id)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    times: list[list[float]] = [[] for _ in models]
    with open(LOCK, "w") as lock, torch.inference_mode():
        fcntl.flock(lock, fcntl.LOCK_EX)
        for _ in range(args.repeats + 1):           # the first round warms up and is dropped
            for i, m in enumerate(models):
                t0 = time.perf_counter()
                m(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=1)
                times[i].append(time.perf_counter() - t0)
    base = statistics.median(times[0][1:])
    for r, t in zip(rows, times, strict=True):
        r["forward_ms"] = 1000 * statistics.median(t[1:])
        r["forward_ratio"] = statistics.median(t[1:]) / base


def plot(rows: list[dict]):
    def draw(path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axs = plt.subplots(1, 2, figsize=(10, 4))
        for ax, key, label in ((axs[0], "arith", "arith accuracy"), (axs[1], "jobs_auc", "jobs AUC")):
            for (axes, stage), marker in {(a, s): m for a, m in zip(AXES, "os^", strict=True)
                                          for s in ("pruned", "recovered")}.items():
                pts = sorted((r["params"], r[key]) for r in rows if r.get("axes") == axes and r["stage"] == stage
                             and r["importance"] == "activation")
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker=marker, linestyle="-" if stage == "recovered" else ":",
                            label=f"{axes}, {stage}")
            for r in rows:
                if r["stage"] == "parent" or r["importance"] == "random":
                    ax.plot(r["params"], r[key], "k*" if r["stage"] == "parent" else "rx", markersize=10,
                            label="parent" if r["stage"] == "parent" else "random importance, pruned")
            ax.set_xlabel("parameters")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axs[1].legend(fontsize=7)
        fig.suptitle("toy teacher pruned: quality against parameters")
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=110)
        plt.close(fig)
    return draw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cuts", default="0.2,0.4,0.6", help="parameter cuts (0.4 removes 40%%)")
    ap.add_argument("--axes", default="width,depth,both")
    ap.add_argument("--recover", default="0.4", help="cuts to recover (comma list; '' for none)")
    ap.add_argument("--recipe", default="recipes/prune_recover_toy.yaml")
    ap.add_argument("--set", action="append", default=[], help="recipe override for every recovery")
    ap.add_argument("--jobs", type=int, default=3, help="recoveries at once (one thread each)")
    ap.add_argument("--eval-jobs", type=int, default=4, help="evaluation processes (one thread each)")
    ap.add_argument("--reuse", action="store_true",
                    help="keep the pruned models, recoveries and evals already in --runs")
    ap.add_argument("--no-random", dest="random", action="store_false", help="skip the random-importance row")
    ap.add_argument("--calib-n", type=int, default=128)
    ap.add_argument("--arith-n", type=int, default=300)
    ap.add_argument("--jobs-n", type=int, default=600)
    ap.add_argument("--pruned-n", default="100,300", help="arith,jobs examples for the models before recovery")
    ap.add_argument("--batch", type=int, default=32, help="jobs prompts per timed forward")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--runs", type=Path, default=Path("runs/prune_bench"))
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory (default: the record)")
    args = ap.parse_args()
    args.cuts = [float(c) for c in args.cuts.split(",")]
    args.axes = args.axes.split(",")
    args.recover = [float(c) for c in args.recover.split(",") if c]
    args.pruned_n = [int(x) for x in args.pruned_n.split(",")]

    import torch

    from slimkit import toy

    torch.set_num_threads(1)
    args.runs.mkdir(parents=True, exist_ok=True)
    pruned = prune_all(args, args.runs)
    recovered = recover_all(args, pruned, args.runs)
    rows = [{"model": "parent", "axes": None, "cut": 0.0, "importance": None, "stage": "parent",
             "hidden": 128, "mlp": 512, "kv_heads": 2, "layers": 4, "dir": str(toy.resolve("toy:teacher"))}]
    rows += pruned + recovered
    evaluate_all(args, rows, args.runs)
    forward_times(args, rows)
    parent = rows[0]
    for r in rows:
        r["params_frac"] = r["params"] / parent["params"]
        r["arith_vs_parent"] = r["arith"] / parent["arith"]
        r["jobs_vs_parent"] = r["jobs_auc"] / parent["jobs_auc"]
        r.pop("dir")
    settings = {"recipe": args.recipe, "set": " ".join(args.set), "arith_n": args.arith_n, "jobs_n": args.jobs_n,
                "pruned_n": args.pruned_n, "calib_n": args.calib_n, "batch": args.batch, "repeats": args.repeats}
    save("prune", "toy", rows, key=("model", "stage"), about=ABOUT, settings=settings, plot=plot(rows), out=args.out)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
