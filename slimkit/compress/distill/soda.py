"""SODA: semi on-policy distillation by a DPO-style contrast of the teacher's response with the student's.

Once per run (and cached), the starting student answers every training prompt (`student_snapshot.jsonl`,
fingerprinted like the teacher rollouts: student weights, prompts, sampling settings, seed). Each
prompt's teacher response (the cached teacher rollouts; `rollout.source: teacher`) is the chosen one,
the student's the rejected one. The starting student is the reference: its sequence log-probs of both
responses are computed once and cached beside the snapshot (`<snapshot>.reference.json`, fingerprinted
by the student's weights and the pairs' token ids). No rollouts run during training.

SODA's premise is that the small student's response is worse than the teacher's (the paper: "almost
strictly inferior"). `soda.rejected: wrong` (the default when the data has a task) keeps that true: a pair whose student response the task's verifier
accepts has no DPO term (its rejected response is not fed) and trains only through the mix term;
`all` contrasts every pair (the paper's setting; the only choice without a verifier).

Per pair, with policy log-probs pi (sums over the response tokens) and reference log-probs ref:

    loss = -log sigmoid(beta * ((pi_chosen - ref_chosen) - (pi_rejected - ref_rejected)))   [contrasted pairs]
           + mix_weight * [forward KL to the teacher | -log p] of each chosen-response token
             (soda.mix_on both: forward KL also at each token of the contrasted pairs' student responses)

where the DPO terms are averaged over the step's pairs and the mix term over the step's chosen tokens,
as KD's loss is (so with beta -> 0 SODA's update is KD's on the same teacher responses; under DDP each
rank's own token count stands in for the step's; `soda.mix`: none, forward or sft). Sequence log-probs
go through `slimkit.kernels.linear_logprob` on the student's hidden states (no [tokens x vocab] logits), the
forward KL through `linear_kl` with the live teacher, or with its top-k cached once on the teacher
responses (`loss.teacher: topk`: no teacher forward in the step; with `mix_on: both` also on the snapshot,
cached beside it as `<snapshot>.teacher_topk`). `train.prompts_per_step` and `train.micro_batch`
count pairs (a micro-batch runs up to 2 x micro_batch sequences). Step records add `dpo_loss`, `margin`
(mean beta-scaled reward margin), `reward_acc` (share with a positive margin), both over the contrasted
pairs, `contrast_frac` (their share of the step's pairs) and
`snapshot_s` (the one-off time of the snapshot and reference at the start of this process).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from slimkit import artifacts, kernels
from slimkit.compress.distill.hidden import Body, supervised_hidden
from slimkit.compress.distill.rollouts import Batch, Rollout, TeacherSource, collate
from slimkit.errors import SlimkitError

_BATCH = 16  # sequences per forward while the reference log-probs are computed


@dataclass
class Pair:
    chosen: Rollout  # the teacher's response
    rejected: Rollout  # the starting student's response
    ref_chosen: float  # the starting student's sequence log-prob of each
    ref_rejected: float
    contrast: bool = True  # its DPO term runs (soda.rejected: False when the student's response is correct)
    first: int = 0  # the first response token where chosen and rejected differ (soda.contrast first_divergence)


def sequence_logprobs(hidden: torch.Tensor, weight: torch.Tensor, batch: Batch, vocab_size: int,
                      sequences: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-sequence sums [B], per-token log-probs [N], sequence of each token [N]) of the supervised
    tokens, from the hidden states at the supervised positions `hidden` [N, H] (rows in batch order).
    `sequences` (bool [B]): only their tokens run through the kernel; the others' log-probs are 0."""
    targets = batch.input_ids[:, 1:][batch.target_mask]
    seq = torch.arange(batch.input_ids.shape[0], device=hidden.device).unsqueeze(1).expand_as(batch.target_mask)
    seq = seq[batch.target_mask]
    rows = None if sequences is None else sequences[seq].nonzero().squeeze(1)
    lp = kernels.linear_logprob(hidden, weight, targets, rows=rows, vocab_size=vocab_size).logprob
    if rows is not None:
        lp = lp.new_zeros(targets.shape[0]).index_put((rows,), lp)
    sums = torch.zeros(batch.input_ids.shape[0], dtype=lp.dtype, device=lp.device).index_add(0, seq, lp)
    return sums, lp, seq


def _cached_fingerprint(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def fingerprint(student_hash: str, chosen: list[Rollout], rejected: list[Rollout]) -> str:
    h = hashlib.sha256(json.dumps({"student": student_hash}).encode())
    for r in chosen + rejected:
        h.update(np.asarray(r.prompt_ids + [-1] + r.completion_ids + [-2], dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


class Soda:
    """The pairs (a rollout source for the trainer: `get` returns the step's pairs) and the loss."""

    def __init__(self, distiller, teacher_source):
        d, cfg = distiller, distiller.cfg.soda
        self.d, self.cfg = d, cfg
        self.vocab = len(d.tok)
        cache = Path(cfg.cache).expanduser() if cfg.cache else d.out / "student_snapshot.jsonl"
        # the starting student's responses: sampled once, cached
        sampling = d.cfg.rollout.model_copy(update={"temperature": cfg.temperature, "cache": None,
                                                    "max_new_tokens": cfg.max_new_tokens or d.cfg.rollout.max_new_tokens})
        t0 = time.perf_counter()
        student_hash = artifacts.dir_hash(d.student_dir)
        was_training = d.student.training
        d.student.eval()
        snapshot = d.env.rank0_first(functools.partial(
            TeacherSource, d.student, d.tok, d.prompts, sampling, cache, teacher_hash=student_hash,
            seed=d.cfg.train.seed, role="student"))
        d.student.train(was_training)
        chosen, rejected = teacher_source.all(), snapshot.all()
        # the reference: the starting student's sequence log-probs of both responses, computed once, cached
        ref_path = cache.with_name(cache.stem + ".reference.json")
        ref = d.env.rank0_first(functools.partial(self._reference, ref_path, chosen, rejected, student_hash))
        # the contrasted pairs: with soda.rejected wrong, those whose student response the verifier rejects
        wrong = cfg.rejected == "wrong" or (cfg.rejected == "auto" and d.task is not None)
        self.pairs: list[list[Pair]] = [[] for _ in teacher_source.rollouts]
        for i, (c, r) in enumerate(zip(chosen, rejected, strict=True)):
            contrast = not (wrong and d._verify(r.example, r.completion_ids))
            first = next((j for j, (a, b) in enumerate(zip(c.completion_ids, r.completion_ids, strict=False))
                          if a != b), None)
            rc, rr = ref["chosen"][i], ref["rejected"][i]
            if cfg.contrast == "first_divergence":  # the reference at that one token; identical responses: none
                contrast = contrast and first is not None
                rc, rr = (ref["chosen_tokens"][i][first], ref["rejected_tokens"][i][first]) if contrast else (0.0, 0.0)
            self.pairs[c.example].append(Pair(c, r, rc, rr, contrast, first or 0))
        # mix_on both with a cached teacher: its top-k on the snapshot responses too, beside the snapshot
        self.snapshot_topk = None
        if cfg.mix_on == "both" and d.topk is not None:
            self.snapshot_topk = d.topk_cache(cache.with_name(cache.stem + ".teacher_topk"), snapshot, "soda.cache")
        self.snapshot_s = time.perf_counter() - t0  # one-off cost (small when the caches exist)

    # ---------------------------------------------------------------- the pairs
    def get(self, indices, **_) -> list[Pair]:
        """The step's pairs; also notes their count and chosen tokens, which normalise the mix term."""
        pairs = [p for i in indices for p in self.pairs[i]]
        self.step_pairs, self.step_tokens = len(pairs), sum(len(p.chosen.completion_ids) for p in pairs)
        if self.cfg.mix_on == "both":
            self.step_tokens += sum(len(p.rejected.completion_ids) for p in pairs if p.contrast)
        return pairs

    def _autocast(self):
        if self.d.cfg.train.dtype == "bfloat16":
            return torch.autocast(self.d.env.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _hidden(self, model, batch: Batch) -> torch.Tensor:
        with self._autocast():
            hidden = supervised_hidden(model, batch, self.d.length_groups)
        return hidden.to(self.d.student.get_output_embeddings().weight.dtype)

    @torch.no_grad()
    def _reference(self, path: Path, chosen: list[Rollout], rejected: list[Rollout], student_hash: str) -> dict:
        fp = fingerprint(student_hash, chosen, rejected)
        if path.is_file():
            ref = json.loads(path.read_text())
            if ref.get("fingerprint") != fp:
                raise SlimkitError(f"SODA reference cache {path} was made for another student or other responses "
                                   f"(fingerprint {ref.get('fingerprint')} != {fp}); delete it or set soda.cache "
                                   "to a new path")
            if "chosen_tokens" in ref:  # (a cache of an earlier version has sums only: made again below)
                return ref
        d = self.d
        body, w = Body(d.student), d.student.get_output_embeddings().weight
        out, tokens = [], []
        seqs = chosen + rejected
        for i in range(0, len(seqs), _BATCH):
            batch = collate(seqs[i : i + _BATCH], d.pad_id, d.env.device)
            sums, lp, _ = sequence_logprobs(self._hidden(body, batch), w, batch, self.vocab)
            out += sums.tolist()
            tokens += [t.tolist() for t in lp.split(batch.target_mask.sum(1).tolist())]
        k = len(chosen)
        ref = {"fingerprint": fp, "chosen": out[:k], "rejected": out[k:], "chosen_tokens": tokens[:k],
               "rejected_tokens": tokens[k:]}
        # an earlier version's cache of these very pairs (same fingerprint) is ours to replace
        artifacts.atomic_write_text(path, json.dumps(ref) + "\n", overwrite=True,
                                    is_own=lambda p: _cached_fingerprint(p) == fp)
        return ref

    # ---------------------------------------------------------------- one micro-batch
    def micro_step(self, part: list[Pair], sums: dict[str, float]) -> None:
        d, cfg, n = self.d, self.cfg, len(part)
        chosen = [p.chosen for p in part]
        con = [i for i, p in enumerate(part) if p.contrast]  # the pairs whose rejected response is fed
        batch = collate(batch_rollouts(part, con), d.pad_id, d.env.device)
        w = d.student.get_output_embeddings().weight
        h = self._hidden(d.model, batch)
        # x pairs / tokens of the step: once train_step divides by the pairs, the mix term is the mean over
        # the step's mixed tokens, as KD's loss is (a per-response mean would weigh a short response's tokens more)
        mix_scale = cfg.mix_weight * self.step_pairs / max(self.step_tokens, 1)
        # mix forward on both responses: the KL covers every row, so one kernel pass over the vocabulary builds
        # the KL's gradient and the DPO log-probs' (their d loss / d log-prob from a no-grad pass first)
        fused = cfg.mix == "forward" and cfg.mix_on == "both" and mix_scale > 0
        # the log-probs the loss reads: the contrasted pairs' (and with mix sft every chosen response's)
        needed = None
        if cfg.mix != "sft":
            needed = torch.zeros(batch.input_ids.shape[0], dtype=torch.bool, device=h.device)
            needed[con] = True
            needed[n:] = True
        with torch.no_grad() if fused else contextlib.nullcontext():
            pi, lp, seq = sequence_logprobs(h, w, batch, self.vocab, needed)
        if fused:
            lp = lp.requires_grad_()  # a leaf: d dpo / d lp gives each row's coefficient below
            pi = torch.zeros_like(pi).index_add(0, seq, lp)
        if cfg.contrast == "first_divergence":  # each sequence's log-prob at its pair's first differing token
            counts = batch.target_mask.sum(1)
            at = [p.first for p in part] + [part[i].first for i in con]
            pi = lp[counts.cumsum(0) - counts + torch.tensor(at, device=lp.device)]
        ref = torch.tensor([[part[i].ref_chosen, part[i].ref_rejected] for i in con], dtype=pi.dtype,
                           device=pi.device).reshape(-1, 2)
        idx = torch.tensor(con, dtype=torch.long, device=pi.device)
        margin = cfg.beta * ((pi[idx] - ref[:, 0]) - (pi[n:] - ref[:, 1]))
        dpo = -F.logsigmoid(margin).sum()
        if fused:
            coef = torch.autograd.grad(dpo, lp)[0] / mix_scale
            out = kernels.linear_kl(h, w, self._teacher(batch, part, con), kind="forward",
                                    temperature=d.cfg.loss.temperature, reduction="sum", vocab_size=self.vocab,
                                    logprob_targets=batch.input_ids[:, 1:][batch.target_mask], logprob_coef=coef)
            (out.loss * mix_scale).backward()
            loss = dpo.detach() + mix_scale * out.kl.sum()
        else:
            loss = dpo
            if cfg.mix != "none":
                rows = int((seq < n).sum())  # the chosen responses' rows come first
                if cfg.mix == "sft":
                    mixed = -lp[:rows].sum()
                else:
                    if cfg.mix_on == "both":  # every fed response: the teacher's and the contrasted student ones
                        rows, teacher = h.shape[0], self._teacher(batch, part, con)
                    else:
                        teacher = d._teacher_rows(batch.split(n)[0], chosen)
                    # reduction sum: the kernel builds the gradient in its forward pass (no recompute)
                    mixed = kernels.linear_kl(h[:rows], w, teacher, kind="forward", temperature=d.cfg.loss.temperature,
                                              reduction="sum", vocab_size=self.vocab).loss
                loss = loss + mix_scale * mixed
            loss.backward()  # a sum over pairs: train_step divides the gradients by the step's pairs ("norm")
        for k, v in {"tokens": n, "kept": n, "norm": n, "contrast_n": len(con), "sequences": n + len(con),
                     "loss_sum": float(loss.detach()), "dpo_sum": float(dpo.detach()),
                     "margin_sum": float(margin.detach().sum()), "reward_acc_n": float((margin > 0).sum()),
                     "completion_tokens": sum(len(r.completion_ids) for r in batch_rollouts(part, con))}.items():
            sums[k] += v

    def _teacher(self, batch: Batch, part: list[Pair], con: list[int]) -> kernels.LiveTeacher | kernels.SparseTeacher:
        """The teacher at every supervised row of the micro-batch (chosen responses, then rejected ones)."""
        if self.snapshot_topk is None:
            return self.d._teacher_rows(batch, batch_rollouts(part, con))
        a = self.d.topk.rows([p.chosen for p in part], self.d.env.device)
        b = self.snapshot_topk.rows([part[i].rejected for i in con], self.d.env.device)
        return kernels.SparseTeacher(torch.cat([a.ids, b.ids]), torch.cat([a.logprobs, b.logprobs]))

    def record(self, totals: dict[str, float]) -> dict[str, float]:
        """dpo_loss, margin and reward_acc: means over the contrasted pairs; contrast_frac: their share."""
        c = max(totals["contrast_n"], 1.0)
        return {"dpo_loss": totals["dpo_sum"] / c, "margin": totals["margin_sum"] / c,
                "reward_acc": totals["reward_acc_n"] / c, "contrast_frac": totals["contrast_n"] / max(totals["kept"], 1.0),
                "snapshot_s": self.snapshot_s}


def batch_rollouts(part: list[Pair], con: list[int]) -> list[Rollout]:
    """The sequences a micro-batch feeds: every chosen response, then the contrasted pairs' rejected ones."""
    return [p.chosen for p in part] + [part[i].rejected for i in con]


__all__ = ["Pair", "Soda", "fingerprint", "sequence_logprobs"]
