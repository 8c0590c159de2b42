"""Offline compression of a catalog: a JSONL of items in, a JSONL of compressed items out.

Stages, in call order: `read_rows` (strict UTF-8 JSON lines, one clear error per bad line), `Journal`
(the output is built in a hidden journal beside it, `.<out>.partial`, with a fingerprint of the input
and the settings; a rerun after a kill resumes after its last complete line), the batches (in this
process, or as a Ray Data job with `ray_address`), and `Journal.finish` (the journal is renamed onto
the output: the output file is never partial).

Each output row is the input row plus `compressed`, `tokens_in`, `tokens_out` and `ratio` (the achieved
fraction of tokens kept).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from slimkit.compress.context.words import ContextError, Protection, check_rate

OUTPUT_KEYS = ("compressed", "tokens_in", "tokens_out", "ratio")


def read_rows(path: str | os.PathLike, text_field: str, query_field: str | None) -> list[dict]:
    """The input rows; each must be a JSON object whose `text_field` is non-empty text."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ContextError(f"cannot read {path}: {e.strerror}") from None
    rows = []
    for n, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ContextError(f"{path}:{n}: not UTF-8 text (byte {e.start} of the line)") from None
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ContextError(f"{path}:{n}: not a JSON line ({e})") from None
        if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
            raise ContextError(f"{path}:{n}: expected a JSON object with a text field {text_field!r}")
        if not row[text_field].strip():
            raise ContextError(f"{path}:{n}: {text_field!r} is empty: nothing to compress")
        if query_field is not None and not isinstance(row.get(query_field), str):
            raise ContextError(f"{path}:{n}: no text field {query_field!r} (the query)")
        rows.append(row)
    if not rows:
        raise ContextError(f"{path} holds no rows to compress")
    return rows


def is_output(path: Path) -> bool:
    """Whether `path` is a JSONL that this command wrote (its first row has the output keys)."""
    try:
        with open(path, encoding="utf-8") as f:
            first = json.loads(f.readline())
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and all(k in first for k in OUTPUT_KEYS)


class Journal:
    """The output under construction: `.<name>.partial` (complete lines only count) and
    `.<name>.partial.json` (what it is the output of)."""

    def __init__(self, out: Path, fingerprint: str) -> None:
        self.out, self.fingerprint = out, fingerprint
        self.path = out.with_name(f".{out.name}.partial")
        self.meta = out.with_name(f".{out.name}.partial.json")

    def resume(self) -> int:
        """Rows already done by an earlier run with the same input and settings (0: start over)."""
        try:
            same = json.loads(self.meta.read_text()).get("fingerprint") == self.fingerprint
        except (OSError, ValueError):
            same = False
        if not same or not self.path.is_file():
            self.path.unlink(missing_ok=True)
            self.meta.write_text(json.dumps({"fingerprint": self.fingerprint, "output": self.out.name}) + "\n")
            self.path.write_bytes(b"")
            return 0
        data = self.path.read_bytes()
        complete = data[:data.rfind(b"\n") + 1]      # a line cut by a kill is dropped
        if len(complete) != len(data):
            with open(self.path, "r+b") as f:
                f.truncate(len(complete))
        return complete.count(b"\n")

    def append(self, rows: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())

    def finish(self, overwrite: bool) -> None:
        from slimkit import artifacts

        artifacts.check_target(self.out, overwrite=overwrite, is_own=is_output)   # nothing else wrote it meanwhile
        os.replace(self.path, self.out)
        self.meta.unlink(missing_ok=True)


def fingerprint(src: Path, settings: dict) -> str:
    h = hashlib.sha256(src.read_bytes())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:16]


def output_row(row: dict, c) -> dict:
    return {**row, "compressed": c.text, "tokens_in": c.tokens_in, "tokens_out": c.tokens_out,
            "ratio": round(c.ratio, 4)}


def local_batches(rows: list[dict], settings: dict, batch_size: int) -> Iterator[list[dict]]:
    """Compressed rows, a batch at a time, in this process."""
    comp = _compressor(settings)
    for b in range(0, len(rows), batch_size):
        yield _compress_rows(comp, rows[b:b + batch_size], settings)


def _compressor(settings: dict):
    from slimkit.compress import context

    p = settings["protection"]
    protection = Protection(p["numbers"], tuple(p["terms"]), tuple(p["patterns"]), p["query_terms"])
    return context.load(settings["compressor"], protection=protection, tokenizer=settings.get("tokenizer"))


def _compress_rows(comp, rows: list[dict], settings: dict) -> list[dict]:
    qf = settings["query_field"]
    out = comp.compress([r[settings["text_field"]] for r in rows], rate=settings["rate"],
                        budget=settings["budget"], queries=[r[qf] for r in rows] if qf else None)
    return [output_row(r, c) for r, c in zip(rows, out, strict=True)]


class _RayCompress:
    """A Ray Data actor: loads the compressor once, compresses batches of rows (one JSON string each)."""

    def __init__(self, settings: dict) -> None:
        self.settings = settings
        self.comp = _compressor(settings)

    def __call__(self, batch: dict) -> dict:
        rows = [json.loads(r) for r in batch["row"]]
        return {"row": [json.dumps(r, ensure_ascii=False) for r in _compress_rows(self.comp, rows, self.settings)]}


def ray_batches(rows: list[dict], settings: dict, batch_size: int, address: str, workers: int
                ) -> Iterator[list[dict]]:
    """Compressed rows, in input order, from a Ray Data job (`address`: "local" starts a local Ray
    instance; "auto" or host:port joins a running cluster)."""
    try:
        import ray
    except ImportError:
        raise ContextError("--ray needs the ray extra: pip install 'slimkit[ray]'") from None
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address == "local":
            kwargs["num_cpus"] = workers
        else:
            kwargs["address"] = address
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ContextError(f"cannot start or join Ray at {address!r}: {str(e).splitlines()[0]}") from None
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        ds = ray.data.from_items([{"row": json.dumps(r, ensure_ascii=False)} for r in rows])
        ds = ds.map_batches(_RayCompress, fn_constructor_kwargs={"settings": settings}, batch_size=batch_size,
                            concurrency=workers, num_cpus=1)
        for batch in ds.iter_batches(batch_size=batch_size, batch_format="default"):
            yield [json.loads(r) for r in batch["row"]]
    finally:
        if started:
            ray.shutdown()


def compress_file(src: str | os.PathLike, out: str | os.PathLike, compressor: str, *, rate: float | None = None,
                  budget: int | None = None, text_field: str = "text", query_field: str | None = None,
                  protection: Protection | None = None, tokenizer: str | None = None, batch_size: int = 64,
                  overwrite: bool = False, ray_address: str | None = None, ray_workers: int = 1,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Compress every row of `src` into `out` (see the module docstring); returns a summary.
    `progress(done, total)` is called after each batch."""
    from slimkit import artifacts

    check_rate(rate, budget)
    src = Path(src)
    out = artifacts.check_target(out, overwrite=overwrite, is_own=is_output)
    if out.resolve() == src.resolve():
        raise ContextError("the output would replace the input: choose another --out")
    rows = read_rows(src, text_field, query_field)
    protection = protection or Protection()
    settings = {"compressor": str(compressor), "tokenizer": tokenizer, "rate": rate, "budget": budget,
                "text_field": text_field, "query_field": query_field,
                "protection": {"numbers": protection.numbers, "terms": list(protection.terms),
                               "patterns": list(protection.patterns), "query_terms": protection.query_terms}}
    out.parent.mkdir(parents=True, exist_ok=True)
    journal = Journal(out, fingerprint(src, settings))
    done = journal.resume()
    if progress is not None:
        progress(done, len(rows))
    todo = rows[done:]
    batches = (ray_batches(todo, settings, batch_size, ray_address, ray_workers) if ray_address
               else local_batches(todo, settings, batch_size))
    with contextlib.closing(batches):
        for batch in batches:
            journal.append(batch)
            done += len(batch)
            if progress is not None:
                progress(done, len(rows))
    journal.finish(overwrite)
    ratios = [json.loads(line)["ratio"] for line in out.read_text(encoding="utf-8").splitlines()]
    return {"rows": len(rows), "resumed_at": len(rows) - len(todo), "mean_ratio": sum(ratios) / len(ratios),
            "output": str(out)}
