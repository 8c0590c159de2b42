"""Task metrics. arith: accuracy per level and style, pass@k over k samples, mean generated tokens.
jobs: AUC and accuracy of P(yes), with P(yes) = softmax over the yes/no next-token logits."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from slimkit.tasks import Example, TaskError, format_prompt, get_task
from slimkit.tasks.generate import generate, next_token_logprobs

MAX_NEW_TOKENS = {"arith": 160, "jobs": 4}


def label_token_ids(tokenizer, labels: Sequence[str] = ("yes", "no")) -> list[int]:
    """The single token id of each label as it follows the generation prompt (the scorer's labels too)."""
    ids = []
    for label in labels:
        if not label:
            raise TaskError("empty label")
        toks = tokenizer.encode(label, add_special_tokens=False)
        if len(toks) != 1:
            pieces = [tokenizer.decode([t]) for t in toks]
            raise TaskError(f"label {label!r} is not a single token for this tokenizer: it encodes to "
                            f"{len(toks)} tokens {pieces}")
        if tokenizer.unk_token_id is not None and toks[0] == tokenizer.unk_token_id:
            raise TaskError(f"label {label!r} is not in the vocabulary (encodes to the unknown token)")
        ids.append(toks[0])
    return ids


def binary_label(ex: Example) -> int:
    """1/0 from meta["label"] (int, bool or yes/no/true/1) or else from the answer ("yes" is 1)."""
    v = ex.meta.get("label", ex.answer)
    if isinstance(v, str):
        return int(v.strip().lower() in ("yes", "1", "true"))
    return int(bool(v))


def auc(scores: list[float], labels: list[int]) -> float:
    """Area under the ROC curve (Mann-Whitney rank statistic; ties count half)."""
    pairs = sorted(zip(scores, labels, strict=True))
    n_pos = sum(labels)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        avg_rank = (i + 1 + j) / 2
        rank_sum += avg_rank * sum(lab for _, lab in pairs[i:j])
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def eval_arith(model, tokenizer, examples: list[Example], *, k: int = 1, temperature: float = 1.0,
               batch_size: int = 64, max_new_tokens: int = MAX_NEW_TOKENS["arith"], seed: int = 0,
               on_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    task = get_task("arith")
    prompts = [format_prompt(tokenizer, ex.prompt) for ex in examples]
    t0 = time.perf_counter()
    greedy = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                      on_progress=on_progress)
    seconds = time.perf_counter() - t0
    ok = [task.verify(ex, c[0].text) for ex, c in zip(examples, greedy, strict=True)]
    ntok = [len(c[0].token_ids) for c in greedy]
    groups: dict[str, dict[Any, list[int]]] = {"level": defaultdict(list), "style": defaultdict(list)}
    for i, ex in enumerate(examples):
        for key in groups:
            if key in ex.meta:
                groups[key][ex.meta[key]].append(i)
    res: dict[str, Any] = {
        "task": "arith", "n": len(examples), "accuracy": sum(ok) / max(1, len(ok)),
        "by_level": {str(lv): sum(ok[i] for i in idx) / len(idx) for lv, idx in sorted(groups["level"].items())},
        "by_style": {st: sum(ok[i] for i in idx) / len(idx) for st, idx in sorted(groups["style"].items())},
        "mean_tokens": sum(ntok) / max(1, len(ntok)),
        "mean_tokens_by_style": {st: sum(ntok[i] for i in idx) / len(idx)
                                 for st, idx in sorted(groups["style"].items())},
        "finished": sum(c[0].finish_reason != "length" for c in greedy) / max(1, len(greedy)),
        "tokens_per_s": sum(ntok) / seconds if seconds > 0 else None,
        "seconds": seconds,
    }
    if k > 1:
        sampled = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                           num_samples=k, batch_size=batch_size, seed=seed, on_progress=on_progress)
        hits = [[task.verify(ex, c.text) for c in cs] for ex, cs in zip(examples, sampled, strict=True)]
        res.update({"k": k, "temperature": temperature,
                    f"pass@{k}": sum(any(h) for h in hits) / max(1, len(hits)),
                    "sample_accuracy": sum(sum(h) for h in hits) / max(1, k * len(hits))})
    return res


def eval_jobs(model, tokenizer, examples: list[Example], *, batch_size: int = 64,
              on_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    import torch

    yes, no = label_token_ids(tokenizer)
    prompts = [format_prompt(tokenizer, ex.prompt) for ex in examples]
    t0 = time.perf_counter()
    lp = next_token_logprobs(model, tokenizer, prompts, [yes, no], batch_size=batch_size, on_progress=on_progress)
    seconds = time.perf_counter() - t0
    p_yes = torch.softmax(lp, dim=-1)[:, 0].tolist()
    labels = [binary_label(ex) for ex in examples]
    correct = [(p >= 0.5) == bool(y) for p, y in zip(p_yes, labels, strict=True)]
    mass = torch.logsumexp(lp, dim=-1).exp().mean().item()
    by_layout: dict[str, float] = {}
    for layout in sorted({ex.meta.get("layout") for ex in examples} - {None}):
        idx = [i for i, ex in enumerate(examples) if ex.meta.get("layout") == layout]
        by_layout[layout] = auc([p_yes[i] for i in idx], [labels[i] for i in idx])
    return {"task": "jobs", "n": len(examples), "auc": auc(p_yes, labels), "auc_by_layout": by_layout,
            "accuracy": sum(correct) / max(1, len(correct)), "label_mass": mass,
            "items_per_s": len(examples) / seconds if seconds > 0 else None, "seconds": seconds}


def check_options(task: str, *, n: int | None = None, k: int | None = None, temperature: float | None = None,
                  batch_size: int = 64) -> None:
    """Refuse values that cannot work and options that the task would ignore (one clear error each)."""
    get_task(task)
    for name, value in (("n", n), ("k", k), ("batch_size", batch_size)):
        if value is not None and value < 1:
            raise TaskError(f"{name} must be >= 1, got {value}")
    if temperature is not None and temperature < 0:
        raise TaskError(f"temperature must be >= 0, got {temperature}")
    if task != "arith" and (k not in (None, 1) or temperature is not None):
        raise TaskError(f"k and temperature (pass@k sampling) apply to arith only; {task} is scored, not sampled")
    if temperature is not None and (k or 1) == 1:
        raise TaskError("temperature is the sampling temperature of the pass@k samples: give k > 1 as well")


def evaluate(model, tokenizer, task: str, *, split: str = "test", n: int | None = None,
             examples: list[Example] | None = None, k: int | None = None, temperature: float | None = None,
             batch_size: int = 64, max_new_tokens: int | None = None, progress: bool = False,
             description: str = "") -> dict[str, Any]:
    """Evaluate on `task` (split's first n examples, or `examples`), optionally with a rich progress bar.
    arith: `k` > 1 also samples k answers per problem at `temperature` (default 1.0) for pass@k."""
    check_options(task, n=n, k=k, temperature=temperature, batch_size=batch_size)
    k = k or 1
    temperature = 1.0 if temperature is None else temperature
    source = split if examples is None else "custom"
    if examples is None:
        examples = get_task(task).split(split, n)
    elif n is not None:
        examples = examples[:n]
    if not examples:
        raise TaskError(f"no examples to evaluate for task {task!r}")
    total = len(examples) * (1 + (k if task == "arith" and k > 1 else 0))

    def run(on_progress):
        if task == "arith":
            return eval_arith(model, tokenizer, examples, k=k, temperature=temperature, batch_size=batch_size,
                              max_new_tokens=max_new_tokens or MAX_NEW_TOKENS["arith"], on_progress=on_progress)
        return eval_jobs(model, tokenizer, examples, batch_size=batch_size, on_progress=on_progress)

    if not progress:
        res = run(None)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      transient=True) as bar:
            tid = bar.add_task(description or f"eval {task}", total=total)
            res = run(lambda k_: bar.advance(tid, k_))
    res["split"] = source
    return res


def results_table(results: dict[str, dict[str, Any]], title: str = ""):
    """A rich Table with one column per model and one row per metric (results: name -> metrics)."""
    from rich.table import Table

    rows: list[tuple[str, Callable[[dict], Any]]] = []
    first = next(iter(results.values()))
    if first.get("task") == "arith":
        rows.append(("accuracy", lambda r: r["accuracy"]))
        for lv in first["by_level"]:
            rows.append((f"  level {lv}", lambda r, lv=lv: r["by_level"].get(lv)))
        for st in first["by_style"]:
            rows.append((f"  {st}", lambda r, st=st: r["by_style"].get(st)))
        for key in [x for x in first if x.startswith("pass@")]:
            rows.append((key, lambda r, key=key: r.get(key)))
        rows.append(("mean tokens", lambda r: r["mean_tokens"]))
        for st in first["mean_tokens_by_style"]:
            rows.append((f"  tokens {st}", lambda r, st=st: r["mean_tokens_by_style"].get(st)))
        rows.append(("tokens/s", lambda r: r.get("tokens_per_s")))
    else:
        rows.append(("AUC", lambda r: r["auc"]))
        for layout in first.get("auc_by_layout", {}):
            rows.append((f"  {layout}", lambda r, layout=layout: r.get("auc_by_layout", {}).get(layout)))
        rows += [("accuracy", lambda r: r["accuracy"]), ("items/s", lambda r: r.get("items_per_s"))]
    table = Table(title=title or f"{first.get('task')} ({first.get('split', 'test')}, n={first.get('n')})")
    table.add_column("metric")
    for name in results:
        table.add_column(name, justify="right")
    for label, get in rows:
        cells = []
        for r in results.values():
            v = get(r)
            cells.append("-" if v is None else f"{v:.3f}" if isinstance(v, float) and v <= 1.0 and
                         "token" not in label and "/s" not in label else f"{v:.1f}" if isinstance(v, float) else str(v))
        table.add_row(label, *cells)
    return table


def is_eval_result(path) -> bool:
    """Whether `path` is a JSON file that `slimkit eval --out` wrote (so --overwrite may replace it)."""
    import json

    try:
        res = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(res, dict) and {"task", "n", "split", "model"} <= res.keys()


def eval_model_dir(path, task: str, *, split: str | None = None, n: int | None = None, k: int | None = None,
                   temperature: float | None = None, batch_size: int = 64, data=None, out=None,
                   overwrite: bool = False, console=None) -> dict[str, Any]:
    """`slimkit eval`: load a model dir, evaluate with a progress bar, print a table, write JSON. An
    existing `out` is replaced only if it is an earlier eval result and `overwrite` is set."""
    import json
    from pathlib import Path

    from rich.console import Console
    from transformers.utils import logging as hf_logging

    from slimkit import artifacts
    from slimkit.tasks import read_jsonl

    check_options(task, n=n, k=k, temperature=temperature, batch_size=batch_size)
    if data is not None and split is not None:
        raise TaskError("--split picks a built-in split; with --data the examples are the file's (drop --split)")
    if out is not None:
        artifacts.check_target(out, overwrite=overwrite, is_own=is_eval_result)
    examples = read_jsonl(data) if data is not None else None
    hf_logging.disable_progress_bar()
    model, tok = artifacts.load(path)
    res = evaluate(model, tok, task, split=split or "test", n=n, examples=examples, k=k, temperature=temperature,
                   batch_size=batch_size, progress=True, description=f"eval {task} {Path(path).name}")
    res["model"] = str(Path(path).absolute())
    (console or Console()).print(results_table({Path(path).name: res}))
    if out is not None:
        artifacts.atomic_write_text(out, json.dumps(res, indent=2) + "\n", overwrite=overwrite, is_own=is_eval_result)
    return res
