"""Importance of every prunable unit, measured on calibration text with forward hooks (no surgery).

Activation-based, as in Minitron: mean |activation| of each MLP neuron (the input of down_proj),
mean L2 norm of each attention head's output (the input of o_proj; a KV group scores the sum of its
query heads), mean |activation| of each hidden channel over the outputs of every RMSNorm (the
residual stream as the blocks read it). Depth, as in ShortGPT: block influence 1 - cos(input,
output) of each decoder layer, averaged over tokens. Padding positions are left out of every mean.
`random` draws scores of the same shapes from a seeded generator (the baseline that shows the
measured importance matters).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from slimkit.compress.prune.arch import PruneError

METHODS = ("activation", "random")


@dataclass
class Importance:
    """Scores per unit; higher is more important."""

    method: str
    hidden: torch.Tensor            # [hidden]
    mlp: list[torch.Tensor]         # per layer [intermediate]
    kv_groups: list[torch.Tensor]   # per layer [kv_heads]
    layers: torch.Tensor            # [layers] block influence
    tokens: int = 0


# ---------------------------------------------------------------- calibration text
def calibration_texts(tokenizer, *, tasks: list[str] | None = None, data: str | None = None,
                      n: int = 128) -> list[str]:
    """Chat-formatted prompt + answer texts: the first `n` train examples of each task, or the first
    `n` rows of a JSONL file of {"prompt", optional "answer"} (or {"text"})."""
    from slimkit.tasks import format_prompt, get_task

    if data is not None:
        return _jsonl_texts(tokenizer, Path(data).expanduser(), n)
    texts = []
    for name in tasks or []:
        texts += [format_prompt(tokenizer, ex.prompt) + ex.answer for ex in get_task(name).split("train", n)]
    if not texts:
        raise PruneError("no calibration data: give tasks (--calib arith,jobs) or a JSONL file (--calib-data)")
    return texts


def _jsonl_texts(tokenizer, path: Path, n: int) -> list[str]:
    from slimkit.tasks import format_prompt

    if not path.is_file():
        raise PruneError(f"calibration data {path} does not exist")
    texts = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PruneError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt", row.get("text")), str):
            raise PruneError(f"{path}:{i}: each line needs a 'prompt' (and optionally 'answer') or a 'text'")
        texts.append(row["text"] if "prompt" not in row else
                     format_prompt(tokenizer, row["prompt"]) + str(row.get("answer", "")))
        if len(texts) == n:
            break
    if not texts:
        raise PruneError(f"calibration data {path} has no rows")
    return texts


# ---------------------------------------------------------------- measurement
class _Sums:
    """Running sums of the hooks' statistics over the non-padding tokens of every batch."""

    def __init__(self, model):
        c = model.config
        self.mask: torch.Tensor | None = None   # [B, T] bool of the batch being run
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        self.group = c.num_attention_heads // c.num_key_value_heads
        n = c.num_hidden_layers
        self.hidden = torch.zeros(c.hidden_size, dtype=torch.float64)
        self.mlp = [torch.zeros(c.intermediate_size, dtype=torch.float64) for _ in range(n)]
        self.heads = [torch.zeros(c.num_attention_heads, dtype=torch.float64) for _ in range(n)]
        self.influence = torch.zeros(n, dtype=torch.float64)
        self.tokens = 0

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """The non-padding rows of a [B, T, ...] activation, as [N, ...] float."""
        return x[self.mask].float()

    def hooks(self, model) -> list:
        hs = []
        for i, layer in enumerate(model.model.layers):
            hs.append(layer.mlp.down_proj.register_forward_pre_hook(self._mlp(i)))
            hs.append(layer.self_attn.o_proj.register_forward_pre_hook(self._heads(i)))
            hs.append(layer.register_forward_hook(self._influence(i), with_kwargs=True))
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                hs.append(norm.register_forward_hook(self._channels))
        hs.append(model.model.norm.register_forward_hook(self._channels))
        return hs

    def _mlp(self, i):
        def hook(_mod, args):
            self.mlp[i] += self.rows(args[0]).abs().sum(0).double()
        return hook

    def _heads(self, i):
        def hook(_mod, args):
            x = self.rows(args[0])
            self.heads[i] += x.view(x.shape[0], -1, self.head_dim).norm(dim=-1).sum(0).double()
        return hook

    def _influence(self, i):
        def hook(_mod, args, kwargs, out):
            x = args[0] if args else kwargs["hidden_states"]
            y = out[0] if isinstance(out, tuple) else out
            cos = torch.nn.functional.cosine_similarity(self.rows(x), self.rows(y), dim=-1)
            self.influence[i] += (1.0 - cos).sum().double()
        return hook

    def _channels(self, _mod, _args, out):
        self.hidden += self.rows(out).abs().sum(0).double()


@torch.no_grad()
def measure(model, tokenizer, texts: list[str], *, batch_size: int = 16, max_len: int = 512) -> Importance:
    """Activation importance of `model` on `texts` (right-padded batches; padding excluded)."""
    from slimkit.tasks import pad_pairs

    sums = _Sums(model)
    handles = sums.hooks(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    enc = [tokenizer(t, add_special_tokens=False).input_ids[:max_len] for t in texts]
    try:
        model.eval()
        for b in range(0, len(enc), batch_size):
            ids, attention, _ = pad_pairs([(e, []) for e in enc[b:b + batch_size]], pad)
            sums.mask = attention.bool()
            sums.tokens += int(attention.sum())
            model(input_ids=ids, attention_mask=attention, use_cache=False, logits_to_keep=1)
    finally:
        for h in handles:
            h.remove()
    t = max(sums.tokens, 1)
    groups = [(h / t).view(-1, sums.group).sum(-1) for h in sums.heads]
    return Importance("activation", sums.hidden / t, [m / t for m in sums.mlp], groups, sums.influence / t,
                      tokens=sums.tokens)


def random_scores(config, seed: int = 0) -> Importance:
    """Scores of the same shapes as `measure`'s, drawn at random: pruning by them keeps random units."""
    g = torch.Generator().manual_seed(seed)
    n = config.num_hidden_layers

    def draw(k: int) -> torch.Tensor:
        return torch.rand(k, generator=g, dtype=torch.float64)

    return Importance("random", draw(config.hidden_size), [draw(config.intermediate_size) for _ in range(n)],
                      [draw(config.num_key_value_heads) for _ in range(n)], draw(n))
