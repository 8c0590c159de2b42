"""The embedded toy world: the toy tokenizer, a teacher and a smaller student, built on CPU and
shipped inside the package, so that every user and every benchmark sees the same models.

    slimkit.toy.shipped_dir()        # the shipped world: teacher/, student/, toy.json
    slimkit.toy.resolve("toy:teacher")   # a stable name for a shipped model (recipes, CLI, tests)
    slimkit.toy.rebuild_dir()        # where `slimkit toy build` writes (~/.cache/slimkit/toy-v4)
    slimkit.toy.make_tiny_model_dir(tmp_path / "m")   # random-init Qwen3 + toy tokenizer, for tests

The package: `tokenizer` (the BPE and chat template), `sft` (supervised training), `build` (the
whole build, `slimkit toy build`) and `report` (`slimkit toy report`).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

VERSION = "toy-v4"
MODELS = ("teacher", "student")
PREFIX = "toy:"


def shipped_dir() -> Path:
    """The toy world that ships with the package: `teacher/` and `student/` (full model dirs with
    tokenizer) and `toy.json` (the build record)."""
    return Path(__file__).resolve().parent / "world"


def home() -> Path:
    return Path(os.environ.get("SLIMKIT_HOME") or Path.home() / ".cache" / "slimkit")


def rebuild_dir() -> Path:
    """Where `slimkit toy build` writes a rebuild by default ($SLIMKIT_HOME/toy-v4)."""
    return home() / VERSION


def is_built(path: str | os.PathLike | None = None) -> bool:
    from slimkit.artifacts import is_model_dir

    root = Path(path) if path is not None else shipped_dir()
    return all(is_model_dir(root / name) for name in MODELS)


def resolve(ref: str | os.PathLike) -> Path:
    """`toy:teacher` / `toy:student` -> the shipped model's directory; any other path is returned
    with `~` expanded."""
    from slimkit.errors import SlimkitError

    text = os.fspath(ref)
    if not text.startswith(PREFIX):
        return Path(text).expanduser()
    name = text[len(PREFIX):]
    if name not in MODELS:
        raise SlimkitError(f"unknown toy model {text!r}; choose one of "
                           f"{', '.join(PREFIX + m for m in MODELS)}")
    path = shipped_dir() / name
    if not is_built(shipped_dir()):
        raise SlimkitError(f"the shipped toy world is missing from {shipped_dir()} (a broken install?): "
                           "reinstall slimkit, or rebuild it with `slimkit toy build`")
    return path


def tokenizer_corpus_examples() -> dict:
    from slimkit.tasks import get_task

    return {"arith": get_task("arith").split("train", 10000), "jobs": get_task("jobs").split("train", 5000)}


@functools.lru_cache(maxsize=1)
def _toy_tokenizer_json() -> str:
    from slimkit.tasks.jobs import vocabulary
    from slimkit.toy.tokenizer import corpus, train_tokenizer

    words = vocabulary()
    tok = train_tokenizer(corpus(tokenizer_corpus_examples(), words), words=words)
    return tok.backend_tokenizer.to_str()


def toy_tokenizer():
    """The toy world's tokenizer (trained on the tasks' text; deterministic; cached per process)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from slimkit.toy.tokenizer import CHAT_TEMPLATE, EOS, PAD

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_toy_tokenizer_json()), eos_token=EOS,
                                  pad_token=PAD, padding_side="left", additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def qwen3_config(tok, *, hidden: int, layers: int, heads: int, kv_heads: int, head_dim: int,
                 intermediate: int, vocab: int | None = None, max_positions: int = 512,
                 init_std: float = 0.02):
    """`init_std`: std of the random init (HF's default 0.02 is sized for hidden >= 1024; the toy
    world's hidden-128 models need ~hidden**-0.5, else comparison tasks such as `jobs` sit on a
    plateau for thousands of steps)."""
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab or len(tok), hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        intermediate_size=intermediate, max_position_embeddings=max_positions, tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
        rope_theta=10000.0, initializer_range=init_std,
    )


def new_model(tok, *, seed: int = 0, **shape):
    """A random-init Qwen3 causal LM of the given shape (see `qwen3_config`), fp32, on CPU."""
    import torch
    from transformers import GenerationConfig, Qwen3ForCausalLM

    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(qwen3_config(tok, **shape))
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                               do_sample=False)
    return model.eval()


def make_tiny_model_dir(out: str | os.PathLike, *, hidden: int = 64, layers: int = 2, heads: int = 2,
                        kv_heads: int = 1, head_dim: int = 32, intermediate: int = 128, vocab: int | None = None,
                        seed: int = 0) -> Path:
    """Write a random-init Qwen3 + the toy tokenizer to `out` with artifacts.save (fast; for tests)."""
    from slimkit import artifacts

    tok = toy_tokenizer()
    model = new_model(tok, seed=seed, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
                      head_dim=head_dim, intermediate=intermediate, vocab=vocab)
    shape = dict(hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                 intermediate=intermediate, vocab=vocab, seed=seed)
    return artifacts.save(model, tok, out, stage="tiny-random", recipe={"shape": shape})
