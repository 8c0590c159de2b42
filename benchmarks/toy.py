"""Build the toy world and record its figures in benchmarks/results/toy.{json,md}.

    .venv/bin/python benchmarks/toy.py                 # full build into a fresh temp dir (~10 min idle)
    .venv/bin/python benchmarks/toy.py --from DIR      # record an existing build (e.g. ~/.cache/slimkit/toy-v2)

Records build time, per-model training speed, teacher/student arith accuracy per level and style,
answer lengths, generation speed, and jobs AUC/accuracy, with the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}


def markdown(record: dict, command: str, mach: dict) -> str:
    t, s = record["models"]["teacher"], record["models"]["student"]
    lines = [
        "# Toy world build",
        "",
        f"Command: `{command}`",
        f"Machine: {mach['cpu']}, {mach['cores']} cores, torch {mach['torch']}; "
        f"load average {record.get('loadavg_start', float('nan')):.1f} at start, "
        f"{record.get('loadavg_end', float('nan')):.1f} at end (the build's own 2 threads count in the load).",
        "",
        f"Whole build: **{record['build_seconds']:.0f} s** with {record['threads']} threads, "
        f"steps x{record['steps_scale']:g}, vocab {record['vocab']}.",
        "",
        "| | teacher | student |",
        "|---|---|---|",
        f"| shape | {t['shape']} | {s['shape']} |",
        f"| parameters | {t['params'] / 1e6:.2f}M | {s['params'] / 1e6:.2f}M |",
        f"| train steps | {t['steps']} | {s['steps']} |",
        f"| train time | {t['train_seconds']:.0f} s | {s['train_seconds']:.0f} s |",
        f"| train tokens/s | {t['train_tokens_per_s']:.0f} | {s['train_tokens_per_s']:.0f} |",
        f"| arith accuracy (test, n={t['arith']['n']}) | {t['arith']['accuracy']:.1%} | {s['arith']['accuracy']:.1%} |",
    ]
    for lv in t["arith"]["by_level"]:
        lines.append(f"| &nbsp; level {lv} | {t['arith']['by_level'][lv]:.1%} | {s['arith']['by_level'].get(lv, 0):.1%} |")
    for st in t["arith"]["by_style"]:
        lines.append(f"| &nbsp; {st} | {t['arith']['by_style'][st]:.1%} | {s['arith']['by_style'].get(st, 0):.1%} |")
    for st in t["arith"]["mean_tokens_by_style"]:
        lines.append(f"| mean answer tokens, {st} | {t['arith']['mean_tokens_by_style'][st]:.1f} | "
                     f"{s['arith']['mean_tokens_by_style'].get(st, 0):.1f} |")
    lines += [
        f"| generation tokens/s (greedy, batch 64, KV cache) | {t['arith']['tokens_per_s']:.0f} | "
        f"{s['arith']['tokens_per_s']:.0f} |",
        f"| jobs AUC (test, n={t['jobs']['n']}) | {t['jobs']['auc']:.3f} | {s['jobs']['auc']:.3f} |",
        f"| jobs accuracy | {t['jobs']['accuracy']:.1%} | {s['jobs']['accuracy']:.1%} |",
        "",
        "## Targets (issue 2)",
        "",
        "| target | reached | met |",
        "|---|---|---|",
        f"| teacher arith accuracy >= 85% | {t['arith']['accuracy']:.1%} | {_yes(t['arith']['accuracy'] >= 0.85)} |",
        f"| teacher jobs AUC >= 0.95 | {t['jobs']['auc']:.3f} | {_yes(t['jobs']['auc'] >= 0.95)} |",
        f"| student arith accuracy 15%-60% | {s['arith']['accuracy']:.1%} | "
        f"{_yes(0.15 <= s['arith']['accuracy'] <= 0.60)} |",
        f"| whole build <= 600 s on an idle 2-core machine | {record['build_seconds']:.0f} s at load "
        f"{record.get('loadavg_start', 0):.1f} at start | "
        f"{_yes(record['build_seconds'] <= 600) if record.get('loadavg_start', 9) < 0.5 else 'not measurable (shared)'} |",
        "",
    ]
    return "\n".join(lines)


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="src", help="record an existing toy world instead of building one")
    ap.add_argument("--out", default=str(RESULTS), help="results directory")
    args = ap.parse_args()
    if args.src:
        record = json.loads((Path(args.src).expanduser() / "toy.json").read_text())
    else:
        from slimkit.toy.build import build

        with tempfile.TemporaryDirectory() as tmp:
            record = build(Path(tmp) / "toy")
    command = "slimkit toy build" if args.src else " ".join(["python", *sys.argv])
    mach = machine()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "toy.json").write_text(json.dumps({"command": command, "machine": mach, **record}, indent=2) + "\n")
    (out / "toy.md").write_text(markdown(record, command, mach))
    print((out / "toy.md").read_text())


if __name__ == "__main__":
    main()
