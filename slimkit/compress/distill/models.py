"""Loading and checking teacher, student and data before any training starts (one clear error each)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from slimkit import artifacts
from slimkit.artifacts import DTYPES
from slimkit.compress.distill.config import SELF, DataConfig
from slimkit.errors import SlimkitError


def model_path(path: str, role: str) -> Path:
    p = Path(path).expanduser()
    try:
        return artifacts.check_model_dir(p)
    except artifacts.ArtifactError as e:
        raise SlimkitError(f"{role}: {e}") from None


def check_vocab(student_tok, teacher_tok, student_vocab: int, teacher_vocab: int) -> None:
    """Teacher and student must share one tokenizer; their lm_heads may differ only by padding rows."""
    sv, tv = student_tok.get_vocab(), teacher_tok.get_vocab()
    if sv != tv:
        only_s, only_t = len(sv.keys() - tv.keys()), len(tv.keys() - sv.keys())
        raise SlimkitError(f"teacher and student vocabularies differ beyond padding ({len(tv)} vs {len(sv)} tokens; "
                           f"{only_t} only in the teacher, {only_s} only in the student, or ids differ): "
                           "distillation needs one shared tokenizer")
    n = len(student_tok)
    for role, v in (("student", student_vocab), ("teacher", teacher_vocab)):
        if v < n:
            raise SlimkitError(f"{role} lm_head has {v} rows but the tokenizer has {n} tokens")


def load_pair(teacher_path: str, student_path: str, *, teacher_dtype: str, device: torch.device,
              self_teacher: str | None = None):
    """(teacher, student, tokenizer, teacher dir, student dir), checked: paths exist, one shared vocabulary
    (up to padding). teacher_path "self": the teacher is a frozen copy of the student's initial weights,
    or (self_teacher "live") the student itself, which the trainer runs without gradient."""
    if teacher_path == SELF:
        # the teacher is the student: its tokenizer must fit its own lm_head, as a teacher's must
        sdir = model_path(student_path, "student")
        student, stok = artifacts.load(sdir, dtype=torch.float32, device=str(device))
        _check_tokenizer_fits("student (and teacher: self)", stok, student, sdir)
        _check_no_bias("student", student, sdir)
        teacher = student
        if self_teacher != "live":
            teacher = copy.deepcopy(student).to(DTYPES[teacher_dtype]).requires_grad_(False).eval()
        return teacher, student, stok, sdir, sdir
    tdir, sdir = model_path(teacher_path, "teacher"), model_path(student_path, "student")
    from transformers import AutoConfig

    tcfg, scfg = AutoConfig.from_pretrained(tdir), AutoConfig.from_pretrained(sdir)
    stok, ttok = artifacts.load_tokenizer(sdir), artifacts.load_tokenizer(tdir)
    check_vocab(stok, ttok, scfg.vocab_size, tcfg.vocab_size)
    teacher, _ = artifacts.load(tdir, dtype=DTYPES[teacher_dtype], device=str(device), with_tokenizer=False)
    student, _ = artifacts.load(sdir, dtype=torch.float32, device=str(device), with_tokenizer=False)
    for role, model, path in (("teacher", teacher, tdir), ("student", student, sdir)):
        _check_no_bias(role, model, path)
    teacher.requires_grad_(False).eval()
    return teacher, student, stok, tdir, sdir


def _check_tokenizer_fits(role: str, tok, model, path: Path) -> None:
    rows = model.get_output_embeddings().weight.shape[0]
    if rows < len(tok):
        raise SlimkitError(f"{role} {path}: its tokenizer has {len(tok)} tokens but its lm_head only {rows} rows; "
                           "use the tokenizer the model was trained with")


def _check_no_bias(role: str, model, path: Path) -> None:
    if getattr(model.get_output_embeddings(), "bias", None) is not None:
        raise SlimkitError(f"{role} {path}: its lm_head has a bias, which distillation does not apply; "
                           "use a model whose lm_head has none (Qwen, Llama, Mistral)")


def load_examples(cfg: DataConfig):
    """The data's examples (first `n`, then those matching `where`); one clear error if none remain."""
    from slimkit.tasks import get_task, read_jsonl

    if cfg.path:
        p = Path(cfg.path).expanduser()
        if not p.is_file():
            raise SlimkitError(f"data.path {p} does not exist")
        exs = read_jsonl(p)
        exs = exs[: cfg.n] if cfg.n else exs
    else:
        exs = get_task(cfg.task).split(cfg.split, cfg.n)
    if cfg.where:
        exs = [x for x in exs if all(x.meta.get(k) == v for k, v in cfg.where.items())]
    if not exs:
        raise SlimkitError("the data has no examples" + (f" with meta {cfg.where}" if cfg.where else ""))
    return exs
