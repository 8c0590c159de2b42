"""The pipeline recipe: which stages run, in which order, with which options and quality gates.

    name: toy
    teacher: toy:teacher            # the model everything is distilled from (and the chain's start
    student: toy:student            #   when there is no distill stage); student: distill's initial student
    out: runs/pipeline-toy
    eval: {arith_n: 200, jobs_n: 200}
    stages:                         # any subset, in this order:
      distill:  {recipe: {...} | PATH, set: [...], gate: {...}}
      prune:    {target_params: 0.6, axes: [width, depth], gate: {...}}
      recover:  {recipe: {...} | PATH, set: [...], gate: {...}}
      quantize: {scheme: onnx-int8, gate: {...}}
      context:  {compressor: classifier, rate: 0.5, gate: {...}}
      serve:    {engine: auto, gate: {...}}

Unknown keys are errors that name the nearest valid key; stages out of order are errors. Each stage's
own options are checked by the stage's own validators (`slimkit.pipeline.check`).
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from slimkit import recipe as _recipe
from slimkit.errors import SlimkitError
from slimkit.recipe import StageConfig

ORDER = ("distill", "prune", "recover", "quantize", "context", "serve")


class PipelineError(SlimkitError):
    pass


class EvalSettings(StageConfig):
    """How every artifact is measured: the validation split's first examples, and the scorer's speed."""

    split: Literal["validation", "test"] = "validation"
    arith_n: int = Field(200, ge=1, description="arith problems (greedy accuracy, tokens per answer)")
    jobs_n: int = Field(200, ge=2, description="jobs examples (AUC through the scorer)")
    max_new_tokens: int = Field(160, ge=1)
    items: int = Field(64, ge=1, description="postings per timed scorer request (1 query x items)")
    requests: int = Field(20, ge=1, description="timed requests per artifact (items/s and p99)")
    threads: int = Field(1, ge=1, description="torch / onnxruntime threads while measuring")
    device: str = Field("cpu", description="torch engine: cpu | cuda | cuda:N (also the serve stage's)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="torch / vLLM engine precision")


Gate = dict[str, str]


class DistillStage(StageConfig):
    """`slimkit distill` with the pipeline's teacher and student; its run directory is the stage's."""

    recipe: str | dict[str, Any] = Field(default_factory=dict, description=(
        "a distillation recipe (YAML path, or inline) without teacher/student/out, which the pipeline sets"))
    set: list[str] = Field(default_factory=list, description="overrides of the recipe, as `slimkit distill --set`")
    gate: Gate = Field(default_factory=dict)


class PruneStage(StageConfig):
    """`slimkit prune` of the previous stage's model (no recovery: that is the recover stage); `input:
    teacher` prunes the pipeline's teacher instead (as Minitron does)."""

    input: Literal["previous", "teacher"] = "previous"
    target_params: float | None = None
    axes: list[Literal["width", "depth"]] = Field(default_factory=lambda: ["width"])
    hidden: int | None = None
    mlp: int | None = None
    kv_heads: int | None = None
    heads: int | None = None
    layers: int | None = None
    multiple: int = 32
    importance: str = "activation"
    seed: int = 0
    calib: list[str] = Field(default_factory=lambda: ["arith", "jobs"])
    calib_data: str | None = None
    calib_n: int = Field(128, ge=1)
    gate: Gate = Field(default_factory=dict)


class RecoverStage(StageConfig):
    """Recovery of the pruned model by distillation (`slimkit prune --recover`): teacher `parent` is the
    pruned model's parent, `teacher` the pipeline's teacher, or a model path."""

    recipe: str | dict[str, Any] = Field(default_factory=dict)
    set: list[str] = Field(default_factory=list)
    teacher: str = "parent"
    gate: Gate = Field(default_factory=dict)


class QuantizeStage(StageConfig):
    """`slimkit quantize` (llm-compressor schemes run in .venv-quant, ONNX ones in .venv-onnx)."""

    scheme: str
    calib: str = "arith,jobs"
    n: int = Field(256, ge=1)
    gate: Gate = Field(default_factory=dict)


class ContextTrain(StageConfig):
    """The keep/drop classifier (`slimkit compress-context train`); labels from `teacher` (default: the
    pipeline's teacher)."""

    teacher: str | None = None
    n: int = Field(200, ge=2)
    steps: int = Field(400, ge=1)
    hidden: int = Field(64, ge=8)
    layers: int = Field(2, ge=1)
    seed: int = 0
    labels: Literal["elimination", "leave-one-out"] = "elimination"


class ContextStage(StageConfig):
    """Context compression of the scorer's items: `classifier` trains one here; or a compressor
    directory (a causal LM: surprisal; a trained classifier)."""

    compressor: str = "classifier"
    rate: float
    with_query: bool = False
    train: ContextTrain = Field(default_factory=ContextTrain)
    gate: Gate = Field(default_factory=dict)


class ServeStage(StageConfig):
    """Serve the final model with `slimkit serve` (a separate process) and score through the client."""

    engine: Literal["auto", "torch", "onnxruntime", "vllm"] = "auto"
    gate: Gate = Field(default_factory=dict)


class Stages(StageConfig):
    distill: DistillStage | None = None
    prune: PruneStage | None = None
    recover: RecoverStage | None = None
    quantize: QuantizeStage | None = None
    context: ContextStage | None = None
    serve: ServeStage | None = None


class PipelineRecipe(StageConfig):
    name: str = "pipeline"
    teacher: str
    student: str | None = None
    out: str = "runs/pipeline"
    eval: EvalSettings = Field(default_factory=EvalSettings)
    stages: Stages

    def enabled(self) -> list[str]:
        return [s for s in ORDER if getattr(self.stages, s) is not None]


# -- loading: typos and order first (with the nearest valid name), then pydantic ---------------------

def _model_of(annotation) -> type[BaseModel] | None:
    """The pydantic model inside a field's annotation (X, X | None), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [m for a in typing.get_args(annotation) if (m := _model_of(a))]
        return models[0] if len(models) == 1 else None
    return None


def check_keys(cls: type[BaseModel], data: Any, where: str) -> None:
    """Unknown keys anywhere in `data` (a mapping for `cls`): one error naming the nearest valid key."""
    if not isinstance(data, dict):
        return
    fields = cls.model_fields
    for key, value in data.items():
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f" (did you mean {near[0]!r}?)" if near else f" (valid keys: {', '.join(fields)})"
            raise PipelineError(f"unknown key {where_key(where, key)!r}{hint}")
        sub = _model_of(fields[key].annotation)
        if sub is not None:
            check_keys(sub, value, where_key(where, key))


def where_key(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def check_order(stages: Any, source: str) -> None:
    if not isinstance(stages, dict):
        return
    names = [s for s in stages if s in ORDER]
    want = [s for s in ORDER if s in names]
    if names != want:
        raise PipelineError(f"{source}: stages run in the order {' -> '.join(ORDER)}; this recipe lists "
                            f"{' -> '.join(names)} (put them in pipeline order)")
    if "recover" in names and "prune" not in names:
        raise PipelineError(f"{source}: stage recover distills a pruned model from its parent: add a prune stage "
                            "before it")
    if "context" in names and "serve" not in names:
        raise PipelineError(f"{source}: stage context compresses the scorer's items: add a serve stage after it")


def load(path: str | os.PathLike, overrides: list[str] | None = None) -> PipelineRecipe:
    """The validated recipe from YAML plus `key=value` overrides (`--set stages.prune.target_params=0.5`)."""
    data = _recipe.apply_overrides(_recipe.load_yaml(path), overrides)
    source = str(path)
    for key in data:
        if key not in PipelineRecipe.model_fields:
            near = difflib.get_close_matches(str(key), list(PipelineRecipe.model_fields), n=1, cutoff=0.5)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise PipelineError(f"{source}: unknown key {key!r}{hint}")
    for key, value in data.items():
        sub = _model_of(PipelineRecipe.model_fields[key].annotation)
        if sub is not None:
            check_keys(sub, value, key)
    check_order(data.get("stages"), source)
    if not isinstance(data.get("stages"), dict) or not data["stages"]:
        raise PipelineError(f"{source}: no stages: add at least one of {', '.join(ORDER)} under `stages:`")
    try:
        return _recipe.validate(PipelineRecipe, data, source)
    except _recipe.RecipeError as e:
        raise PipelineError(str(e)) from None


def stage_recipe_data(section: DistillStage | RecoverStage, name: str) -> dict[str, Any]:
    """A distill / recover section's distillation recipe as a mapping (its file read, or inline),
    with the section's overrides applied; teacher, student and out are the pipeline's to set."""
    raw = section.recipe
    data = dict(_recipe.load_yaml(Path(raw).expanduser())) if isinstance(raw, str) else dict(raw)
    data = _recipe.apply_overrides(data, section.set)
    for key in ("teacher", "student", "out"):
        data.pop(key, None)
    from slimkit.compress.distill.config import DistillConfig

    check_keys(DistillConfig, data, f"stages.{name}.recipe")
    return data
