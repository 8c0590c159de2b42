"""Rollout sources: the token sequences (prompt + completion) that distillation runs on.

- `student` (on-policy): sampled from the current student every step (HF generate with KV cache).
- `teacher` (off-policy KD): sampled from the teacher once, cached to disk as JSONL (with a fingerprint
  of teacher weights, prompts and sampling settings; a stale cache is refused).
- `dataset`: the completions given in the data (`Example.answer`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from slimkit.compress.distill.config import RolloutConfig
from slimkit.errors import SlimkitError
from slimkit.tasks import pad_pairs


@dataclass
class Rollout:
    prompt_ids: list[int]
    completion_ids: list[int]
    example: int  # index into the data
    key: int = -1  # fixed sources: position in the source's flat list (top-k cache rows)
    weight: float = 1.0  # loss weight of its tokens (weighting.py)
    supervise: list[bool] | None = None  # per token of prompt + completion: a loss target (None: the completion)


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T] right-padded
    attention_mask: torch.Tensor  # [B, T]
    target_mask: torch.Tensor  # [B, T-1]: position t is supervised (predicts completion token t+1)

    def split(self, n: int) -> list[Batch]:
        """Blocks of n sequences (same padding), in order."""
        return [Batch(*(x[i : i + n] for x in (self.input_ids, self.attention_mask, self.target_mask)))
                for i in range(0, self.input_ids.shape[0], n)]


def collate(rollouts: Sequence[Rollout], pad_id: int, device: str | torch.device = "cpu") -> Batch:
    ids, attention, answer = pad_pairs([(r.prompt_ids, r.completion_ids) for r in rollouts], pad_id)
    for i, r in enumerate(rollouts):
        if r.supervise is not None:  # chosen sections (sequence truncation)
            answer[i, : len(r.supervise)] = torch.tensor(r.supervise, dtype=torch.bool)
    # position j predicts token j + 1: the targets are the positions just before each completion token
    return Batch(ids.to(device), attention.to(device), answer[:, 1:].to(device))


def _fingerprint(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _ids(tok, texts: list[str]) -> list[list[int]]:
    """Token ids of each text (one batched call: a fast tokenizer's batch is several times quicker)."""
    return tok(texts, add_special_tokens=False)["input_ids"] if texts else []


class DatasetSource:
    """Completions from the data itself (texts ending in EOS, see `slimkit.tasks.training_text`)."""

    def __init__(self, tok, prompts: list[str], completions: list[str]):
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        self.rollouts = [[Rollout(p, c, i)] for i, (p, c) in enumerate(zip(_ids(tok, prompts), _ids(tok, completions), strict=True))]
        self._number()

    def get(self, indices: Sequence[int], **_) -> list[Rollout]:
        return [r for i in indices for r in self.rollouts[i]]

    def all(self) -> list[Rollout]:
        """Every rollout, in key order."""
        return [r for rs in self.rollouts for r in rs]

    def _number(self) -> None:
        for key, r in enumerate(self.all()):
            r.key = key


class TeacherSource(DatasetSource):
    """Teacher samples, generated once for every prompt and cached as JSONL. `role="student"`: the same
    for another model (SODA's snapshot of the starting student), fingerprinted apart from the teacher's."""

    def __init__(self, teacher, tok, prompts: list[str], cfg: RolloutConfig, cache: Path, *,
                 teacher_hash: str, seed: int, role: str = "teacher"):
        parts = {} if role == "teacher" else {"role": role}
        fp = _fingerprint(teacher=teacher_hash, prompts=hashlib.sha256("\x00".join(prompts).encode()).hexdigest(),
                          samples=cfg.samples, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                          stop=cfg.stop, seed=seed, **parts)
        self.fingerprint = fp
        if cache.is_file():
            self.rollouts = self._read(cache, fp, len(prompts), role)
            self._number()
            return
        from slimkit.tasks.generate import generate

        outs = generate(teacher, tok, prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                        num_samples=cfg.samples, stop=cfg.stop or None, batch_size=cfg.batch_size, seed=seed)
        self.rollouts = [[Rollout(list(c.prompt_ids), list(c.token_ids), i) for c in cs]
                         for i, cs in enumerate(outs)]
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + f".tmp-{os.getpid()}")
        with open(tmp, "w") as f:
            f.write(json.dumps({"fingerprint": fp, "prompts": len(prompts), "samples": cfg.samples}) + "\n")
            for rs in self.rollouts:
                for r in rs:
                    f.write(json.dumps({"example": r.example, "prompt_ids": r.prompt_ids,
                                        "completion_ids": r.completion_ids}) + "\n")
        os.replace(tmp, cache)
        self._number()

    @staticmethod
    def _read(path: Path, fp: str, n: int, role: str = "teacher") -> list[list[Rollout]]:
        with open(path) as f:
            head = json.loads(f.readline() or "{}")
            if head.get("fingerprint") != fp:
                key = "rollout.cache" if role == "teacher" else "soda.cache"
                raise SlimkitError(f"{role} rollout cache {path} was made for another {role}, data or sampling "
                                   f"setting (fingerprint {head.get('fingerprint')} != {fp}); delete it or set "
                                   f"{key} to a new path")
            out: list[list[Rollout]] = [[] for _ in range(n)]
            for line in f:
                d = json.loads(line)
                out[d["example"]].append(Rollout(d["prompt_ids"], d["completion_ids"], d["example"]))
        return out


class StudentSource:
    """On-policy: sample G completions per prompt from the current student (HF generate, KV cache)."""

    def __init__(self, tok, prompts: list[str], cfg: RolloutConfig):
        self.tok, self.prompts, self.cfg = tok, prompts, cfg

    @torch.no_grad()
    def get(self, indices: Sequence[int], *, model, seed: int, **_) -> list[Rollout]:
        from slimkit.tasks.generate import generate

        was_training = model.training
        model.eval()
        outs = generate(model, self.tok, [self.prompts[i] for i in indices], max_new_tokens=self.cfg.max_new_tokens,
                        temperature=self.cfg.temperature, num_samples=self.cfg.samples, stop=self.cfg.stop or None,
                        batch_size=self.cfg.batch_size, seed=seed)
        model.train(was_training)
        return [Rollout(list(c.prompt_ids), list(c.token_ids), i) for i, cs in zip(indices, outs, strict=True)
                for c in cs]


class VllmStudentSource(StudentSource):
    """On-policy rollouts from vLLM (run from `.venv-vllm`), in-process, with the student's current
    weights pushed into the engine every `rollout.refresh_every` steps (`load_weights` on the engine's
    model; the prefix cache is reset so no stale KV is reused)."""

    def __init__(self, tok, prompts: list[str], cfg: RolloutConfig, model_dir: Path, *, seed: int = 0):
        super().__init__(tok, prompts, cfg)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            from vllm import LLM
        except ImportError:
            raise SlimkitError("rollout.engine=vllm needs vLLM: run from .venv-vllm "
                               "(.venv-vllm/bin/slimkit distill ...), or use rollout.engine=hf") from None
        self.llm = LLM(model=str(model_dir), dtype="float32", seed=seed, enforce_eager=True,
                       distributed_executor_backend="uni", max_num_seqs=max(cfg.batch_size, cfg.samples))
        self.prompt_ids = _ids(tok, prompts)
        self.pushed_step: int | None = None

    def refresh(self, model) -> None:
        from vllm.model_executor.model_loader.reload import (
            finalize_layerwise_reload,
            initialize_layerwise_reload,
        )

        weights = [(k, v.detach().to("cpu", torch.float32)) for k, v in model.state_dict().items()]
        model_config = self.llm.llm_engine.model_config

        def load(m) -> None:  # vLLM's own reload path: loaders restored, post-load processing redone
            initialize_layerwise_reload(m)
            m.load_weights(iter(weights))
            finalize_layerwise_reload(m, model_config)

        self.llm.apply_model(load)
        self.llm.reset_prefix_cache()

    def get(self, indices: Sequence[int], *, model, seed: int, step: int = 0) -> list[Rollout]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if self.pushed_step is None or step - self.pushed_step >= self.cfg.refresh_every:
            self.refresh(model)
            self.pushed_step = step
        params = SamplingParams(n=self.cfg.samples, temperature=self.cfg.temperature,
                                max_tokens=self.cfg.max_new_tokens, stop=self.cfg.stop or None, seed=seed,
                                include_stop_str_in_output=True, detokenize=bool(self.cfg.stop))
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=self.prompt_ids[i]) for i in indices], params,
                                 use_tqdm=False)
        return [Rollout(list(self.prompt_ids[i]), list(c.token_ids), i) for i, o in zip(indices, outs, strict=True)
                for c in o.outputs]
