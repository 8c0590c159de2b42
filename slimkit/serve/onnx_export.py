"""Export a model directory to ONNX (with KV-cache inputs/outputs) for the onnxruntime engine.

optimum-onnx pins transformers < 4.58, so the export runs in its own environment, .venv-onnx:

    .venv-onnx/bin/python -m slimkit.serve.onnx_export SRC OUT [--int8] [--overwrite]

From the main environment call `export(src, out)`, which runs that command as a subprocess. The output
directory (written atomically) holds `model.onnx` (inputs input_ids, attention_mask, position_ids,
past_key_values.N.key/value; outputs logits, present.N.key/value), config.json, the tokenizer files
and slimkit.json (stage "onnx", parent SRC). `--int8` applies onnxruntime's dynamic int8 weight
quantization (MatMul weights; fast on CPUs with AVX512-VNNI); the quantize stage can reuse this module.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from slimkit.artifacts import atomic_dir, check_model_dir, check_target, write_manifest
from slimkit.errors import SlimkitError

ONNX_PYTHON = Path(__file__).resolve().parents[2] / ".venv-onnx/bin/python"
_NOT_COPIED = {"config.json", "slimkit.json", "generation_config.json"}


def _compat_copy(src: Path, dst: Path) -> None:
    """A view of `src` that transformers 4.57 reads correctly: weights linked, config.json patched
    (transformers 5 writes `rope_parameters`; 4.57 reads `rope_theta` and would silently default it)."""
    dst.mkdir()
    for p in src.iterdir():
        if p.is_file() and p.name != "config.json":
            (dst / p.name).symlink_to(p.resolve())
    cfg = json.loads((src / "config.json").read_text())
    rope = cfg.get("rope_parameters") or {}
    if "rope_theta" not in cfg and "rope_theta" in rope:
        cfg["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default":
            cfg["rope_scaling"] = rope
    if "torch_dtype" not in cfg and "dtype" in cfg:
        cfg["torch_dtype"] = cfg["dtype"]
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))


def export_here(src: str | Path, out: str | Path, *, int8: bool = False, overwrite: bool = False) -> Path:
    """Run the export in this interpreter (needs optimum-onnx: .venv-onnx). An existing OUT is replaced
    only if it is an earlier slimkit output and `overwrite` is set; a directory slimkit did not write is
    refused."""
    src = check_model_dir(src)
    check_target(out, overwrite=overwrite)                  # before the slow import and export
    from optimum.exporters.onnx import main_export

    with atomic_dir(out, overwrite=overwrite) as tmp:
        view = tmp / ".src"
        _compat_copy(src, view)
        main_export(str(view), output=tmp, task="text-generation-with-past", do_validation=False)
        shutil.rmtree(view)
        for p in src.iterdir():                 # tokenizer and chat template, as in the source dir
            if p.is_file() and p.suffix != ".safetensors" and p.name not in _NOT_COPIED:
                shutil.copy2(p, tmp / p.name)
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            fp32 = tmp / "model_fp32.onnx"
            (tmp / "model.onnx").rename(fp32)
            quantize_dynamic(fp32, tmp / "model.onnx", weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
            fp32.unlink()
            for extra in tmp.glob("model_fp32.onnx*"):
                extra.unlink()
        write_manifest(tmp, stage="onnx", parent=src, recipe={"format": "onnx", "int8": int8,
                                                              "task": "text-generation-with-past"})
    return Path(out)


def export(src: str | Path, out: str | Path, *, int8: bool = False, overwrite: bool = False,
           python: str | Path = ONNX_PYTHON, timeout: float = 1800) -> Path:
    """Export from any environment by running this module under .venv-onnx's Python."""
    src = check_model_dir(src)
    check_target(out, overwrite=overwrite)
    python = Path(python)
    if not python.exists():
        raise SlimkitError(f"{python} not found: build the ONNX export environment with `make .venv-onnx/.installed`")
    cmd = [str(python), "-m", "slimkit.serve.onnx_export", str(src), str(out)] + (["--int8"] if int8 else [])
    cmd += ["--overwrite"] if overwrite else []
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise SlimkitError(f"ONNX export of {src} failed:\n{r.stderr[-3000:]}")
    return Path(out)


def _one_line_error(message: str) -> None:
    print(f"error: {message} (see --help)", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m slimkit.serve.onnx_export", description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--int8", action="store_true", help="dynamic int8 quantization of MatMul weights")
    ap.add_argument("--overwrite", action="store_true", help="replace OUT if it is an earlier slimkit export")
    ap.error = _one_line_error                  # type: ignore[method-assign]
    args = ap.parse_args()
    try:
        export_here(args.src, args.out, int8=args.int8, overwrite=args.overwrite)
    except SlimkitError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
