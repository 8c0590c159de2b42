"""Report on a toy world (`slimkit toy report`): the teacher's and the student's eval tables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from slimkit.toy.build import EVAL_N


def report(root: str | os.PathLike, *, console=None, eval_n: dict[str, int] | None = None) -> dict[str, Any]:
    """Print the teacher's and the student's eval tables; evaluate and cache any that are missing."""
    from rich.console import Console
    from transformers.utils import logging as hf_logging

    from slimkit import artifacts, toy
    from slimkit.errors import SlimkitError
    from slimkit.tasks.eval import evaluate, results_table

    hf_logging.disable_progress_bar()
    console = console or Console()
    root = Path(root)
    if not toy.is_built(root):
        raise SlimkitError(f"no toy world at {root}: run `slimkit toy build` first")
    eval_n = dict(EVAL_N if eval_n is None else eval_n)
    results: dict[str, dict[str, Any]] = {task: {} for task in eval_n}
    for name in ("teacher", "student"):
        metrics = artifacts.read_manifest(root / name).get("metrics", {})
        missing = [t for t in eval_n if t not in metrics]
        if missing:
            model, tok = artifacts.load(root / name)
            new = {t: evaluate(model, tok, t, n=eval_n[t], progress=True, description=f"eval {name} {t}")
                   for t in missing}
            artifacts.update_metrics(root / name, new)
            metrics.update(new)
        for task in eval_n:
            results[task][name] = metrics[task]
    for task, res in results.items():
        console.print(results_table(res, title=f"toy world: {task} (test split, n={next(iter(res.values()))['n']})"))
    return results
