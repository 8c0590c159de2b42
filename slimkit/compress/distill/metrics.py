"""Run metrics: per-step peak memory, a JSONL log and a rich live table.

Peak memory of a step, CPU: the process's peak resident set size over the step minus its RSS when the
step began. Linux keeps a resettable high-water mark: writing "5" to /proc/self/clear_refs resets
VmHWM to the current RSS, and /proc/self/status reports VmHWM, so the kernel itself records the exact
peak (no sampling gaps; `getrusage` cannot be reset). Where clear_refs is not writable, a sampling
thread reads /proc/self/statm every millisecond instead (it can miss peaks shorter than that).
RSS counts everything the process touches (glibc may keep small freed blocks), which is what a user's
machine has to provide. CUDA: `torch.cuda.max_memory_allocated()` minus the allocation at the start.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

import torch

from slimkit.errors import SlimkitError

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """`with PeakMemory(device) as m: ...` then `m.peak_bytes` (peak over the block minus the start) and
    `m.start_bytes` (RSS, or CUDA memory allocated, when the block began)."""

    def __init__(self, device: torch.device | str = "cpu", *, method: str | None = None):
        self.device = torch.device(device)
        self.method = method
        self.peak_bytes = self.start_bytes = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
            self.method = "cuda_max_memory_allocated"
            return self
        self.start_bytes = _rss()
        if self.method != "sampling" and _reset_hwm():
            self.method = "proc_hwm"
        else:
            self.method = "sampling"
            self._max = self.start_bytes
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, _rss())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method == "proc_hwm":
            peak = _hwm()
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            peak = max(self._max, _rss())
        self.peak_bytes = max(0, peak - self.start_bytes)


class MetricsLog:
    """Append-only JSONL of step records. On resume, records after the checkpoint's step are dropped,
    and so is a torn last line."""

    def __init__(self, path: Path, *, keep_until_step: int | None = None, enabled: bool = True):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if keep_until_step is None:
            path.write_text("")
        elif path.exists():
            kept = [ln for ln, rec in _records(path) if rec.get("step", 0) <= keep_until_step]
            path.write_text("".join(ln + "\n" for ln in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(_clean(record)) + "\n")


def _records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) of a metrics log. A torn last line (the process was killed while writing it) is
    dropped; an unreadable line before it is an error."""
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    out = []
    for i, ln in enumerate(lines, 1):
        try:
            rec = json.loads(ln)
        except json.JSONDecodeError:
            rec = None
        if not isinstance(rec, dict):
            if i == len(lines):
                break
            raise SlimkitError(f"{path}:{i} is not a JSON record: the metrics log is damaged "
                               "(fix or remove that line to resume)")
        out.append((ln, rec))
    return out


def _clean(record: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


class LiveTable:
    """A rich table of the latest steps, redrawn in place (plain lines when not on a terminal)."""

    COLUMNS = (("step", "{:d}"), ("loss", "{:.4f}"), ("lr", "{:.2e}"), ("keep_frac", "{:.2f}"),
               ("q3_frac", "{:.2f}"), ("tokens", "{:d}"), ("peak_mem_mb", "{:.0f}"), ("step_s", "{:.2f}"),
               ("eval_acc", "{:.3f}"))
    ROWS = 12  # the latest steps shown

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.records: list[dict[str, Any]] = []
        self._live = None

    def __enter__(self) -> LiveTable:
        if self.enabled:
            from rich.console import Console
            from rich.live import Live

            console = Console(stderr=True)
            self._live = Live(self._render(), console=console, refresh_per_second=2,
                              transient=False, auto_refresh=console.is_terminal)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(*exc)

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self._live is not None:
            self._live.update(self._render())

    def _render(self):
        from rich.table import Table

        t = Table(title="slimkit distill")
        for name, _ in self.COLUMNS:
            t.add_column(name, justify="right")
        for r in self.records[-self.ROWS:]:
            cells = []
            for name, fmt in self.COLUMNS:
                v = r.get(name)
                try:
                    cells.append("" if v is None else fmt.format(v))
                except (ValueError, TypeError):
                    cells.append(str(v))
            t.add_row(*cells)
        return t
