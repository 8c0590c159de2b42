"""Shared inputs and helpers for the scorer tests."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import torch

from slimkit.serve.client import ScorerClient

ROOT = Path(__file__).resolve().parents[2]

QUERY = "python data engineer in berlin, spark and airflow"
ITEMS = [
    "senior data engineer, python, spark, kafka; berlin or remote",
    "night nurse for a hospital ward in munich",
    "x",
    "frontend developer, react and typescript, hamburg, full time, good salary, team of twelve people",
    "data engineer",
    "backend developer: java, go, postgres, docker, kubernetes. office in berlin three days a week.",
    "machine learning engineer, pytorch, statistics",
    "yes",
]


def many_items(n: int) -> list[str]:
    """n distinct items of varied lengths (1 to ~40 tokens)."""
    words = "python sql spark airflow kafka java go react css nurse berlin remote docker senior junior".split()
    g = torch.Generator().manual_seed(n)
    out = []
    for i in range(n):
        k = int(torch.randint(1, 14, (1,), generator=g))
        idx = torch.randint(0, len(words), (k,), generator=g).tolist()
        out.append(f"{i}: " + " ".join(words[j] for j in idx))
    return out


def start_server(cmd: list[str], model_dir: Path, engine: str, tmp: Path, *, timeout: float = 400,
                 env: dict | None = None, port: int = 0, args: tuple[str, ...] = ()):
    """Start a scorer (`cmd` is e.g. [python, "-m", "slimkit.serve"] or ["slimkit", "serve"]) on `port`
    (0: a free one), with more serve `args`; return (process, address) once it answers."""
    port_file, log = tmp / f"{engine}.port", open(tmp / f"{engine}.log", "w")
    proc = subprocess.Popen([*cmd, str(model_dir), "--engine", engine, *args,
                             "--port", str(port), "--port-file", str(port_file)], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env=os.environ | (env or {}))
    deadline = time.time() + timeout
    while not port_file.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"{engine} server did not start:\n" + (tmp / f"{engine}.log").read_text()[-4000:])
        time.sleep(0.5)
    addr = f"127.0.0.1:{port_file.read_text()}"
    ScorerClient(addr).wait_ready(60)
    return proc, addr


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
