"""Record toy-world builds: tables "builds" (one column per build, with the targets) and "build
records" (each build's whole toy.json) of benchmarks/results/toy.{json,md}.

    slimkit toy build --out runs/toy-s1 --seed 1                 # a rebuild (seed, workers, threads)
    .venv/bin/python benchmarks/toy.py --from runs/toy-s1 [--from ...]   # record it
    .venv/bin/python benchmarks/toy.py --from "$(slimkit toy path)"       # the shipped world's build
    .venv/bin/python benchmarks/toy.py                            # build into a temp dir and record

A build is keyed by (version, seed, workers, threads): recording it again replaces its row. `workers`:
data-parallel training processes; `threads`: torch threads in each (builds before workers existed
trained in one process).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _common import RESULTS, provenance, save

# What every build must reach (DESIGN.md's toy world: the same figures on any machine of this kind).
TARGETS = {"teacher arith": 0.85, "teacher jobs AUC": 0.97, "teacher jobs AUC per layout": 0.95,
           "student arith": (0.25, 0.45), "build minutes (idle)": 15}


def row(record: dict) -> dict:
    """One build's figures, and whether each meets its target."""
    t, s = record["models"]["teacher"], record["models"]["student"]
    layouts = t["jobs"].get("auc_by_layout", {})
    out = {"version": record["version"], "seed": record["seed"], "workers": record.get("workers", 1),
           "threads": record["threads"],
           "build seconds": record["build_seconds"], "build CPU seconds": record.get("build_cpu_seconds"),
           "load at start": record.get("loadavg_start"),
           "teacher steps": t["steps"], "teacher train tokens/s": t["train_tokens_per_s"],
           "teacher arith": t["arith"]["accuracy"], "teacher jobs AUC": t["jobs"]["auc"],
           **{f"teacher jobs AUC {k}": v for k, v in layouts.items()},
           "student steps": s["steps"], "student arith": s["arith"]["accuracy"], "student jobs AUC": s["jobs"]["auc"]}
    lo, hi = TARGETS["student arith"]
    out["targets met"] = (out["teacher arith"] >= TARGETS["teacher arith"]
                          and out["teacher jobs AUC"] >= TARGETS["teacher jobs AUC"]
                          and all(v >= TARGETS["teacher jobs AUC per layout"] for v in layouts.values())
                          and lo <= out["student arith"] <= hi)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="src", action="append", default=[],
                    help="record an existing toy world (its toy.json) instead of building one; repeatable")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory (default: the record)")
    args = ap.parse_args()
    if args.src:
        records = [json.loads((Path(src).expanduser() / "toy.json").read_text()) for src in args.src]
    else:
        from slimkit.toy.build import build

        with tempfile.TemporaryDirectory() as tmp:
            records = [build(Path(tmp) / "toy")]
    runs = []
    for record in records:
        run = provenance()
        if args.src:  # the figures come from the build, not from this command
            run["command"] = (f"slimkit toy build --seed {record['seed']} --workers {record.get('workers', 1)} "
                              f"--threads {record['threads']}"
                              if record.get("steps_scale", 1) == 1 else "slimkit toy build (scaled)")
        runs.append(run)
    key = ("version", "seed", "workers", "threads")
    about = ("Targets: " + ", ".join(f"{k} {v if not isinstance(v, tuple) else f'{v[0]}-{v[1]}'}"
                                     for k, v in TARGETS.items())
             + ". Accuracy and AUC on the test split (arith n=600; jobs n=600, about 200 per layout).")
    save("toy", "builds", [{**row(r), "run": run} for r, run in zip(records, runs, strict=True)], key=key,
         about=about, transpose=True, out=args.out)
    save("toy", "build records", [{**r, "run": run} for r, run in zip(records, runs, strict=True)], key=key,
         show=False, out=args.out)
    print((args.out / "toy.md").read_text())


if __name__ == "__main__":
    main()
