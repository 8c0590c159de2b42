"""Sequence truncation and SODA on the toy world, and truncation's step memory at a realistic shape.

    python benchmarks/distill_truncation.py toy  [--configs r0.5_cot,r1.0_cot] [--steps 150]
    python benchmarks/distill_truncation.py soda [--configs kd,soda_fkl,opd] [--steps 150]
    python benchmarks/distill_truncation.py soda --configs kd,opd --equal-time soda_fkl
    flock /tmp/slimkit-bench.lock python benchmarks/distill_truncation.py timing --steps 10 --repeats 3
    python benchmarks/distill_truncation.py memory [--seqs 4 --seq-len 1040]

toy: KD (forward KL, live teacher) on cached teacher rollouts of arith (temperature 0.7), one
`slimkit distill` subprocess per config, truncation ratio r in {0.25, 0.5, 0.75, 1.0} supervising the
CoT only or every section (P+CoT+A), and by default also CoT+A (the recipe's) at r = 1 and 0.5, and
r = 0.5 as a budget of the step's longest response (`_longest`); arith test accuracy (greedy, 600) of
the start and of each result. `--seed N` runs them with train.seed N (and its own teacher samples).
soda: SODA (DPO vs the cached student snapshot, + forward KL on the teacher response for soda_fkl) vs
plain KD on the same teacher rollouts vs on-policy distillation (OPD, student rollouts), at equal
steps; `--equal-time NAME` reruns the given configs with the steps that fit in NAME's training time.
timing: short runs of a few configs, in rounds, for step-time ratios on a shared machine.
memory: the step of `benchmarks/distill_memory.py` (random init, vocabulary 151936, student hidden 512,
teacher hidden 1024) on sequences of 16 prompt + 1024 response tokens, r = 1 vs r = 0.5.

Results: tables "truncation", "soda", "timing" and "memory" of benchmarks/results/distill_truncation.{json,md,png}.
Timing figures are ratios within one invocation; run it under `flock /tmp/slimkit-bench.lock`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle threads sleep on a shared CPU

from _common import RESULTS, load, save  # noqa: E402

OUT = [RESULTS]  # the results directory (--out)
REUSE = [False]  # --reuse
SEED = [0]  # --seed: train.seed, and the teacher rollouts and student snapshot it samples

AREA = "distill_truncation"
RUNS = Path("runs/distill_truncation")
BASE = ["teacher=toy:teacher", "student=toy:student", "data.task=arith", "data.split=train",
        "rollout.max_new_tokens=160", "rollout.batch_size=64", "loss.kind=forward", "loss.teacher=live",
        "select.method=all", "select.log_quadrants=false", "optim.lr=2e-3", "optim.warmup_steps=10",
        "train.prompts_per_step=32", "train.micro_batch=32", "train.checkpoint_every=0", "train.live_table=false",
        "eval.at_start=false", "eval.split=test", "eval.n=600", "eval.max_new_tokens=160"]
TEACHER = ["rollout.source=teacher", "rollout.temperature=0.7", f"rollout.cache={RUNS}/teacher_rollouts_{{n}}{{s}}.jsonl"]
SECTIONS = {"cot": "[CoT]", "ca": "[CoT, A]", "all": "[P, CoT, A]"}
TOY = {f"r{r}_{s}": [*TEACHER, f"truncation.ratio={r}", f"truncation.supervise={v}"]
       for s, v in SECTIONS.items() for r in (0.25, 0.5, 0.75, 1.0)}
TOY |= {f"{k}_longest": [*v, "truncation.ratio_of=longest"] for k, v in TOY.items() if not k.startswith("r1.0")}
DEFAULT_TOY = [*(f"r{r}_{s}" for s in ("cot", "all") for r in (0.25, 0.5, 0.75, 1.0)), "r1.0_ca", "r0.5_ca",
               "r0.5_ca_longest"]
SNAPSHOT = [*TEACHER, "soda.beta=0.1", "soda.temperature=1.0", f"soda.cache={RUNS}/student_snapshot_{{n}}{{s}}.jsonl"]
SODA = {
    "kd": TEACHER,
    "soda": SNAPSHOT,
    "soda_fkl": [*SNAPSHOT, "soda.mix=forward"],  # soda.rejected auto: wrong (arith has a verifier)
    "soda_fkl_all": [*SNAPSHOT, "soda.mix=forward", "soda.rejected=all"],
    "soda_fkl_first": [*SNAPSHOT, "soda.mix=forward", "soda.contrast=first_divergence"],
    "soda_fkl_w5": [*SNAPSHOT, "soda.mix=forward", "soda.mix_weight=5"],
    # the mix term against the cached top-k teacher (built once on the teacher responses): no live teacher
    "soda_fkl_w5_topk": [*SNAPSHOT, "soda.mix=forward", "soda.mix_weight=5", "loss.teacher=topk"],
    # the mix term also on the contrasted pairs' snapshot responses (the teacher at the student's own states)
    "soda_fkl_w5_both_topk": [*SNAPSHOT, "soda.mix=forward", "soda.mix_weight=5", "soda.mix_on=both", "loss.teacher=topk"],
    "soda_fkl_both_topk": [*SNAPSHOT, "soda.mix=forward", "soda.mix_on=both", "loss.teacher=topk"],
    "soda_fkl_both_topk_b0": [*SNAPSHOT, "soda.mix=forward", "soda.mix_on=both", "loss.teacher=topk", "soda.beta=1e-6"],
    "soda_fkl_w20": [*SNAPSHOT, "soda.mix=forward", "soda.mix_weight=20"],
    "soda_fkl_b0": [*SNAPSHOT, "soda.mix=forward", "soda.beta=1e-6"],  # a check: beta ~ 0 leaves KD's update
    "opd": ["rollout.source=student", "rollout.temperature=1.0"],
}
ABOUT_TOY = ("KD on cached teacher rollouts with `truncation.ratio` r and `truncation.supervise` (cot: [CoT]; ca: "
             "[CoT, A], the recipe's default; all: [P, CoT, A]); ratio_of: response (each response keeps its first r, "
             "the paper) or longest (each keeps at most r x the step's longest response); arith's 'Answer:' closes its reasoning (CoT), the number and EOS are the answer (A); "
             "end_kept: share of kept prefixes that still reach 'Answer:'. gain_vs_r1: accuracy gain over the start "
             "relative to r = 1 with the same sections; step_s: mean over steps 4..; peak_mem_mb: median step peak "
             "(RSS above the step's start); *_vs_r1: against r = 1 with the same sections in the same record.")
ABOUT_SODA = ("Toy world, arith: SODA (DPO of the teacher's response vs the starting student's cached one, on the "
              "pairs whose student response the verifier rejects; soda_fkl adds forward KL on the teacher response, "
              "soda_fkl_first contrasts only the first differing token, soda_fkl_all every pair), KD (forward KL on the same teacher rollouts), OPD (forward "
              "KL on fresh student rollouts). snapshot_s: SODA's one-off student snapshot and reference log-probs; "
              "train_s: sum of step times (rollouts included); wall_s: the whole process (loading, teacher "
              "rollouts when not cached, the final 600-problem eval); step_vs_opd: mean step "
              "time against opd's at equal steps. budget: equal steps, or @NAME: the steps that fit in NAME's train_s.")
ABOUT_TIMING = ("Step time of short runs in one invocation (under the bench lock; only ratios within one invocation "
                "mean anything), glibc's default allocator settings (the step peak is in the other tables): `repeats` "
                "rounds over the configs in turn, each run's mean step_s over its steps 4.. (OPD's includes its "
                "rollouts); step_s: the median over the rounds (min and max beside it); step_vs_base: against `base` "
                "(r = 1 with the same sections; opd for SODA and KD).")
ABOUT_MEM = ("One step of `benchmarks/distill_memory.py`'s worker (random init, vocabulary 151936, student hidden 512, "
             "teacher hidden 1024, its layers) on sequences of 16 prompt + response tokens, truncation.ratio r over "
             "the response (P+CoT+A supervised; no markers: all answer). peak_mem_mb: step peak RSS above the step's "
             "start (glibc mmap threshold 64 KiB); ratios against r = 1 in the same invocation.")


def run(name: str, sets: list[str], steps: int, data_n: int, threads: int, exact_peak: bool = True) -> dict:
    """One `slimkit distill` subprocess (a recipe file of BASE + sets); its step records, final eval, times.
    --reuse: a run whose directory logs all its steps and the final eval is read, not run again.
    exact_peak: glibc's mmap threshold fixed at 64 KiB, so freed tensors leave the RSS at once and each
    step's peak RSS is its own (at the price of page faults on every large allocation: slower steps)."""
    import yaml

    from slimkit.recipe import apply_overrides

    tag = f"_s{SEED[0]}" if SEED[0] else ""  # seed 0 keeps the names it always had
    name += tag
    out = RUNS / name
    if REUSE[0] and (out / "metrics.jsonl").is_file():
        wall = json.loads((out / "wall.json").read_text())["wall_s"] if (out / "wall.json").is_file() else None
        done = result(out, wall)
        if len(done["steps"]) == steps and done["acc"] is not None:  # all steps and the final eval are logged
            return done
    sets = [*BASE, *(s.format(n=data_n, s=tag) for s in sets), f"out={out}", f"train.steps={steps}",
            f"data.n={data_n}", f"train.threads={threads}", f"train.seed={SEED[0]}"]
    recipe = RUNS / f"{name}.yaml"
    RUNS.mkdir(parents=True, exist_ok=True)
    recipe.write_text(yaml.safe_dump(apply_overrides({}, sets)))
    cmd = [sys.executable, "-m", "slimkit.cli", "distill", str(recipe), "--overwrite"]
    print(" ".join(cmd), flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"MALLOC_MMAP_THRESHOLD_": "65536"} if exact_peak else {})}
    t0 = time.time()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if p.returncode:
        sys.exit(f"{name} failed:\n{p.stderr[-3000:]}")
    (out / "wall.json").write_text(json.dumps({"wall_s": wall}) + "\n")
    return result(out, wall)


def result(out: Path, wall: float | None) -> dict:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval_acc"] for r in recs if "eval_acc" in r]
    return {"steps": [r for r in recs if "loss" in r], "acc": evals[-1] if evals else None, "wall_s": wall}


def summary(res: dict) -> dict:
    steady = res["steps"][3:] or res["steps"]
    mean = statistics.fmean
    row = {"steps": len(res["steps"]), "test_acc": res["acc"], "step_s": mean(r["step_s"] for r in steady),
           "peak_mem_mb": statistics.median(r["peak_mem_mb"] for r in steady),
           "train_s": sum(r["step_s"] for r in res["steps"]), "wall_s": res["wall_s"]}
    if "snapshot_s" in res["steps"][0]:
        row["snapshot_s"] = res["steps"][0]["snapshot_s"]
    if "fed_tokens" in res["steps"][0]:
        row |= {"fed_tokens": mean(r["fed_tokens"] for r in res["steps"]),
                "supervised": mean(r["supervised"] for r in res["steps"]),
                "end_kept": mean(r.get("reasoning_end_kept", float("nan")) for r in res["steps"]),
                "gflops_est": mean(r["flops_est"] for r in res["steps"]) / 1e9}
    return row


def start_accuracy(n: int) -> float:
    """The starting student's arith test accuracy (greedy, so deterministic: kept per student weights)."""
    from slimkit import artifacts, toy

    path = toy.resolve("toy:student")
    cache = RUNS / f"start_acc_{artifacts.dir_hash(path)[:16]}_{n}.json"
    if cache.is_file():
        return json.loads(cache.read_text())["accuracy"]
    from slimkit.tasks.eval import evaluate

    model, tok = artifacts.load(path)
    acc = evaluate(model, tok, "arith", split="test", n=n, max_new_tokens=160)["accuracy"]
    RUNS.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"accuracy": acc}) + "\n")
    return acc


def toy_part(args) -> None:
    names = args.configs.split(",") if args.configs else DEFAULT_TOY
    start = start_accuracy(600)
    rows = []
    for name in names:
        res = run(name, TOY[name], args.steps, args.steps * 32, args.threads)
        r, sections, *of = name[1:].split("_")
        rows.append({"config": name, "seed": SEED[0], "ratio": float(r), "supervise": sections,
                     "ratio_of": of[0] if of else "response", "start_acc": start, **summary(res)})
        print(rows[-1], flush=True)
    rows = finish_toy(rows)
    save(AREA, "truncation", rows, key=("config", "seed"), about=ABOUT_TOY, settings=settings(args), plot=plot_toy,
         out=OUT[0])


def finish_toy(new: list[dict]) -> list[dict]:
    """Ratios against r = 1 with the same sections and seed (from this run, else the record)."""
    old = next((t["rows"] for t in load(AREA, OUT[0])["tables"] if t["name"] == "truncation"), [])
    ref = {(r["supervise"], r.get("seed")): r for r in old + new if r["ratio"] == 1.0}
    for r in new:
        base = ref.get((r["supervise"], r["seed"]))
        if base is None:
            continue
        gain = base["test_acc"] - base["start_acc"]
        r["gain_vs_r1"] = (r["test_acc"] - r["start_acc"]) / gain if gain > 0 else None
        for k in ("step_s", "peak_mem_mb", "gflops_est", "fed_tokens"):
            r[f"{k}_vs_r1"] = r[k] / base[k] if base.get(k) else None
    return new


def plot_toy(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = next(t["rows"] for t in load(AREA, OUT[0])["tables"] if t["name"] == "truncation")
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    for s in SECTIONS:  # the mean over seeds at each ratio; r = 1 starts both lines
        for of in ("response", "longest"):
            by: dict[float, list] = {}
            for r in rows:
                if r["supervise"] == s and (r.get("ratio_of", "response") == of or r["ratio"] == 1.0):
                    by.setdefault(r["ratio"], []).append((r["test_acc"], r["step_s"]))
            pts = [(x, statistics.fmean(v[0] for v in vs), statistics.fmean(v[1] for v in vs))
                   for x, vs in sorted(by.items())]
            if len(pts) > 1:
                label, style = (s, "o-") if of == "response" else (f"{s}, ratio of longest", "s--")
                a.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
                b.plot([p[0] for p in pts], [p[2] for p in pts], style, label=label)
    start = rows[0]["start_acc"]
    a.axhline(start, color="gray", ls=":", label="start")
    a.set(xlabel="kept ratio r", ylabel="arith test accuracy", title="accuracy vs r")
    b.set(xlabel="kept ratio r", ylabel="seconds per step", title="step time vs r")
    a.legend()
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def soda_part(args) -> None:
    names = args.configs.split(",") if args.configs else list(SODA)
    start = start_accuracy(600)
    old = next((t["rows"] for t in load(AREA, OUT[0])["tables"] if t["name"] == "soda"), [])
    rows = []
    for name in names:
        steps, budget = args.steps, "equal steps"
        if args.equal_time:
            ref = next(r for r in old if r["config"] == args.equal_time and r["budget"] == "equal steps"
                       and r.get("seed") == SEED[0])
            mine = next(r for r in old if r["config"] == name and r["budget"] == "equal steps" and r.get("seed") == SEED[0])
            steps, budget = max(1, round(ref["train_s"] / mine["step_s"])), f"@{args.equal_time}"
        res = run(f"{name}{'' if budget == 'equal steps' else '_' + budget[1:]}", SODA[name], steps,
                  args.steps * 32, args.threads)
        rows.append({"config": name, "seed": SEED[0], "budget": budget, "start_acc": start, **summary(res)})
        print(rows[-1], flush=True)
    # step times compare only within one invocation (the timing table is the one to read)
    opd = next((r for r in rows if r["config"] == "opd" and r["budget"] == "equal steps"), None)
    for r in rows:
        r["gain_pts"] = 100 * (r["test_acc"] - r["start_acc"])
        r["step_vs_opd"] = r["step_s"] / opd["step_s"] if opd else None
    save(AREA, "soda", rows, key=("config", "budget", "seed"), about=ABOUT_SODA, settings=settings(args), out=OUT[0])


def timing_part(args) -> None:
    """Short runs of a few configs one after another (run it under the bench lock): step-time ratios."""
    names = (args.configs or "r1.0_all,r0.5_all,r1.0_cot,r0.5_cot,soda_fkl,opd").split(",")
    # rounds over every config in turn, so a drift in the machine's speed meets them all alike
    times: dict[str, list[float]] = {name: [] for name in names}
    fed: dict[str, float | None] = {}
    for _ in range(args.repeats):
        for name in names:
            sets = [*(TOY.get(name) or SODA[name]), "eval.n=1"]  # the eval is not what is timed
            # a run directory per data size: its caches (e.g. the top-k teacher) belong to its rollouts
            size = "" if args.data_n == 3200 else f"_n{args.data_n}"
            # glibc's own allocator settings, as a user runs: the step peak is not measured here
            res = run(f"{name}_timing{size}", sets, args.steps, args.data_n, args.threads, exact_peak=False)
            row = summary(res)
            times[name].append(row["step_s"])
            fed[name] = row.get("fed_tokens")
            print(name, row["step_s"], flush=True)
    rows = [{"config": name, "steps": args.steps, "repeats": args.repeats, "step_s": statistics.median(t),
             "step_s_min": min(t), "step_s_max": max(t), "fed_tokens": fed[name]} for name, t in times.items()]
    by = {r["config"]: r for r in rows}
    for r in rows:
        parts = r["config"].split("_")
        base = by.get("opd") if parts[0] in ("soda", "kd") else by.get(f"r1.0_{parts[1]}") if len(parts) > 1 else None
        r["step_vs_base"] = r["step_s"] / base["step_s"] if base else None
        r["base"] = base["config"] if base else None
    save(AREA, "timing", rows, key=("config",), about=ABOUT_TIMING, settings=settings(args), out=OUT[0])


def memory_part(args) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import distill_memory as dm

    rows = []
    with tempfile.TemporaryDirectory(prefix="distill-trunc-") as tmp:
        shape = argparse.Namespace(layers=args.layers, vocab=151936, student_hidden=512, teacher_hidden=1024)
        dm.build_models(Path(tmp), shape)
        for r in (1.0, 0.5):
            cmd = [sys.executable, dm.__file__, "--worker", "all", "--models", tmp, f"--seqs={args.seqs}",
                   f"--seq-len={args.seq_len}", "--steps=1", f"--threads={args.threads}",
                   f"--set=truncation.ratio={r}", "--set=truncation.supervise=[P, CoT, A]", f"--set=out={tmp}/run{r}"]
            env = {**os.environ, "SLIMKIT_KERNEL_BACKEND": "chunked", "MALLOC_MMAP_THRESHOLD_": "65536"}
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if p.returncode:
                sys.exit(f"r={r} failed:\n{p.stderr[-3000:]}")
            rec = json.loads(next(x for x in p.stdout.splitlines() if x.startswith("RESULT "))[7:])["steps"][-1]
            rows.append({"ratio": r, "seqs": args.seqs, "response_tokens": args.seq_len - 16, "tokens": rec["tokens"],
                         "peak_mem_mb": rec["peak_mem_mb"], "step_s": rec["step_s"]})
            print(rows[-1], flush=True)
    for row in rows:
        row["peak_vs_r1"] = row["peak_mem_mb"] / rows[0]["peak_mem_mb"]
        row["step_vs_r1"] = row["step_s"] / rows[0]["step_s"]
    save(AREA, "memory", rows, key=("ratio", "seqs", "response_tokens"), about=ABOUT_MEM, settings=settings(args), out=OUT[0])


def settings(args) -> dict:
    """The arguments that the part uses."""
    used = {"toy": ("configs", "steps", "threads", "seed"), "soda": ("configs", "steps", "threads", "equal_time", "seed"),
            "timing": ("configs", "steps", "threads", "data_n", "repeats"), "memory": ("seqs", "seq_len", "layers", "threads")}
    return {k: getattr(args, k) for k in used[args.part] if getattr(args, k) is not None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["toy", "soda", "timing", "memory"])
    ap.add_argument("--configs", default=None, help="comma-separated names (default: all of the part)")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--equal-time", default=None, help="soda: steps that fit in this config's train_s")
    ap.add_argument("--data-n", type=int, default=3200, help="timing: prompts (3200: the toy runs' teacher cache)")
    ap.add_argument("--repeats", type=int, default=3, help="timing: rounds over the configs (the median is kept)")
    ap.add_argument("--seqs", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=1040)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory (default: the record)")
    ap.add_argument("--reuse", action="store_true", help="read runs that already finished instead of running them")
    ap.add_argument("--seed", type=int, default=0, help="train.seed (also the teacher and student samples)")
    args = ap.parse_args()
    OUT[0], REUSE[0], SEED[0] = args.out, args.reuse, args.seed
    {"toy": toy_part, "soda": soda_part, "timing": timing_part, "memory": memory_part}[args.part](args)


if __name__ == "__main__":
    main()
