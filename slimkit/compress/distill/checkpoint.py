"""Training checkpoints: everything needed to continue a run bit-for-bit.

A checkpoint holds the student weights, optimizer and scheduler state, the step (which fixes the data
position: prompts are a deterministic function of seed and step), the recipe, and every RNG state.
Files are written to a temporary name and renamed, so a kill mid-write leaves the previous one intact.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimkit.errors import SlimkitError

_NAME = re.compile(r"^step-(\d{8})\.pt$")


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(ckpt_dir: Path, step: int, *, model: torch.nn.Module | dict, optimizer, scheduler, recipe: dict,
         keep: int = 2, extra: dict | None = None) -> Path:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step-{step:08d}.pt"
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    # model / optimizer: the objects, or their state dicts (FSDP gathers them first)
    model, optimizer = (x if isinstance(x, dict) else x.state_dict() for x in (model, optimizer))
    torch.save({"step": step, "model": model, "optimizer": optimizer,
                "scheduler": scheduler.state_dict(), "recipe": recipe, "rng": rng_state(),
                "extra": extra or {}}, tmp)
    os.replace(tmp, path)
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if _NAME.match(p.name))


def latest(ckpt_dir: Path) -> Path | None:
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


def load(path: Path) -> dict[str, Any]:
    """The checkpoint's state; one clear error if the file is not a readable checkpoint."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch.load raises many types (pickle, zip, EOF) for a damaged file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SlimkitError(f"cannot read checkpoint {path} ({first}); delete it to resume from an earlier one") from None
    if not isinstance(state, dict) or not {"step", "model", "optimizer", "scheduler", "rng"} <= state.keys():
        raise SlimkitError(f"{path} is not a slimkit distillation checkpoint")
    return state
