"""The distillation recipe: one pydantic model per section, unknown keys are errors.

Example (recipes/opd_toy.yaml)::

    teacher: toy:teacher
    student: toy:student
    out: runs/opd_toy
    data: {task: arith, split: train}
    rollout: {source: student, samples: 1, temperature: 1.0, max_new_tokens: 96}
    loss: {kind: reverse}
    select: {method: entropy_top, ratio: 0.5}
    train: {steps: 100, prompts_per_step: 16, micro_batch: 16}
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from slimkit.recipe import StageConfig

Quadrant = Literal["Q1", "Q2", "Q3", "Q4"]
SELF = "self"  # teacher: self (OPSDC)
DEFAULT_INSTRUCTION = "Be concise."


class DataConfig(StageConfig):
    """Prompts (and, for `rollout.source: dataset`, completions): a built-in task or a JSONL file."""

    task: str | None = "arith"
    split: str = "train"
    n: int | None = Field(None, ge=1, description="use the first n examples (None: all)")
    path: str | None = Field(None, description="JSONL of {prompt, answer} instead of a task split")
    where: dict[str, str | int] = Field(default_factory=dict, description=(
        "keep only the examples whose meta has these values, e.g. {style: verbose} (arith)"))


class RolloutConfig(StageConfig):
    """Where the sequences that are distilled on come from."""

    source: Literal["student", "teacher", "dataset"] = "student"
    engine: Literal["hf", "vllm"] = "hf"
    samples: int = Field(1, ge=1, description="G samples per prompt")
    temperature: float = Field(1.0, ge=0.0)
    max_new_tokens: int = Field(64, ge=1)
    stop: list[str] = Field(default_factory=list)
    batch_size: int = Field(64, ge=1, description="prompts per generate() call")
    refresh_every: int = Field(1, ge=1, description="vLLM: push student weights every K steps")
    cache: str | None = Field(None, description="teacher rollouts JSONL (default: OUT/teacher_rollouts.jsonl)")


class LossConfig(StageConfig):
    kind: Literal["forward", "reverse", "jsd"] = "reverse"
    beta: float = Field(0.5, ge=0.0, le=1.0, description="JSD mixture weight")
    temperature: float = Field(1.0, gt=0.0)
    teacher: Literal["live", "topk"] = Field("live", description="live teacher or cached sparse top-k")
    topk: int = Field(64, ge=1)
    topk_cache: str | None = Field(None, description="top-k cache dir (default: OUT/teacher_topk)")


class SelectConfig(StageConfig):
    """Token-importance selection (TIP), applied before the student's lm_head runs with gradients.

    H is the student's entropy, D the teacher-student Jensen-Shannon divergence (<= ln 2).
    Selection runs per micro-batch and per DDP rank: `ratio`, `entropy_sample` and quantile thresholds
    are relative to each micro-batch's tokens (so the kept set depends on train.micro_batch and the
    world size); `all` and absolute thresholds are per-token and keep the big batch's tokens.
    """

    method: Literal["all", "entropy_top", "entropy_sample", "quadrant", "union"] = "all"
    ratio: float = Field(0.5, gt=0.0, le=1.0, description="kept fraction for entropy_top/entropy_sample")
    alpha: float = Field(1.0, ge=0.0, description="entropy_sample weight (H/ln V)^alpha")
    gamma: float = Field(1.0, ge=0.0, description="entropy_sample weight (D/ln 2)^gamma")
    quadrants: list[Quadrant] = Field(default_factory=lambda: ["Q3"])
    threshold: Literal["quantile", "absolute"] = "quantile"
    entropy_threshold: float = Field(0.5, ge=0.0, description="quantile in [0,1] or nats")
    divergence_threshold: float = Field(0.5, ge=0.0, description="quantile in [0,1] or nats")
    log_quadrants: bool = Field(True, description="score all tokens (no grad) to log quadrants even for method=all")
    any_of: list[SelectConfig] = Field(default_factory=list, description="union: keep tokens any child keeps")

    @model_validator(mode="after")
    def _check(self) -> SelectConfig:
        if self.method == "union" and not self.any_of:
            raise ValueError("select.method=union needs select.any_of (a list of selectors)")
        if self.threshold == "quantile" and (self.entropy_threshold > 1 or self.divergence_threshold > 1):
            raise ValueError("quantile thresholds must lie in [0, 1]")
        return self


class WeightingConfig(StageConfig):
    """Per-prompt loss weights. `paced` (PACED): p = the share of the prompt's rollout.samples student
    rollouts that the task's verifier accepts, w(p) = p^alpha (1-p)^beta, normalised over the step's
    prompts; prompts with w = 0 are dropped before the teacher runs."""

    method: Literal["none", "paced"] = "none"
    alpha: float = Field(1.0, ge=0.0)
    beta: float = Field(1.0, ge=0.0)


class OptimConfig(StageConfig):
    """AdamW with linear warmup and cosine decay."""

    fused: bool = Field(True, description=(
        "PyTorch's fused AdamW (one kernel per parameter, CPU and CUDA): the same update up to float "
        "rounding, faster, and without the foreach path's temporaries the size of all parameters"))
    lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="cosine decays to lr * min_lr_ratio")
    grad_clip: float | None = Field(1.0, gt=0.0)


class TrainConfig(StageConfig):
    """The loop. Its memory options either change only where gradients are written (fuse_weight_grad,
    sparse_embedding_grad: exact and free) or trade compute for activation memory (the others)."""

    steps: int = Field(100, ge=1)
    prompts_per_step: int = Field(16, ge=1, description="global: split across DDP ranks")
    micro_batch: int = Field(16, ge=1, description="sequences per forward/backward")
    seed: int = 0
    dtype: Literal["float32", "bfloat16"] = "float32"
    teacher_dtype: Literal["float32", "bfloat16"] | None = None
    gradient_checkpointing: bool = Field(False, description=(
        "recompute the student body's activations in the backward instead of keeping them"))
    fuse_weight_grad: bool = Field(True, description=(
        "the fused KL kernel adds the student lm_head's weight gradient straight into the weight's "
        "persistent .grad during its forward (gradient-accumulation fusion) instead of building its own "
        "[V, H] gradient for autograd to add there; the loss is then backpropagated with gradient 1 and "
        "all gradients are scaled by 1 / kept tokens afterwards. Single process only (off under DDP)"))
    sparse_embedding_grad: bool = Field(True, description=(
        "the input embedding's backward yields a sparse gradient (the rows of the tokens present), "
        "which autograd adds in place into the persistent dense .grad, instead of a dense [V, H] "
        "temporary; AdamW still sees a dense gradient. Single process only (off under DDP)"))
    length_groups: int = Field(4, ge=1, description=(
        "forwards per micro-batch (student and teacher): its sequences sorted by length and cut into at "
        "most this many groups, each padded only to its own longest (the cuts that compute the fewest "
        "token positions). The same update up to float rounding; 1: one forward over the whole "
        "micro-batch, padded to its longest sequence. Single process only (one forward under DDP/FSDP, "
        "whose ranks must run the same collectives)"))
    teacher_micro_batch: int | None = Field(None, ge=1, description=(
        "sequences per teacher forward (no grad; its activations are transient, so smaller blocks lower "
        "the step's peak at a small speed cost). None: the whole micro-batch"))
    mlp_tiles: int = Field(1, ge=1, description=(
        "run each student MLP over this many checkpointed blocks of token rows (TiledMLP, see "
        "slimkit/compress/distill/memory.py): the same result, with the [tokens, intermediate] activations "
        "of one block at a time, for one more MLP forward per step. 1: off"))
    parallel: Literal["ddp", "fsdp"] = Field("ddp", description=(
        "under torchrun: ddp replicates the student; fsdp shards student and frozen teacher across ranks "
        "(FSDP2 fully_shard, slimkit/compress/distill/parallel.py)"))
    device: str = "auto"
    threads: int | None = Field(None, ge=1)
    checkpoint_every: int = Field(50, ge=0, description="0: only at the end and on SIGTERM")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(1, ge=1)
    live_table: bool = True


class EvalConfig(StageConfig):
    every: int = Field(0, ge=0, description="evaluate every N steps (0: only at start and end)")
    split: str = "validation"
    n: int = Field(200, ge=1)
    max_new_tokens: int | None = Field(None, ge=1, description="default: rollout.max_new_tokens")
    at_start: bool = True


Section = Literal["P", "CoT", "A"]
SECTIONS = ("P", "CoT", "A")


class MarkersConfig(StageConfig):
    """Where a response's reasoning (CoT) ends and its answer (A) begins, as text. Exactly one is set."""

    cot_end: str | None = Field(None, description="the reasoning ends with this text, e.g. '</think>'")
    answer_start: str | None = Field(None, description="the answer starts with this text, e.g. 'Answer:'")

    @model_validator(mode="after")
    def _check(self) -> MarkersConfig:
        if (self.cot_end is None) == (self.answer_start is None):
            raise ValueError("truncation.markers needs exactly one of cot_end (e.g. '</think>') and "
                             "answer_start (e.g. 'Answer:')")
        if (self.cot_end or self.answer_start or "x").strip() == "":
            raise ValueError("truncation.markers: a marker must not be empty")
        return self


class TruncationConfig(StageConfig):
    """Sequence truncation (slimkit/compress/distill/truncation.py): supervise chosen sections of each
    sequence, prompt (P), reasoning (CoT), answer (A), on the first `ratio` (or the first `tokens`) of
    each response; the cut tail is fed to neither model. A response without the reasoning marker is all
    answer."""

    ratio: float | None = Field(None, description="keep the first ratio of each response's tokens, in (0, 1]")
    tokens: int | None = Field(None, ge=1, description="keep the first `tokens` of each response instead")
    ratio_of: Literal["response", "longest"] = Field("response", description=(
        "response: each response keeps the first ratio of its own tokens (the paper); longest: each keeps at "
        "most ratio x the longest response of the step (a token budget that scales with the data: shorter "
        "responses stay whole, and a padded batch is as narrow as with `response`)"))
    supervise: list[Section] = Field(default_factory=lambda: ["CoT", "A"], description=(
        "the sections trained on: any of P, CoT, A (a list, or one string such as 'CoT+A')"))
    markers: MarkersConfig | Literal["auto", "none"] = Field("auto", description=(
        "auto: the task's marker (arith: answer_start 'Answer:'), else cot_end '</think>' when the chat "
        "template has one, else none (every response is all answer)"))

    @field_validator("supervise", mode="before")
    @classmethod
    def _sections(cls, v):
        names = [x.strip() for x in v.split("+")] if isinstance(v, str) else v
        if isinstance(names, list):
            bad = [x for x in names if x not in SECTIONS]
            if bad:
                raise ValueError(f"unknown section {bad[0]!r}: choose among {', '.join(SECTIONS)} "
                                 "(e.g. [CoT] or 'P+CoT+A')")
            if not names:
                raise ValueError("supervise at least one section (P, CoT, A)")
        return names

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, v):
        if v is not None and not 0.0 < v <= 1.0:
            raise ValueError(f"truncation.ratio must lie in (0, 1], got {v}")
        return v

    @model_validator(mode="after")
    def _check(self) -> TruncationConfig:
        if self.ratio is not None and self.tokens is not None:
            raise ValueError("truncation: set ratio or tokens, not both")
        if self.ratio_of == "longest" and self.ratio is None:
            raise ValueError("truncation.ratio_of=longest scales truncation.ratio: set a ratio")
        return self


class SodaConfig(StageConfig):
    """SODA (slimkit/compress/distill/soda.py): DPO of the teacher's response (chosen) against one cached
    snapshot of the starting student's response (rejected), with the starting student as reference."""

    beta: float = Field(0.1, gt=0.0, description="DPO inverse temperature")
    mix: Literal["none", "forward", "sft"] = Field("none", description=(
        "an extra term on the teacher response: forward KL to the live teacher, or its NLL (SFT)"))
    mix_weight: float = Field(1.0, ge=0.0, description="weight of the mix term (a mean over the tokens it trains on)")
    mix_on: Literal["chosen", "both"] = Field("chosen", description=(
        "the responses the mix term trains on: chosen (the teacher's, the paper's setting) or both (with mix "
        "forward, also the contrasted pairs' snapshot responses: the teacher's distribution at the student's "
        "own states, which its responses never visit; with loss.teacher topk cached once on the snapshot too)"))
    rejected: Literal["auto", "wrong", "all"] = Field("auto", description=(
        "the pairs whose DPO term runs: wrong = only those whose student response the task's verifier rejects "
        "(a correct one is no worse than the teacher's; the mix term still trains on its teacher response), "
        "all = every pair; auto = wrong when the data has a task, else all"))
    contrast: Literal["sequence", "first_divergence"] = Field("sequence", description=(
        "sequence: DPO on the responses' whole log-probs (the paper); first_divergence: on the one token where "
        "they first differ (the rest of the student's response follows from its first departure)"))
    temperature: float = Field(1.0, ge=0.0, description="sampling temperature of the student snapshot")
    max_new_tokens: int | None = Field(None, ge=1, description="default: rollout.max_new_tokens")
    cache: str | None = Field(None, description=(
        "student snapshot JSONL (default: OUT/student_snapshot.jsonl); the reference log-probs lie beside it"))


    @model_validator(mode="after")
    def _check(self) -> SodaConfig:
        if self.mix_on == "both" and self.mix != "forward":
            raise ValueError(f"soda.mix_on=both needs soda.mix=forward (the teacher's distribution on the student's "
                             f"responses); {self.mix!r} has no target there")
        return self


class DistillConfig(StageConfig):
    teacher: str = Field(description="a model dir, toy:NAME, or `self`: the student conditioned on "
                                     "teacher_instruction (concise self-distillation, OPSDC)")
    student: str
    self_teacher: Literal["frozen", "live"] | None = Field(None, description=(
        "teacher: self: frozen = a copy of the student's initial weights (default), live = the current "
        "weights without gradient"))
    teacher_instruction: str | None = Field(None, description=(
        "added to the prompt the teacher sees (the student sees the plain prompt); "
        "default \"Be concise.\" for teacher: self, none otherwise"))
    out: str = "runs/distill"
    data: DataConfig = Field(default_factory=DataConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    weighting: WeightingConfig = Field(default_factory=WeightingConfig)
    stages: list[StagePatch] = Field(default_factory=list, description=(
        "run these partial recipes back to back on one model and optimizer (slimkit/compress/distill/stages.py)"))
    truncation: TruncationConfig | None = None
    soda: SodaConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> DistillConfig:
        if self.data.task is None and self.data.path is None:
            raise ValueError("data needs a task or a path")
        if self.loss.teacher == "topk" and self.rollout.source == "student":
            raise ValueError("loss.teacher=topk caches the teacher on fixed sequences: "
                             "use rollout.source teacher or dataset (on-policy needs loss.teacher=live)")
        # An option that the chosen setting does not use is an error, not silently ignored.
        rollout, loss = self.rollout, self.loss
        if rollout.engine == "vllm" and rollout.source != "student":
            raise ValueError(f"rollout.engine=vllm samples the student on-policy; rollout.source={rollout.source} "
                             "does not sample with it (drop rollout.engine, or use rollout.source=student)")
        if rollout.refresh_every != 1 and rollout.engine != "vllm":
            raise ValueError("rollout.refresh_every applies to rollout.engine=vllm only")
        if rollout.cache is not None and rollout.source != "teacher":
            raise ValueError(f"rollout.cache holds teacher rollouts; rollout.source={rollout.source} does not use it")
        if loss.teacher != "topk" and (loss.topk != LossConfig.model_fields["topk"].default or loss.topk_cache):
            raise ValueError("loss.topk / loss.topk_cache apply to loss.teacher=topk only")
        self._check_teacher()
        if self.train.parallel == "fsdp" and self.weighting.method != "none":
            raise ValueError("train.parallel=fsdp runs every rank through the same micro-batches, which "
                             "weighting.method=paced (ranks drop different rollouts) does not keep: use ddp")
        if self.weighting.method == "paced":
            if rollout.source != "student" or rollout.samples < 2:
                raise ValueError("weighting.method=paced needs the student's pass rate over several rollouts: "
                                 "rollout.source=student and rollout.samples >= 2")
            if self.data.task is None:
                raise ValueError("weighting.method=paced needs a task verifier: data.task, not data.path")
        if self.stages:
            from slimkit.compress.distill.stages import check_stages

            check_stages(self)
        self._check_methods()
        return self

    def _check_teacher(self) -> None:
        if self.teacher != SELF and self.self_teacher is not None:
            raise ValueError(f"self_teacher applies to teacher: self only (teacher is {self.teacher!r})")
        if self.instruction and (self.loss.teacher == "topk" or self.rollout.source == "teacher"):
            raise ValueError("teacher_instruction conditions the live teacher on the student's sequences: "
                             "it does not apply to loss.teacher=topk or rollout.source=teacher")

    @property
    def instruction(self) -> str:
        """The teacher-only instruction in effect ("" when none)."""
        if self.teacher_instruction is not None:
            return self.teacher_instruction
        return DEFAULT_INSTRUCTION if self.teacher == SELF else ""

    def _check_methods(self) -> None:
        """truncation and soda: the settings they need."""
        if self.stages and (self.truncation is not None or self.soda is not None):
            raise ValueError("truncation and soda run as whole recipes, not inside stages: drop stages, or run them "
                             "as separate recipes")
        if self.truncation is not None and self.loss.teacher != "live":
            raise ValueError("truncation runs the live teacher on the kept prefix: use loss.teacher=live")
        if self.soda is None:
            return
        if self.truncation is not None:
            raise ValueError("soda and truncation do not combine: choose one")
        if self.rollout.source != "teacher":
            raise ValueError("soda pairs the teacher's response (chosen) with the student's: use rollout.source=teacher")
        if self.select.method != "all":
            raise ValueError("soda trains on whole responses with a DPO loss: select.method=all")
        if self.soda.rejected == "wrong" and self.data.task is None:
            raise ValueError("soda.rejected=wrong needs the task's verifier: data.task, or soda.rejected=all")


class StagePatch(StageConfig):
    """One entry of `stages:`: its steps, optionally its lr, and partial sections merged over the
    recipe's own (any key of loss, rollout, select, weighting)."""

    name: str | None = None
    steps: int = Field(ge=1)
    lr: float | None = Field(None, gt=0.0)
    loss: dict[str, Any] = Field(default_factory=dict)
    rollout: dict[str, Any] = Field(default_factory=dict)
    select: dict[str, Any] = Field(default_factory=dict)
    weighting: dict[str, Any] = Field(default_factory=dict)


SelectConfig.model_rebuild()
DistillConfig.model_rebuild()
