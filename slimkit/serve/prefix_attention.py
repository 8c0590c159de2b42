"""Shared-prefix attention for the torch engine: item rows attend to their prefix's keys and values
where they are, instead of to a per-row copy of them.

The standard path continues each row from a KV cache: the prefix's keys and values are expanded to
every row, concatenated with the row's own, and repeated over the query heads of each KV head
before attention, with a padding mask over the whole width. Here the prefix and the row's own tokens
are two parts of one softmax: the queries of all rows that share a prefix meet its keys as one long
query sequence in one flash-attention call (no copy of the prefix, only its real length, no mask),
the rows' own tokens in a causal one (right padding needs no mask: a real token never sees a later
one), and the two parts are joined by their log-sum-exps. Same numbers as the standard path up to float rounding, and a row still sees only its
own prefix and its own tokens.

`ATTN` is registered with transformers' attention interface; called without a `prefix` (the
prefill, LogProbs) it is plain SDPA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

ATTN = "slimkit_prefix"


_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu   # (out, logsumexp)


@dataclass
class SharedPrefix:
    """What the item rows of one forward pass continue."""
    layers: list[tuple[torch.Tensor, torch.Tensor]]   # per layer: prefix keys, values [R, kv_heads, P, d]
    lengths: list[int]                                # each prefix's real length (<= P)
    groups: list[tuple[int, torch.Tensor | None]]     # (prefix, its rows; None: every row)


def shared_prefix(layers, lengths: list[int], prefix_rows: list[int], device) -> SharedPrefix:
    """The SharedPrefix of a batch whose row i continues prefix prefix_rows[i]."""
    distinct = sorted(set(prefix_rows))
    if len(distinct) == 1:
        return SharedPrefix(layers, lengths, [(distinct[0], None)])
    rows = torch.tensor(prefix_rows, device=device)
    return SharedPrefix(layers, lengths, [(r, torch.nonzero(rows == r).flatten()) for r in distinct])


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor,
            scaling: float) -> torch.Tensor:
    """Rows' queries q [b, H, L, d] over one prefix's pk, pv [H, P, d] and, causally, their own k, v
    [b, H, L, d]; returns [b, H, L, d]. A real token never sees a padded one (padding comes last)."""
    b, heads, L, d = q.shape
    qp = q.transpose(0, 1).reshape(1, heads, b * L, d)                # every row's queries as one sequence
    o_pre, l_pre = _flash(qp, pk[None], pv[None], 0.0, False, scale=scaling)
    o_own, l_own = _flash(q, k, v, 0.0, True, scale=scaling)
    o_pre = o_pre[0].reshape(heads, b, L, d).transpose(0, 1)
    l_pre = l_pre[0].reshape(heads, b, L).transpose(0, 1)
    lse = torch.logaddexp(l_pre, l_own)                               # the joint softmax's normalizer
    w_pre, w_own = (l_pre - lse).exp_()[..., None], (l_own - lse).exp_()[..., None]
    return (o_pre * w_pre.to(o_pre.dtype)).add_(o_own * w_own.to(o_own.dtype))


def attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask,
              dropout: float = 0.0, scaling: float | None = None, prefix: SharedPrefix | None = None, **kwargs):
    """transformers' attention signature: query [b, H, L, d], key/value [b, kvh, L, d]; returns
    ([b, L, H, d], None)."""
    if prefix is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    heads, d = query.shape[1], query.shape[3]
    g = heads // key.shape[1]
    scaling = d ** -0.5 if scaling is None else scaling
    k, v = key.repeat_interleave(g, dim=1), value.repeat_interleave(g, dim=1)
    pk_all, pv_all = prefix.layers[module.layer_idx]
    out = None
    for r, rows in prefix.groups:
        n = prefix.lengths[r]
        pk, pv = pk_all[r, :, :n].repeat_interleave(g, dim=0), pv_all[r, :, :n].repeat_interleave(g, dim=0)
        if rows is None:
            out = _attend(query, k, v, pk, pv, scaling)
        else:
            out = torch.empty_like(query) if out is None else out
            out[rows] = _attend(query[rows], k[rows], v[rows], pk, pv, scaling)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTN, attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN, sdpa_mask)
