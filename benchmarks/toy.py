"""Build the toy world and record its figures: table "builds" of benchmarks/results/toy.{json,md}.

    .venv/bin/python benchmarks/toy.py                 # full build into a fresh temp dir (~10 min idle)
    .venv/bin/python benchmarks/toy.py --from DIR      # record an existing build (e.g. ~/.cache/slimkit/toy-v2)

Records build time, per-model training speed, teacher/student arith accuracy per level and style,
answer lengths, generation speed, and jobs AUC/accuracy, with the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _common import RESULTS, provenance, save


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="src", help="record an existing toy world instead of building one")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory (default: the record)")
    args = ap.parse_args()
    if args.src:
        record = json.loads((Path(args.src).expanduser() / "toy.json").read_text())
    else:
        from slimkit.toy.build import build

        with tempfile.TemporaryDirectory() as tmp:
            record = build(Path(tmp) / "toy")
    run = provenance()
    if args.src:  # the figures come from the build, not from this command
        run["command"] = "slimkit toy build"
    save("toy", "builds", [{**record, "run": run}], key=("version", "seed"), transpose=True, out=args.out)
    print((args.out / "toy.md").read_text())


if __name__ == "__main__":
    main()
