"""The distillation loop: plain PyTorch, one optimizer step per `train_step`.

Each step takes the step's prompts (a deterministic function of seed and step, so a resumed run sees
the same data), gets their rollouts (student samples, cached teacher samples or dataset completions)
and runs `_micro_step` on each micro-batch of sequences; then clipping, AdamW and the warmup + cosine
schedule.

Gradients are divided by the number of kept tokens of the whole optimizer step (summed over
micro-batches and DDP ranks), so gradient accumulation and data parallelism give the same update as
one big batch for the same kept tokens. Selection itself runs per micro-batch and per rank: the kept
tokens are the big batch's for `select.method: all` and per-token rules (`quadrant` with absolute
thresholds); `entropy_top`, `entropy_sample` and quantile thresholds rank each micro-batch's tokens,
so their update depends on `train.micro_batch` and the world size.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import signal
import threading
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from slimkit import artifacts, kernels
from slimkit.compress.distill import checkpoint, parallel, rundir, stages, weighting
from slimkit.compress.distill.config import DistillConfig
from slimkit.compress.distill.hidden import Body, supervised_hidden
from slimkit.compress.distill.memory import tile_mlps
from slimkit.compress.distill.metrics import LiveTable, MetricsLog, PeakMemory
from slimkit.compress.distill.models import load_examples, load_pair
from slimkit.compress.distill.rollouts import DatasetSource, Rollout, StudentSource, TeacherSource, collate
from slimkit.compress.distill.select import (
    empty_sums,
    finish_quadrants,
    keep_mask,
    quadrant_sums,
    scores,
    thresholds,
)
from slimkit.errors import SlimkitError
from slimkit.recipe import dump


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def step_indices(step: int, n: int, per_step: int, seed: int) -> list[int]:
    """The example indices of a step: consecutive slices of a fresh permutation per epoch."""
    out = []
    for pos in range(step * per_step, (step + 1) * per_step):
        epoch, k = divmod(pos, n)
        out.append(_permutation(seed, epoch, n)[k])
    return out


def eval_groups(examples) -> dict[str, list[int]]:
    """Example indices by group: "" (all), then "_level_L" and "_style_S" where the examples' meta has them."""
    groups: dict[str, list[int]] = {"": list(range(len(examples)))}
    for key in ("level", "style"):
        for i, x in enumerate(examples):
            if key in x.meta:
                groups.setdefault(f"_{key}_{x.meta[key]}", []).append(i)
    return dict(sorted(groups.items()))


@dataclass
class DistEnv:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def ddp(self) -> bool:
        return self.world > 1

    def rank0_first(self, make):
        """Call `make()` on rank 0 first (it builds and writes a cache), then on the others (they read it)."""
        if not self.ddp:
            return make()
        out = make() if self.rank == 0 else None
        dist.barrier()
        return out if self.rank == 0 else make()

    def sum(self, values: list[float]) -> list[float]:
        if not self.ddp:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()


def parse_device(device: str, local_rank: int = 0) -> torch.device:
    """`train.device`: auto (cuda:LOCAL_RANK if CUDA is available, else cpu), cpu, cuda or cuda:N."""
    if device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return artifacts.check_device(device, what="train.device")


def _dist_env(device: str) -> DistEnv:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = parse_device(device, local)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return DistEnv(dist.get_rank() if world > 1 else 0, world, dev)


class Distiller:
    """Holds the models, data, optimizer and run directory of one distillation run."""

    def __init__(self, cfg: DistillConfig, *, resume: bool = False, overwrite: bool = False):
        # self.recipe: the whole recipe; self.cfg: the running stage's (the recipe itself without stages)
        self.recipe = cfg
        self.stage_cfgs = stages.stage_recipes(cfg)
        self.cfg = self.stage_cfgs[0]
        self.env = _dist_env(cfg.train.device)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.prompts_per_step % self.env.world:
            raise SlimkitError(f"train.prompts_per_step={cfg.train.prompts_per_step} is not divisible by the "
                               f"{self.env.world} data-parallel ranks")
        self.out = Path(cfg.out).expanduser()
        self.ckpt_dir = self.out / rundir.CHECKPOINTS
        rundir.check(self.out, resume=resume, overwrite=overwrite)
        resume_state = None
        if resume:
            path = checkpoint.latest(self.ckpt_dir)
            resume_state = checkpoint.load(path)
            rundir.check_resume_recipe(path, resume_state.get("recipe") or {}, dump(cfg))
        if self.env.ddp:
            dist.barrier()                          # every rank has checked before rank 0 writes
        if self.env.rank == 0:
            if overwrite:
                rundir.start_over(self.out)
            if not resume:
                rundir.mark(self.out, dump(cfg))

        # Everything a user can get wrong is checked before the first step.
        tdtype = cfg.train.teacher_dtype or cfg.train.dtype
        self.teacher, self.student, self.tok, self.teacher_dir, self.student_dir = load_pair(
            cfg.teacher, cfg.student, teacher_dtype=tdtype, device=self.env.device, self_teacher=cfg.self_teacher)
        self.examples = load_examples(cfg.data)
        self.task = None
        if cfg.data.task:
            from slimkit.tasks import get_task

            self.task = get_task(cfg.data.task)
        from slimkit.tasks import format_prompt

        self.prompts = [format_prompt(self.tok, ex.prompt) for ex in self.examples]
        # teacher_instruction: the teacher sees each prompt with it (OPSDC), the student the plain one
        self.teacher_prompt_ids = ([self.tok(format_prompt(self.tok, f"{ex.prompt} {cfg.instruction}"),
                                             add_special_tokens=False)["input_ids"] for ex in self.examples]
                                   if cfg.instruction else None)
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        self.teacher_body: torch.nn.Module | None = None  # set below; sources built before it see it unset
        self.stage = stages.stage_at(cfg, int(resume_state["step"]) if resume_state else 0)
        self._enter_stage(self.stage)
        self.truncation = self.soda = None  # sequence truncation; SODA: pairs instead of rollouts
        if cfg.truncation is not None:
            from slimkit.compress.distill.truncation import Truncation

            self.truncation = Truncation(cfg.truncation, self.tok, self.task, teacher=self.teacher, student=self.student)
        if cfg.soda is not None:
            from slimkit.compress.distill.soda import Soda

            self.soda = self.source = Soda(self, self.source)

        torch.manual_seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        self.student.train()
        if cfg.train.gradient_checkpointing:
            self.student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.train.mlp_tiles > 1:
            tile_mlps(self.student, cfg.train.mlp_tiles)
        # DDP's reducer expects every gradient from autograd (dense unless the module was built sparse).
        self.fuse_weight_grad = cfg.train.fuse_weight_grad and not self.env.ddp
        sparse_embedding = cfg.train.sparse_embedding_grad and not self.env.ddp
        if sparse_embedding:
            self.student.get_input_embeddings().sparse = True
        self.persistent_grads = self.fuse_weight_grad or sparse_embedding
        self.model: torch.nn.Module = Body(self.student)
        self.teacher_body = Body(self.teacher)  # with self_teacher live, the student itself, outside DDP
        if self.env.ddp and cfg.train.parallel == "fsdp":  # shards of student and teacher (parallel.py)
            self.model = parallel.shard(self.model)
            self.teacher_body = self.model if self.teacher is self.student else parallel.shard(self.teacher_body)
        elif self.env.ddp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.model = DDP(self.model, device_ids=[self.env.device] if self.env.device.type == "cuda" else None)
        optim = cfg.optim
        self.params = [p for p in self.student.parameters() if p.requires_grad]
        # Persistent gradients are zeroed between steps, not freed, and dense before the first backward (a
        # sparse gradient is then added into them). A parameter without a gradient in some step would get
        # AdamW's zero-gradient update instead of none; every student parameter gets one in every step.
        if self.persistent_grads:
            for p in self.params:
                p.grad = torch.zeros_like(p)
        self.opt = torch.optim.AdamW(self.params, lr=optim.lr, betas=optim.betas,
                                     weight_decay=optim.weight_decay, fused=optim.fused or None)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, functools.partial(stages.lr_multiplier, cfg=cfg))
        self.step = 0
        if resume_state is not None:
            self._load(checkpoint.latest(self.ckpt_dir), resume_state)
        self.log = MetricsLog(self.out / rundir.METRICS, keep_until_step=self.step if resume else None,
                              enabled=self.env.rank == 0)
        self._stop_signal: str | None = None

    # ---------------------------------------------------------------- setup helpers
    def _enter_stage(self, k: int) -> None:
        """Run stage k from now on: its recipe, rollout source and top-k teacher."""
        self.stage, self.cfg = k, self.stage_cfgs[k]
        with parallel.full_weights(self.teacher_body):  # teacher rollouts and top-k caches generate with it
            self.source = self._make_source()
            self.topk = self._make_topk()

    def _cache_path(self, given: str | None, name: str) -> Path:
        """A teacher cache's path: as given, else OUT/name (one per stage when the recipe has stages)."""
        if given:
            return Path(given).expanduser()
        stem, dot, ext = name.partition(".")
        return self.out / (f"{stem}.stage{self.stage}{dot}{ext}" if self.recipe.stages else name)

    def _make_source(self):
        rollout = self.cfg.rollout
        if rollout.source == "student":
            if rollout.engine == "vllm":
                from slimkit.compress.distill.rollouts import VllmStudentSource

                return VllmStudentSource(self.tok, self.prompts, rollout, self.student_dir, seed=self.cfg.train.seed)
            return StudentSource(self.tok, self.prompts, rollout)
        if rollout.source == "dataset":
            from slimkit.tasks import training_text

            answers = [training_text(self.tok, ex)[1] for ex in self.examples]
            return DatasetSource(self.tok, self.prompts, answers)
        cache = self._cache_path(rollout.cache, "teacher_rollouts.jsonl")
        make = functools.partial(TeacherSource, self.teacher, self.tok, self.prompts, rollout, cache,
                                 teacher_hash=artifacts.dir_hash(self.teacher_dir), seed=self.cfg.train.seed)
        return self.env.rank0_first(make)

    def _make_topk(self):
        if self.cfg.loss.teacher != "topk":
            return None
        return self.topk_cache(self._cache_path(self.cfg.loss.topk_cache, "teacher_topk"), self.source)

    def topk_cache(self, path: Path, source, setting: str = "loss.topk_cache"):
        """The teacher's cached top-k on the fixed rollouts of `source` (built once, on rank 0 first);
        `setting`: the recipe key that moves it (named when a stale cache is refused)."""
        from slimkit.compress.distill.topk import TopKCache

        loss = self.cfg.loss
        make = functools.partial(TopKCache.build_or_load, path, self.teacher, source, k=loss.topk, vocab_size=len(self.tok),
                                 temperature=loss.temperature, pad_id=self.pad_id,
                                 teacher_hash=artifacts.dir_hash(self.teacher_dir), setting=setting)
        with parallel.full_weights(self.teacher_body):
            return self.env.rank0_first(make)

    def _load(self, path: Path, state: dict[str, Any]) -> None:
        try:
            if parallel.is_sharded(self.model):
                parallel.load_full_state(self.model, self.opt, state["model"], state["optimizer"])
            else:
                self.student.load_state_dict(state["model"])
                self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            checkpoint.set_rng_state(state["rng"])
            self.step = int(state["step"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise SlimkitError(f"--resume: checkpoint {path} does not fit this run's student "
                               f"{self.student_dir} ({first})") from None

    def save_checkpoint(self) -> None:
        model, optim = self.student.state_dict(), self.opt.state_dict()
        if parallel.is_sharded(self.model):  # gathered to rank 0 (every rank takes part)
            model, optim = parallel.full_state(self.model, self.opt)
        if self.env.rank == 0:
            checkpoint.save(self.ckpt_dir, self.step, model=model, optimizer=optim,
                            scheduler=self.sched, recipe=dump(self.recipe), keep=self.cfg.train.keep_checkpoints,
                            extra={"data_position": self.step * self.cfg.train.prompts_per_step})
        if self.env.ddp:
            dist.barrier()

    # ---------------------------------------------------------------- one optimizer step
    @property
    def length_groups(self) -> int:
        """Forwards per micro-batch: one under DDP/FSDP, whose ranks must run the same collectives."""
        return 1 if self.env.ddp else self.cfg.train.length_groups

    def _seed(self, *parts: int) -> int:
        return (self.cfg.train.seed * 1_000_003 + hash(parts)) % (2**31)

    def _teacher_rows(self, batch, part) -> kernels.LiveTeacher | kernels.SparseTeacher:
        """The teacher at the micro-batch's supervised positions: cached top-k, or live hidden states."""
        if self.topk is not None:
            return self.topk.rows(part, self.env.device)
        if self.teacher_prompt_ids is not None:  # the same completions after the teacher's own prompts
            batch = collate([Rollout(self.teacher_prompt_ids[r.example], r.completion_ids, r.example) for r in part],
                            self.pad_id, self.env.device)
        with torch.no_grad():
            th = supervised_hidden(self.teacher_body, batch, self.length_groups,
                                   block=self.cfg.train.teacher_micro_batch)
        # detached: with self_teacher live this is the student's own lm_head
        return kernels.LiveTeacher(th, self.teacher.get_output_embeddings().weight.detach())

    def _micro_step(self, part, micro: int, sums: dict[str, float]) -> None:
        if self.soda is not None:
            return self.soda.micro_step(part, sums)
        cfg = self.cfg
        batch = collate(part, self.pad_id, self.env.device)
        # teacher: hidden states at the supervised positions (no grad), or its cached top-k rows
        teacher = self._teacher_rows(batch, part)
        # student body -> hidden states at the supervised positions (with grad)
        autocast = (torch.autocast(self.env.device.type, dtype=torch.bfloat16)
                    if cfg.train.dtype == "bfloat16" else contextlib.nullcontext())
        with autocast:
            hidden = supervised_hidden(self.model, batch, self.length_groups)
        w = self.student.get_output_embeddings().weight  # after the forward: under FSDP, the gathered weight
        h = hidden.to(w.dtype)
        # token scores (no grad) and selection (TIP): the lm_head then runs with gradients on the kept rows
        keep = torch.ones(h.shape[0], dtype=torch.bool, device=h.device)
        if h.shape[0] and (cfg.select.method != "all" or cfg.select.log_quadrants):
            sc = scores(h, w, teacher, temperature=cfg.loss.temperature, vocab_size=len(self.tok))
            gen = torch.Generator().manual_seed(self._seed(self.step, self.env.rank, micro))
            keep = keep_mask(cfg.select, sc, gen)
            th = thresholds(cfg.select, sc) if cfg.select.method == "quadrant" else (None, None)
            for k, v in quadrant_sums(sc, keep, *th).items():
                sums[k] += v
        else:
            sums["tokens"] += h.shape[0]
            sums["kept"] += h.shape[0]
        rows = None if bool(keep.all()) else keep.nonzero().squeeze(1)
        # per-token loss weights (weighting.py): each token carries its rollout's weight
        weights = None
        if any(r.weight != 1.0 for r in part):
            seq_w = torch.tensor([r.weight for r in part], dtype=h.dtype, device=h.device)
            weights = seq_w.repeat_interleave(batch.target_mask.sum(1))
            weights = weights if rows is None else weights[rows]
        sums["norm"] += float(weights.sum()) if weights is not None else float(keep.sum())
        # summed (weighted) loss over the kept tokens, backward (train_step scales the gradients by 1 / norm)
        if rows is not None and rows.numel() == 0 or h.shape[0] == 0:
            loss = (h.sum() + w.sum()) * 0.0  # nothing kept: an empty backward keeps DDP ranks in step
        elif weights is not None:
            loss = (kernels.linear_kl(h, w, teacher, kind=cfg.loss.kind, beta=cfg.loss.beta,
                                      temperature=cfg.loss.temperature, rows=rows, reduction="none",
                                      vocab_size=len(self.tok)).loss * weights).sum()
        else:
            # fused: d loss / d w goes into w.grad in the kernel's forward, so the raw sum is
            # backpropagated with gradient 1, as the kernel requires
            loss = kernels.linear_kl(h, w, teacher, kind=cfg.loss.kind, beta=cfg.loss.beta,
                                     temperature=cfg.loss.temperature, rows=rows, reduction="sum",
                                     vocab_size=len(self.tok),
                                     weight_grad_into=w.grad if self.fuse_weight_grad else None).loss
        loss.backward()
        sums["loss_sum"] += float(loss.detach())
        sums["sequences"] += len(part)
        sums["completion_tokens"] += sum(len(r.completion_ids) for r in part)

    def train_step(self) -> dict[str, Any]:
        cfg, env = self.cfg, self.env
        t0 = time.perf_counter()
        idx = step_indices(self.step, len(self.examples), cfg.train.prompts_per_step, cfg.train.seed)
        idx = idx[env.rank :: env.world]
        with parallel.full_weights(self.model if cfg.rollout.source == "student" else None):
            rollouts = self.source.get(idx, model=self.student, seed=self._seed(self.step, env.rank, -1), step=self.step)
        extra: dict[str, Any] = {"stage": self.stage} if self.recipe.stages else {}
        if cfg.weighting.method == "paced":  # before the teacher runs: prompts with weight 0 are dropped
            rollouts, stats = weighting.weigh(cfg.weighting, rollouts, self._verify, env.sum, keep_one=env.ddp)
            extra.update(stats)
        if self.truncation is not None:  # the cut tails are dropped here: no model runs on them
            rollouts = self.truncation.apply(rollouts)
        t1 = time.perf_counter()
        self.opt.zero_grad(set_to_none=not self.persistent_grads)
        # every rank sums the same keys (DDP all-reduces them as one list)
        sums: dict[str, float] = defaultdict(float, empty_sums(), norm=0.0, loss_sum=0.0, sequences=0.0,
                                                 completion_tokens=0.0)
        if self.truncation is not None:
            sums.update(self.truncation.step_sums(rollouts))
        with PeakMemory(env.device) as mem:
            micro = [rollouts[i : i + cfg.train.micro_batch] for i in range(0, len(rollouts), cfg.train.micro_batch)]
            for j, part in enumerate(micro):
                last = j == len(micro) - 1
                no_sync = self.model.no_sync() if hasattr(self.model, "no_sync") and not last else contextlib.nullcontext()
                with no_sync:
                    self._micro_step(part, j, sums)
            keys = sorted(sums)
            totals = dict(zip(keys, env.sum([sums[k] for k in keys]), strict=True))
            lr = self.sched.get_last_lr()[0]
            # A step whose selection kept no token carries no supervision: the weights stay as they are.
            # (An AdamW step on zero gradients would still move them by its momentum, for many steps.)
            # Every rank sees the same total, so DDP ranks skip together. The schedule still advances.
            skipped = totals["norm"] == 0
            grad_norm = 0.0
            if skipped:
                with warnings.catch_warnings():  # PyTorch warns if this precedes every optimizer step
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler")
                    self.sched.step()
            else:
                # DDP averages gradients over ranks: scale so the result is sum(grad) / (weighted) kept
                # tokens of the step.
                scale = env.world / totals["norm"]
                for p in self.params:
                    if p.grad is not None:
                        p.grad.mul_(scale)
                clip = cfg.optim.grad_clip or float("inf")
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
                self.opt.step()
                self.sched.step()
        self.step += 1
        record = {"step": self.step, "loss": totals["loss_sum"] / (totals["norm"] or 1.0), "lr": lr,
                  "grad_norm": grad_norm, "tokens": int(totals["tokens"]), "kept": int(totals["kept"]),
                  "skipped_update": skipped,
                  "completion_len": totals["completion_tokens"] / max(totals["sequences"], 1.0),
                  "peak_mem_mb": mem.peak_bytes / 2**20, "mem_start_mb": mem.start_bytes / 2**20,
                  "mem_method": mem.method,
                  "rollout_s": t1 - t0, "step_s": time.perf_counter() - t0, "world": env.world}
        record.update(finish_quadrants(totals))
        record.update(extra)
        for method in (self.truncation, self.soda):
            if method is not None:
                record.update(method.record(totals))
        return record

    def _verify(self, example: int, completion_ids: list[int]) -> bool:
        """The task's verifier on a completion of example `example`."""
        return bool(self.task.verify(self.examples[example], self.tok.decode(completion_ids, skip_special_tokens=True)))

    # ---------------------------------------------------------------- eval
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.task is None:
            return {}
        from slimkit.tasks import format_prompt
        from slimkit.tasks.generate import generate

        every = self.task.split(self.cfg.eval.split, self.cfg.eval.n)
        exs = every[self.env.rank :: self.env.world]
        self.student.eval()
        with parallel.full_weights(self.model):
            outs = generate(self.student, self.tok, [format_prompt(self.tok, x.prompt) for x in exs],
                            max_new_tokens=self.cfg.eval.max_new_tokens or self.recipe.rollout.max_new_tokens,
                            temperature=0.0, batch_size=self.cfg.rollout.batch_size)
        self.student.train()
        # accuracy and generated tokens per answer, overall and per level / style (names from every rank's data)
        ok = [bool(self.task.verify(x, o[0].text)) for x, o in zip(exs, outs, strict=True)]
        ntok = [len(o[0].token_ids) for o in outs]
        names = eval_groups(every)
        mine = eval_groups(exs)
        flat = self.env.sum([float(x) for n in names for i in [mine.get(n, [])]
                             for x in (sum(ok[j] for j in i), sum(ntok[j] for j in i), len(i))])
        out: dict[str, float] = {}
        for k, n in enumerate(names):
            correct, tokens, total = flat[3 * k : 3 * k + 3]
            out[f"eval_acc{n}"] = correct / max(total, 1.0)
            out[f"eval_tokens{n}"] = tokens / max(total, 1.0)
        out["eval_n"] = int(flat[2])
        return out

    # ---------------------------------------------------------------- the run
    def _on_signal(self, signum, _frame) -> None:
        self._stop_signal = signal.Signals(signum).name

    def _logged_history(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(last step record, start eval) already in the metrics log: a resumed run reports them too."""
        last: dict[str, Any] = {}
        start: dict[str, Any] = {}
        if self.step and self.log.enabled and self.log.path.exists():
            for line in self.log.path.read_text().splitlines():
                rec = json.loads(line)
                if "loss" in rec:
                    last = rec
                elif rec.get("step") == 0 and "eval_acc" in rec:
                    start = rec
        return last, start

    def run(self) -> dict[str, Any]:
        cfg = self.recipe
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
        history, start_eval = self._logged_history()
        if self.step == 0 and cfg.eval.at_start:
            start_eval = self.evaluate()
            if start_eval:
                self.log.write({"step": 0, **start_eval})
        with LiveTable(enabled=cfg.train.live_table and self.env.rank == 0) as table:
            while self.step < cfg.train.steps:
                record = self.train_step()
                if cfg.eval.every and self.step % cfg.eval.every == 0 and self.step < cfg.train.steps:
                    record.update(self.evaluate())
                if self.step % cfg.train.log_every == 0 or "eval_acc" in record:
                    self.log.write(record)
                    table.add(record)
                history = record
                stop = self.env.sum([1.0 if self._stop_signal else 0.0])[0] > 0
                boundary = self.step in stages.ends(cfg)[:-1]
                if stop or boundary or (cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0):
                    self.save_checkpoint()
                if boundary and not stop:
                    self._enter_stage(self.stage + 1)
                if stop:
                    return {"stopped": True, "step": self.step, "checkpoint": str(checkpoint.latest(self.ckpt_dir))}
        final_eval = self.evaluate()
        if final_eval:
            self.log.write({"step": self.step, **final_eval})
        metrics = {"steps": self.step, "final_loss": history.get("loss"), **final_eval}
        if start_eval:
            metrics["start_eval_acc"] = start_eval["eval_acc"]
        self.save_checkpoint()
        out = self.out / rundir.STUDENT
        student = self.student
        if parallel.is_sharded(self.model):  # one ordinary HF directory: the gathered weights in a plain copy
            full, _ = parallel.full_state(self.model, self.opt)
            if self.env.rank == 0:
                student, _ = artifacts.load(self.student_dir, dtype=torch.float32, with_tokenizer=False)
                student.load_state_dict(full)
        if self.env.rank == 0:  # the run dir was checked at the start: a student there is this run's own
            artifacts.save(student, self.tok, out, stage="distill", parent=self.student_dir,
                           recipe=dump(self.recipe), metrics=metrics, teacher=str(self.teacher_dir), overwrite=True)
        if self.env.ddp:
            dist.barrier()
        return {"stopped": False, "step": self.step, "student": str(out), "metrics": metrics}


def train(cfg: DistillConfig, *, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume, or start over) a distillation run; returns a summary (final metrics, output dir).
    The run directory's rules: `slimkit.compress.distill.rundir`."""
    return Distiller(cfg, resume=resume, overwrite=overwrite).run()


__all__ = ["Distiller", "step_indices", "train"]
