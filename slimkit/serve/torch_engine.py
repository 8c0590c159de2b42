"""The torch engine: shared-prefix scoring with a reused KV cache and label log-probs at the last
position only.

Per call, the distinct shared token ids (template prefix + query) of its jobs are prefilled once,
together; each batch of items, which may mix jobs, continues its rows' own prefixes' KV cache
(`slimkit.serve.batching`), attending to it in place (`slimkit.serve.prefix_attention`; with another
`attn` implementation, through a KV cache that is a view when the batch has one prefix). The model body runs
without its LM head; only the final hidden state of each item's last token is projected, onto the
label rows of the LM head (or through `kernels.linear_logprob` for the full-vocabulary
log-normalizer). For Llama-family layers the final layer itself runs at those tokens only (its keys
and values still come from every token).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from slimkit import artifacts
from slimkit.artifacts import DTYPES
from slimkit.errors import SlimkitError
from slimkit.kernels import linear_logprob
from slimkit.serve.batching import Batch, plan, prefixes
from slimkit.serve.engine import Engine, LogProbsJob, LogProbsResult
from slimkit.serve.prefix_attention import ATTN, shared_prefix
from slimkit.serve.prompt import ScoreJob

# glibc hands a freed block of 128 KiB or more straight back to the OS, and the next pass faults the
# same pages in again one by one; with activations of megabytes per layer that costs about as much as
# the arithmetic on a CPU (more in a VM). A CPU engine keeps freed memory for reuse instead: blocks up
# to 32 MiB come from the heap, and up to 1 GiB of free heap is kept. Process-wide, as the env vars.
MMAP_THRESHOLD, TRIM_THRESHOLD = 32 << 20, 1 << 30
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}


def keep_freed_memory() -> bool:
    """Apply MALLOC_ENV to this process through mallopt (glibc only; False elsewhere)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD)) and bool(libc.mallopt(m_trim_threshold, TRIM_THRESHOLD))


# Architectures whose decoder layers are pre-norm attention + MLP with these module names, which the
# engine runs layer by layer itself (`_body_last_only`, `_keys_and_values`; not with a sliding window).
LAST_ONLY = {"llama", "mistral", "qwen2", "qwen3"}


@dataclass
class Prefill:
    """The prefixes of one engine call, run once: per layer (keys, values) [prefixes, kv_heads, width, d]."""
    layers: list[tuple[torch.Tensor, torch.Tensor]]
    lengths: list[int]


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, model_dir: str | Path, *, dtype: str = "float32", device: str = "cpu",
                 max_batch: int = 64, share_prefix: bool = True, attn: str | None = None) -> None:
        if dtype not in DTYPES:
            raise SlimkitError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        artifacts.check_device(device)
        model, tokenizer = artifacts.load(model_dir, dtype=DTYPES[dtype], device=device)
        self._setup(model, tokenizer, Path(model_dir), max_batch=max_batch, share_prefix=share_prefix, attn=attn)

    @classmethod
    def from_model(cls, model, tokenizer, *, model_dir: str | Path = "", max_batch: int = 64,
                   share_prefix: bool = True, attn: str | None = None) -> TorchEngine:
        """An engine around an already loaded causal LM (e.g. a random model built for a benchmark)."""
        self = cls.__new__(cls)
        self._setup(model.eval(), tokenizer, Path(model_dir), max_batch=max_batch, share_prefix=share_prefix,
                    attn=attn)
        return self

    def _setup(self, model, tokenizer, model_dir: Path, *, max_batch: int, share_prefix: bool,
               attn: str | None) -> None:
        self.model, self.tokenizer, self.model_dir = model, tokenizer, model_dir
        # Items attend to their prefix in place (prefix_attention) unless another implementation is asked
        # for or the architecture takes no pluggable attention (then: its own, through a KV cache).
        try:
            self.model.set_attn_implementation(attn or ATTN)
        except (ValueError, NotImplementedError):
            if attn is not None:
                raise
        self.prefix_attention = self.model.config._attn_implementation == ATTN
        cfg = self.model.config
        sliding = getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True)
        self.last_only = self.prefix_attention and getattr(cfg, "model_type", "") in LAST_ONLY and not sliding
        self.body = self.model.get_decoder()
        head = self.model.get_output_embeddings()
        self.head_weight, self.head_bias = head.weight, getattr(head, "bias", None)
        self.vocab_size = int(self.model.config.vocab_size)
        self.max_len = getattr(self.model.config, "max_position_embeddings", None)
        self.dtype = {v: k for k, v in DTYPES.items()}.get(self.head_weight.dtype, str(self.head_weight.dtype))
        self.device = self.head_weight.device
        self.max_batch, self.share_prefix = max_batch, share_prefix
        if self.device.type == "cpu":
            keep_freed_memory()

    # -- Score ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def score(self, jobs: list[ScoreJob]) -> list[np.ndarray]:
        """All jobs' items in shared batches (`slimkit.serve.batching.plan`); `timing` gets the call's
        prefill and scoring seconds."""
        t0 = time.perf_counter()
        share = self.share_prefix and all(job.shared_ids for job in jobs)
        prefix = self._prefill(prefixes(jobs).ids) if share else None
        t1 = time.perf_counter()
        hidden = torch.empty(sum(len(job.item_ids) for job in jobs), self.head_weight.shape[1],
                             dtype=self.head_weight.dtype, device=self.device)
        for batch in plan(jobs, self.max_batch, prefix=share):
            hidden[batch.rows] = self._last_hidden(batch, prefix)
        out, start = [], 0
        for job in jobs:
            n = len(job.item_ids)
            out.append(self._label_logprobs(hidden[start:start + n], job.label_ids, job.normalization).cpu().numpy())
            start += n
        self.timing = {"prefill": t1 - t0, "scoring": time.perf_counter() - t1}
        return out

    def _prefill(self, ids: list[list[int]]) -> Prefill:
        """Run the prefixes once, together, right-padded; keep each layer's (keys, values) with one
        row per prefix (the padded slots are masked, or cut off, for the rows that continue them)."""
        width = max(len(p) for p in ids)
        x = torch.tensor([p + [0] * (width - len(p)) for p in ids], device=self.device)
        if self.last_only:
            return Prefill(self._keys_and_values(x), [len(p) for p in ids])
        mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in ids], device=self.device)
        out = self.body(input_ids=x, attention_mask=mask, use_cache=True)
        return Prefill([(layer.keys, layer.values) for layer in out.past_key_values.layers], [len(p) for p in ids])

    def _keys_and_values(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's keys and values of the right-padded prefixes `x`, layer by layer: causal
        attention needs no mask (a real token never sees the padding after it, and items read only a
        prefix's real length), and the final layer stops once its keys and values are cached."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        pos = torch.arange(x.shape[1], device=self.device)[None].expand(x.shape[0], -1)
        h, rope, final = self._early_layers(x, pos, past_key_values=cache, use_cache=True)
        final.self_attn(hidden_states=final.input_layernorm(h), attention_mask=None, position_ids=pos,
                        past_key_values=cache, position_embeddings=rope, keys_only=True)
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _early_layers(self, ids: torch.Tensor, pos: torch.Tensor, **kwargs):
        """(hidden states after every layer but the last, the rotary embeddings, the last layer);
        `kwargs` go to each layer (and on to the attention)."""
        h = self.body.embed_tokens(ids)
        rope = self.body.rotary_emb(h, pos)
        *early, final = self.body.layers
        for layer in early:
            h = layer(h, position_ids=pos, position_embeddings=rope, **kwargs)
        return h, rope, final

    def _last_hidden(self, batch: Batch, prefix: Prefill | None) -> torch.Tensor:
        """Final hidden state at each row's last token; each row continues its prefix (if any)."""
        ids = torch.tensor(batch.ids, device=self.device)
        b = ids.shape[0]
        pos = torch.tensor(batch.positions, device=self.device)
        last = torch.tensor(batch.last, device=self.device)
        if prefix is not None and self.prefix_attention:
            shared = shared_prefix(prefix.layers, prefix.lengths, batch.prefix_rows, self.device)
            if self.last_only:
                return self._body_last_only(ids, pos, last, shared)
            out = self.body(input_ids=ids, position_ids=pos, use_cache=False, prefix=shared)
        else:
            out = self.body(input_ids=ids, attention_mask=torch.tensor(batch.mask, device=self.device),
                            position_ids=pos, past_key_values=self._cache(batch, prefix), use_cache=prefix is not None)
        return out.last_hidden_state[torch.arange(b, device=self.device), last]

    def _body_last_only(self, ids: torch.Tensor, pos: torch.Tensor, last: torch.Tensor, shared) -> torch.Tensor:
        """The decoder body run layer by layer, its final layer for each row's last token only: that
        layer's keys and values come from every token, but its attention output, its MLP and the final
        norm are needed at one position per row (a Llama-family layer: pre-norm attention, pre-norm MLP)."""
        h, rope, final = self._early_layers(ids, pos, prefix=shared)
        x, _ = final.self_attn(hidden_states=final.input_layernorm(h), attention_mask=None, position_ids=pos,
                               position_embeddings=rope, prefix=shared, last=last)
        h = (h + x)[torch.arange(len(last), device=self.device), last]
        h = h + final.mlp(final.post_attention_layernorm(h))
        return self.body.norm(h)

    def _cache(self, batch: Batch, prefix: Prefill | None):
        """The standard path's KV cache: each row's prefix keys and values (a view when there is one prefix)."""
        from transformers import DynamicCache

        if prefix is None:
            return None
        b = len(batch.rows)
        rows = torch.tensor(batch.prefix_rows, device=self.device)
        one = len(set(batch.prefix_rows)) == 1
        return DynamicCache(ddp_cache_data=[
            (k[rows[:1]].expand(b, -1, -1, -1), v[rows[:1]].expand(b, -1, -1, -1)) if one else (k[rows], v[rows])
            for k, v in prefix.layers], config=self.model.config)

    def _label_logprobs(self, hidden: torch.Tensor, label_ids: list[int], normalization: str) -> torch.Tensor:
        """[n, K] label log-probs in fp32: over the label rows only, or over the vocabulary."""
        labels = torch.tensor(label_ids, device=self.device)
        w = self.head_weight[labels].float()
        logits = hidden.float() @ w.T
        if self.head_bias is not None:
            logits = logits + self.head_bias[labels].float()
        if normalization == "labels":
            return torch.log_softmax(logits, dim=-1)
        lse = linear_logprob(hidden.float(), self._head_fp32(), labels[:1].expand(len(hidden)),
                             bias=None if self.head_bias is None else self.head_bias.float(),
                             vocab_size=self.vocab_size).lse
        return logits - lse[:, None]

    def _head_fp32(self) -> torch.Tensor:
        """The LM head in fp32 (the weight itself for fp32 models; a copy kept once for bf16/fp16)."""
        if self.head_weight.dtype == torch.float32:
            return self.head_weight
        if getattr(self, "_head32", None) is None:
            self._head32 = self.head_weight.float()
        return self._head32

    # -- LogProbs ------------------------------------------------------------------------------
    @torch.inference_mode()
    def logprobs(self, jobs: list[LogProbsJob]) -> list[LogProbsResult]:
        return [self._logprobs_job(job) for job in jobs]

    def _logprobs_job(self, job: LogProbsJob) -> LogProbsResult:
        ids = job.prompt_ids + job.continuation_ids
        p, c = len(job.prompt_ids), len(job.continuation_ids)
        x = torch.tensor([ids], device=self.device)
        h = self.body(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).last_hidden_state[0]
        h = h[p - 1:p + c - 1].float()                     # the positions that predict the continuation
        w = self._head_fp32()
        bias = None if self.head_bias is None else self.head_bias.float()
        targets = torch.tensor(job.continuation_ids, device=self.device)
        out = linear_logprob(h, w, targets, bias=bias, vocab_size=self.vocab_size)
        top: list[list[tuple[int, float]]] = []
        if job.top_k:
            k = min(job.top_k, self.vocab_size)
            for i in range(c):                             # one row of logits at a time
                z = h[i] @ w.T + (0 if bias is None else bias)
                vals, idx = torch.topk(z[:self.vocab_size] - out.lse[i], k)
                top.append(list(zip(idx.tolist(), vals.tolist(), strict=True)))
        return LogProbsResult(out.logprob.tolist(), top)
