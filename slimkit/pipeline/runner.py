"""The run: measure the teacher (and student), then for each stage in order: skip it when its artifact
was made from the same inputs and recipe section (content hash), else run it (resuming an interrupted
distillation run); measure its artifact; check its gate against its parent; stop at the first
failed gate. `RUN/pipeline.json` records every stage as it ends; the report is written at the end
(and when a gate fails).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from slimkit import artifacts
from slimkit.errors import SlimkitError
from slimkit.pipeline import gates, measure, report, stages
from slimkit.pipeline.recipe import PipelineError, PipelineRecipe, stage_recipe_data

RECORD = "pipeline.json"
FORMAT = 1


def fingerprint(path: Path) -> str:
    """A model directory's content hash: its manifest's (slimkit computed it when writing), else computed."""
    return artifacts.read_manifest(path).get("hash") or artifacts.dir_hash(path)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_key(run: stages.Run, name: str, inputs: list[Path]) -> str:
    """What a stage's artifact depends on: its recipe section (gate excluded: a changed gate is only
    re-checked), its distillation recipe's content, and the content of its input models."""
    section = getattr(run.recipe.stages, name)
    data = section.model_dump(mode="json", exclude={"gate"})
    if name in stages.TRAINED:
        data["recipe"] = stage_recipe_data(section, name)
    if name == "serve":
        data["eval"] = run.recipe.eval.model_dump(mode="json")
    return _digest({"format": FORMAT, "stage": name, "section": data,
                    "inputs": [fingerprint(p) if p.is_dir() else str(p) for p in inputs]})


def check_run_dir(root: Path) -> None:
    """The run directory: new, empty, or an earlier run of a pipeline; never a user's directory."""
    if root.exists() and (not root.is_dir() or any(root.iterdir())) and not (root / RECORD).is_file():
        raise PipelineError(f"{root} exists and is not a pipeline run directory: refusing to write into it "
                            "(choose another --out)")


class Record:
    """RUN/pipeline.json: the recipe, the baseline models' metrics and each stage's outcome."""

    def __init__(self, root: Path, recipe: PipelineRecipe, source: str) -> None:
        self.path = root / RECORD
        old = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.data = {"source": source, "recipe": recipe.model_dump(mode="json"),
                     "baseline": old.get("baseline", {}), "stages": old.get("stages", {})}

    def stage(self, name: str) -> dict[str, Any]:
        return self.data["stages"].setdefault(name, {})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        os.replace(tmp, self.path)


def annotate(path: Path, block: dict[str, Any]) -> None:
    """Add the pipeline's lineage block to an artifact's slimkit.json (atomically)."""
    manifest = artifacts.read_manifest(path)
    manifest["pipeline"] = block
    tmp = path / f".{artifacts.MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    os.replace(tmp, path / artifacts.MANIFEST)


def measure_baseline(run: stages.Run, record: Record, name: str, path: Path, console) -> dict[str, Any]:
    """The teacher's / student's metrics, cached in the record by content and eval settings."""
    key = _digest({"model": fingerprint(path), "eval": run.recipe.eval.model_dump(mode="json")})
    cached = record.data["baseline"].get(name, {})
    if cached.get("key") == key:
        return cached["metrics"]
    console.print(f"[bold]measure[/] {name} ({path})")
    metrics = measure.measure(path, run.recipe.eval) | {"params": measure.count_params(path), "path": str(path)}
    record.data["baseline"][name] = {"key": key, "metrics": metrics}
    record.save()
    return metrics


def _inputs(run: stages.Run, name: str, paths: dict[str, Path]) -> list[Path]:
    src = paths[run.input_of(name)]
    if name == "distill":
        return [run.teacher, src]
    if name == "recover":
        return [stages.recover_teacher(run), src]
    if name == "context" and run.recipe.stages.context.compressor == "classifier":
        t = run.recipe.stages.context.train.teacher
        return [artifacts.resolve(t) if t else run.teacher]
    if name == "context":
        return [artifacts.resolve(run.recipe.stages.context.compressor)]
    return [src]


def run_stage(run: stages.Run, name: str, src: Path, model_of: dict[str, Path], *, same_run: bool,
              console) -> tuple[Path, dict[str, Any] | None]:
    """The stage's work; returns its artifact and, for serve, its figures. `same_run`: an earlier
    attempt of this stage had the same key (its distillation run may be resumed)."""
    out = run.artifact(name)
    overwrite = out.exists()
    if name in stages.TRAINED:
        from slimkit.compress.distill import checkpoint, rundir

        run_dir = run.root / name
        is_run = rundir.is_run_dir(run_dir)
        latest = checkpoint.latest(run_dir / rundir.CHECKPOINTS) if is_run else None
        resume = same_run and latest is not None
        if resume:
            console.print(f"{name}: resuming the interrupted run from {latest.name}")
        fn = stages.run_distill if name == "distill" else stages.run_recover
        return fn(run, src, resume=resume, overwrite=is_run and not resume), None
    if name == "prune":
        return stages.run_prune(run, src, overwrite=overwrite), None
    if name == "quantize":
        return stages.run_quantize(run, src, overwrite=overwrite), None
    if name == "context":
        return stages.run_context(run, src, overwrite=overwrite), None
    return stages.run_serve(run, model_of["serve"], overwrite=overwrite)


def measure_stage(run: stages.Run, name: str, art: Path, parent: dict, model_of: dict[str, Path],
                  figures: dict | None) -> dict[str, Any]:
    """The stage's metrics. context: the scorer with compression (arith is the model's, unchanged);
    serve: what the served model answered."""
    same = {k: parent.get(k) for k in ("arith_acc", "arith_tokens", "params", "size_mb")}
    if name == "serve":
        return same | figures
    if name == "context":
        comp = stages.compression_of(run)
        return same | measure.measure(model_of[name], run.recipe.eval, compression=comp, arith=False)
    m = measure.measure(art, run.recipe.eval)
    return m | {"params": measure.count_params(art) or parent.get("params")}


def execute(recipe: PipelineRecipe, root: Path, source: str, console) -> dict[str, Any]:
    """Run every stage of `recipe` into `root`; returns the record. Raises PipelineError at the first
    failed gate (after writing the report)."""
    run = stages.Run(recipe, root, stages.ref_dir(recipe.teacher, "teacher"),
                     stages.ref_dir(recipe.student, "student") if recipe.student else None)
    root.mkdir(parents=True, exist_ok=True)
    record = Record(root, recipe, source)
    record.save()
    paths: dict[str, Path] = {"teacher": run.teacher}
    metrics: dict[str, dict] = {"teacher": measure_baseline(run, record, "teacher", run.teacher, console)}
    if run.student is not None and recipe.stages.distill is not None:
        paths["student"] = run.student
        metrics["student"] = measure_baseline(run, record, "student", run.student, console)
    model_of: dict[str, Path] = {}                    # context / serve: the model the scorer runs
    for name in recipe.enabled():
        src_name = run.input_of(name)
        src = paths[src_name]
        model_of[name] = model_of.get(src_name, src)
        key = stage_key(run, name, _inputs(run, name, paths) + ([model_of[name]] if name in ("context", "serve") else []))
        entry, art = record.stage(name), run.artifact(name)
        block = artifacts.read_manifest(art).get("pipeline", {}) if art.is_dir() else {}
        t0 = time.perf_counter()
        eval_key = _digest(recipe.eval.model_dump(mode="json"))
        if block.get("key") == key:
            console.print(f"[bold]{name}[/]: unchanged since the last run (skipped)")
            stage_metrics = block["metrics"]
            if block.get("eval") != eval_key:                    # measured with other settings: again
                stage_metrics = measure_stage(run, name, art, metrics[src_name], model_of, None)
                annotate(art, block | {"metrics": stage_metrics, "eval": eval_key})
        else:
            console.print(f"[bold]{name}[/]: running (reads {src_name})")
            same_run = entry.get("pending_key") == key
            entry["pending_key"] = key
            record.save()
            try:
                art, figures = run_stage(run, name, src, model_of, same_run=same_run, console=console)
                stage_metrics = measure_stage(run, name, art, metrics[src_name], model_of, figures)
            except SlimkitError as e:
                done = recipe.enabled()[: recipe.enabled().index(name)]
                raise PipelineError(f"stage {name}: {e}. Earlier artifacts ({', '.join(done) or 'none'}) are intact "
                                    f"in {root}") from None
            annotate(art, {"stage": name, "section": f"stages.{name}", "parent": str(src), "parent_stage": src_name,
                           "key": key, "metrics": stage_metrics, "eval": eval_key, "recipe": source})
            entry["seconds"] = round(time.perf_counter() - t0, 1)
        paths[name], metrics[name] = art, stage_metrics
        if name not in ("context", "serve"):
            model_of[name] = art
        checks = gates.evaluate(getattr(recipe.stages, name).gate, stage_metrics, metrics[src_name],
                                metrics["teacher"], f"stages.{name}.gate")
        entry.update({"artifact": str(art), "parent": src_name, "key": key, "metrics": stage_metrics,
                      "skipped": block.get("key") == key, "gate": [vars(c) for c in checks], "status": "ok" if all(c.passed for c in checks) else "gate failed"})
        record.save()
        failed = [c for c in checks if not c.passed]
        if failed:
            report.write(root, record.data, console)
            done = recipe.enabled()[: recipe.enabled().index(name)]
            raise PipelineError(f"stage {name}: gate failed: " + "; ".join(c.describe() for c in failed)
                                + f". Its artifact and the earlier ones ({', '.join(done) or 'none'}) are in {root}")
    report.write(root, record.data, console)
    return record.data
