"""The stages: for each, what it reads, a dry-run check through the stage's own validators (no weights
loaded), and its work, which calls the stage's API (distill, prune, recovery, quantize, context
compression, serve). Every stage writes one artifact under the run directory:

    RUN/distill/student   RUN/prune   RUN/recover/student   RUN/quantize   RUN/context   RUN/serve
    (RUN/distill and RUN/recover are the distillation run directories: checkpoints, metrics.jsonl)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimkit import artifacts
from slimkit.errors import SlimkitError
from slimkit.pipeline import gates
from slimkit.pipeline.recipe import ORDER, PipelineError, PipelineRecipe, stage_recipe_data

MODEL_STAGES = ("distill", "prune", "recover", "quantize")
TRAINED = ("distill", "recover")                     # stages whose run directory can be resumed


@dataclass
class Run:
    recipe: PipelineRecipe
    root: Path                                        # the run directory
    teacher: Path
    student: Path | None

    def artifact(self, stage: str) -> Path:
        return self.root / stage / "student" if stage in TRAINED else self.root / stage

    def input_of(self, stage: str) -> str:
        """The node (`teacher`, `student` or an earlier stage) whose artifact `stage` reads."""
        if stage == "distill":
            return "student"
        if stage == "prune" and self.recipe.stages.prune.input == "teacher":
            return "teacher"
        if stage == "serve" and self.recipe.stages.context is not None:
            return "context"
        before = [s for s in self.recipe.enabled()[: self.recipe.enabled().index(stage)] if s in MODEL_STAGES]
        return before[-1] if before else "teacher"


def ref_dir(ref: str, role: str) -> Path:
    """A model reference (`toy:` name or path) that must hold config.json and a tokenizer (weights are
    checked when the stage loads them)."""
    try:
        p = artifacts.resolve(ref)
    except SlimkitError as e:
        raise PipelineError(f"{role}: {e}") from None
    if not (p / "config.json").is_file():
        what = "does not exist" if not p.exists() else "is not a model directory (no config.json)"
        raise PipelineError(f"{role}: {p} {what}")
    if not (p / "tokenizer.json").is_file() and not (p / "tokenizer_config.json").is_file():
        raise PipelineError(f"{role}: {p} has no tokenizer (tokenizer.json / tokenizer_config.json)")
    return p


def env_python(env: str, why: str) -> Path:
    """The interpreter of a side environment (.venv-quant, .venv-onnx, .venv-vllm), or one clear error
    naming the make target that creates it."""
    from slimkit.compress.quantize import ROOT

    python = ROOT / env / "bin/python"
    if not python.exists():
        raise PipelineError(f"{why} runs in {env}, which is not installed: create it with `make {env}/.installed`")
    return python


def distill_config(section, *, teacher: Path, student: Path, out: Path, name: str):
    """The section's distillation recipe with the pipeline's teacher, student and run directory,
    validated by the distillation stage's own config."""
    from slimkit import recipe as _recipe
    from slimkit.compress.distill.config import DistillConfig

    data = stage_recipe_data(section, name) | {"teacher": str(teacher), "student": str(student), "out": str(out)}
    try:
        return _recipe.validate(DistillConfig, data, f"stages.{name}.recipe")
    except _recipe.RecipeError as e:
        raise PipelineError(str(e)) from None


def quantize_tool(scheme: str) -> str:
    from slimkit.compress.quantize import check_scheme

    return check_scheme(scheme)


def serve_engine(run: Run) -> str:
    """The engine the serve stage runs: the section's, or the one the final model needs."""
    section = run.recipe.stages.serve
    if section is not None and section.engine != "auto":
        return section.engine
    q = run.recipe.stages.quantize
    if q is None:
        return "torch"
    return "onnxruntime" if quantize_tool(q.scheme) == "onnx" else "vllm"


# -- dry run: every stage's options, inputs and environments, before any work ------------------------

def meta_params(config_dir: Path) -> int | None:
    """Parameters of the model a config describes, built on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        cfg = AutoConfig.from_pretrained(config_dir)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
    except Exception:                 # an architecture transformers cannot build: reported by the stage
        return None
    return sum(p.numel() for p in model.parameters())


def check(run: Run) -> list[str]:
    """Validate the whole recipe without loading weights; returns one line per stage for the plan."""
    from slimkit.tasks import get_task

    recipe = run.recipe
    lines = []
    config_dir: dict[str, Path] = {"teacher": run.teacher}      # the directory whose config.json a node has
    if run.student is not None:
        config_dir["student"] = run.student
    for name in ORDER:
        section = getattr(recipe.stages, name)
        if section is None:
            continue
        gates.parse(section.gate, f"stages.{name}.gate")
        src = run.input_of(name)
        config_dir[name] = config_dir[src]
        where = f"stage {name}"
        if name in TRAINED:
            teacher = run.teacher if name == "distill" else recover_teacher(run, config_dir)
            cfg = distill_config(section, teacher=teacher, student=config_dir[src], out=run.root / name, name=name)
            _check_vocab(teacher, config_dir[src], where)
            if cfg.data.task:
                get_task(cfg.data.task)
            if cfg.data.path and not Path(cfg.data.path).expanduser().is_file():
                raise PipelineError(f"stages.{name}.recipe: data.path {cfg.data.path} does not exist")
            note = f"{cfg.train.steps} steps, loss {cfg.loss.kind}, data {cfg.data.task or cfg.data.path}"
        elif name == "prune":
            note = _check_prune(section, config_dir[src])
        elif name == "quantize":
            note = _check_quantize(section, config_dir[src])
        elif name == "context":
            note = _check_context(run, section)
        else:
            engine = serve_engine(run)
            if engine == "vllm":
                env_python(".venv-vllm", f"{where} (engine vllm)")
            note = f"engine {engine}"
        lines.append(f"{name}: reads {src}; {note}")
    return lines


def recover_teacher(run: Run, config_dir: dict[str, Path] | None = None) -> Path:
    """The recover stage's teacher: the pruned model's parent (default), the pipeline's teacher, or a path."""
    t = run.recipe.stages.recover.teacher
    if t == "parent":
        parent = run.input_of("prune")
        if config_dir is not None:
            return config_dir[parent]
        return {"teacher": run.teacher, "student": run.student}.get(parent) or run.artifact(parent)
    return run.teacher if t == "teacher" else ref_dir(t, "stages.recover.teacher")


def _check_vocab(teacher: Path, student: Path, where: str) -> None:
    from transformers import AutoConfig

    from slimkit.compress.distill.models import check_vocab

    try:
        check_vocab(artifacts.load_tokenizer(student), artifacts.load_tokenizer(teacher),
                    AutoConfig.from_pretrained(student).vocab_size, AutoConfig.from_pretrained(teacher).vocab_size)
    except SlimkitError as e:
        raise PipelineError(f"{where}: {e}") from None


def _check_prune(section, parent: Path) -> str:
    from slimkit.compress.prune import check_options, load_parent_config
    from slimkit.compress.prune.arch import HEAD_DIM_FROM_HIDDEN, shape_of
    from slimkit.compress.prune.plan import check_fixed
    from slimkit.tasks import get_task

    fixed = {"hidden": section.hidden, "mlp": section.mlp, "kv_heads": section.kv_heads, "layers": section.layers}
    try:
        check_options(keep=section.target_params, axes=set(section.axes), multiple=section.multiple,
                      importance=section.importance)
        if section.target_params is None and all(v is None for v in [*fixed.values(), section.heads]):
            raise PipelineError("nothing to prune: give target_params or explicit hidden/mlp/kv_heads/heads/layers")
        cfg = load_parent_config(parent)
        check_fixed(shape_of(cfg), fixed, section.heads, cfg.model_type in HEAD_DIM_FROM_HIDDEN)
        if section.calib_data is not None:
            if not Path(section.calib_data).expanduser().is_file():
                raise PipelineError(f"calib_data {section.calib_data} does not exist")
        else:
            for task in section.calib:
                get_task(task)
    except SlimkitError as e:
        raise PipelineError(f"stage prune: {e}") from None
    params = meta_params(parent)
    target = f"to {section.target_params:.0%} of" if section.target_params else "explicit widths of"
    return f"{target} {params / 1e6:,.1f}M parameters" if params else target + " the parent"


def _check_quantize(section, parent: Path) -> str:
    from slimkit.compress.quantize import ARCHITECTURES, ENVS, SCHEMES
    from slimkit.tasks import TASKS

    try:
        tool = quantize_tool(section.scheme)
    except SlimkitError as e:
        raise PipelineError(f"stage quantize: {e}") from None
    archs = json.loads((parent / "config.json").read_text()).get("architectures") or []
    if not set(archs) & set(ARCHITECTURES):
        raise PipelineError(f"stage quantize: the model is a {', '.join(archs) or 'model of unknown architecture'}: "
                            f"quantize supports {', '.join(ARCHITECTURES)}")
    names = [t.strip() for t in section.calib.split(",") if t.strip()]
    if section.calib.endswith(".jsonl") or Path(section.calib).expanduser().is_file():
        if not Path(section.calib).expanduser().is_file():
            raise PipelineError(f"stage quantize: calib {section.calib} does not exist")
    elif not names or set(names) - set(TASKS):
        raise PipelineError(f"stage quantize: calib {section.calib!r} is neither a JSONL file nor tasks among "
                            f"{', '.join(TASKS)}")
    env_python(ENVS[tool], f"stage quantize (scheme {section.scheme})")
    if tool == "llm-compressor":      # its output runs on vLLM only: measured and served there
        env_python(".venv-vllm", f"measuring the {section.scheme} model (vLLM)")
    return f"{section.scheme} ({SCHEMES[section.scheme][1]}), in {ENVS[tool]}"


def _check_context(run: Run, section) -> str:
    from slimkit.compress.context import BASELINES, check_rate

    try:
        check_rate(section.rate, None)
    except SlimkitError as e:
        raise PipelineError(f"stage context: {e}") from None
    if section.compressor == "classifier":
        teacher = ref_dir(section.train.teacher, "stages.context.train.teacher") if section.train.teacher \
            else run.teacher
        return (f"trains a keep/drop classifier on {section.train.n} pairs labelled by {teacher.name}, "
                f"rate {section.rate}")
    if section.compressor in BASELINES:
        raise PipelineError(f"stage context: {section.compressor} is a baseline that `slimkit serve` does not load: "
                            "use compressor: classifier (trained here) or a compressor directory")
    ref_dir(section.compressor, "stages.context.compressor")
    return f"compressor {section.compressor}, rate {section.rate}"


# -- the work: each calls the stage's own API -------------------------------------------------------

def run_distill(run: Run, inp: Path, *, resume: bool, overwrite: bool) -> Path:
    from slimkit.compress.distill import train

    cfg = distill_config(run.recipe.stages.distill, teacher=run.teacher, student=inp, out=run.root / "distill",
                         name="distill")
    result = train(cfg, resume=resume, overwrite=overwrite)
    if result["stopped"]:
        raise PipelineError(f"stopped at step {result['step']} (signal): rerun the pipeline to resume it")
    return Path(result["student"])


def run_prune(run: Run, inp: Path, *, overwrite: bool) -> Path:
    from slimkit.compress.prune import prune

    s = run.recipe.stages.prune
    info = prune(str(inp), run.artifact("prune"), keep=s.target_params, axes=set(s.axes), hidden=s.hidden, mlp=s.mlp,
                 kv_heads=s.kv_heads, heads=s.heads, layers=s.layers, multiple=s.multiple, importance=s.importance,
                 seed=s.seed, calib=s.calib, calib_data=s.calib_data, calib_n=s.calib_n, overwrite=overwrite,
                 threads=run.recipe.eval.threads)
    return Path(info["out"])


def run_recover(run: Run, inp: Path, *, resume: bool, overwrite: bool) -> Path:
    from slimkit.compress.prune import run_recovery

    cfg = distill_config(run.recipe.stages.recover, teacher=recover_teacher(run), student=inp,
                         out=run.root / "recover", name="recover")
    try:
        return Path(run_recovery(cfg, inp, overwrite=overwrite, resume=resume)["student"])
    except SlimkitError as e:
        if "stopped at step" not in str(e):
            raise
        raise PipelineError(f"{e}: rerun the pipeline to resume it") from None


def run_quantize(run: Run, inp: Path, *, overwrite: bool) -> Path:
    from slimkit.compress.quantize import quantize

    s = run.recipe.stages.quantize
    return Path(quantize(inp, s.scheme, run.artifact("quantize"), calib=s.calib, n=s.n, overwrite=overwrite))


def run_context(run: Run, inp: Path, *, overwrite: bool) -> Path:
    """A trained classifier (its directory is the artifact), or the chosen compressor recorded in a
    manifest-only directory."""
    s, out = run.recipe.stages.context, run.artifact("context")
    if s.compressor == "classifier":
        from slimkit.compress.context.train import train_classifier

        t = s.train
        train_classifier(str(artifacts.resolve(t.teacher) if t.teacher else run.teacher), out, n=t.n, steps=t.steps,
                         hidden=t.hidden, layers=t.layers, seed=t.seed, labels=t.labels,
                         overwrite=overwrite)
        return out
    with artifacts.atomic_dir(out, overwrite=overwrite) as tmp:
        artifacts.write_manifest(tmp, stage="context", parent=inp, recipe={"compressor": s.compressor, "rate": s.rate})
    return out


def compression_of(run: Run) -> dict:
    """The spec of the scorer's item compression that the context stage's artifact describes."""
    s = run.recipe.stages.context
    ref = run.artifact("context") if s.compressor == "classifier" else s.compressor
    return {"compressor": str(ref), "rate": s.rate, "with_query": s.with_query}


def run_serve(run: Run, model: Path, *, overwrite: bool) -> tuple[Path, dict[str, Any]]:
    """Start `slimkit serve` on the final model in its own process (the engine's environment), score the
    jobs validation examples and a timed batch through the client, stop it with SIGTERM (drain)."""
    from slimkit.pipeline.measure import score_through
    from slimkit.serve.client import ScorerClient

    engine, ev = serve_engine(run), run.recipe.eval
    python = env_python(".venv-vllm", "stage serve (engine vllm)") if engine == "vllm" else Path(sys.executable)
    cmd = [str(python), "-m", "slimkit.serve", str(model), "--engine", engine, "--port", "0"]
    if engine != "onnxruntime":
        cmd += ["--dtype", ev.dtype] + (["--device", ev.device] if engine == "torch" else [])
    if run.recipe.stages.context is not None:
        spec = compression_of(run)
        cmd += ["--compress-items", str(spec["rate"]), "--compressor", spec["compressor"]]
        cmd += ["--compress-with-query"] if spec["with_query"] else []
    env = os.environ | {"OMP_NUM_THREADS": str(ev.threads), "PYTHONPATH": _pythonpath()}
    with tempfile.TemporaryDirectory(prefix="slimkit-serve-") as tmp:
        port_file = Path(tmp) / "port"
        log = open(Path(tmp) / "server.log", "w+")
        proc = subprocess.Popen(cmd + ["--port-file", str(port_file)], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            port = _wait_for_port(proc, port_file, log)
            address = f"127.0.0.1:{port}"
            with ScorerClient(address, timeout=600) as client:
                client.wait_ready()
                figures = score_through(client, ev.split, ev.jobs_n, ev.items, ev.requests)
                batch = _sample_batch(client)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    figures |= {"engine": engine, "command": " ".join(cmd[1:])}
    with artifacts.atomic_dir(run.artifact("serve"), overwrite=overwrite) as tmp:
        (tmp / "batch.json").write_text(json.dumps(batch, indent=2) + "\n")
        artifacts.write_manifest(tmp, stage="serve", parent=model, recipe={"engine": engine, "command": cmd[1:]})
    return run.artifact("serve"), figures


def _pythonpath() -> str:
    from slimkit.compress.quantize import ROOT

    path = os.environ.get("PYTHONPATH")
    return str(ROOT) + (os.pathsep + path if path else "")


def _wait_for_port(proc: subprocess.Popen, port_file: Path, log, timeout: float = 600) -> int:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if port_file.is_file() and port_file.read_text().strip().isdigit():
            return int(port_file.read_text())
        if proc.poll() is not None:
            log.seek(0)
            lines = [ln for ln in log.read().splitlines() if ln.strip()]
            raise PipelineError(f"stage serve: the server exited ({lines[-1] if lines else proc.returncode})")
        time.sleep(0.2)
    raise PipelineError(f"stage serve: the server did not start within {timeout:.0f} s")


def _sample_batch(client) -> dict[str, Any]:
    """The query of the first relevant validation pair against its posting and 7 others, scored through
    the client, best first (kept in the artifact)."""
    from slimkit.tasks import get_task

    examples = get_task("jobs").split("validation", 64)
    hit = next((ex for ex in examples if ex.meta["label"]), examples[0])
    postings = [hit.meta["posting"]] + [ex.meta["posting"] for ex in examples if ex is not hit][:7]
    res = client.score(hit.meta["query"], postings)
    items = sorted(({"posting": p, "p_yes": s} for p, s in zip(postings, res.scores, strict=True)),
                   key=lambda it: -it["p_yes"])
    return {"query": hit.meta["query"], "items": items}
