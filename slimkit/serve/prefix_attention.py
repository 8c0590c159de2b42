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

With `last` (each row's last real column), only those queries are answered: the final layer of a
scoring pass needs no other token's output (its keys and values still come from every token). The
other positions' outputs are zeros. With `keys_only` (a prefill's final layer) nothing is answered.

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


def _prefix_part(q: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor, scaling: float):
    """Rows' queries q [b, H, L, d] over one prefix's pk, pv [H, P, d], all rows' queries as one
    sequence: (output [b, H, L, d], log-sum-exp [b, H, L])."""
    b, heads, L, d = q.shape
    o, lse = _flash(q.transpose(0, 1).reshape(1, heads, b * L, d), pk[None], pv[None], 0.0, False, scale=scaling)
    return o[0].reshape(heads, b, L, d).transpose(0, 1), lse[0].reshape(heads, b, L).transpose(0, 1)


def attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask,
              dropout: float = 0.0, scaling: float | None = None, prefix: SharedPrefix | None = None,
              last: torch.Tensor | None = None, keys_only: bool = False, **kwargs):
    """transformers' attention signature: query [b, H, L, d], key/value [b, kvh, L, d]; returns
    ([b, L, H, d], None). `keys_only`: the caller keeps only the keys and values (cached before this
    call); the output is zeros."""
    if keys_only:
        return query.new_zeros(query.shape[0], query.shape[2], query.shape[1], query.shape[3]), None
    if prefix is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    b, heads, width, d = query.shape
    g = heads // key.shape[1]
    scaling = d ** -0.5 if scaling is None else scaling
    key, value = key.repeat_interleave(g, dim=1), value.repeat_interleave(g, dim=1)
    if last is None:
        # The rows' own tokens, causally (right padding needs no mask: a real token never sees a later one).
        o_own, l_own = _flash(query, key, value, 0.0, True, scale=scaling)
    else:
        # Only each row's last token, which sees all of its row's tokens but none of the padding after it.
        every = torch.arange(b, device=query.device)
        query = query[every, :, last][:, :, None]
        padding = torch.arange(width, device=query.device)[None, :] > last[:, None]
        mask = torch.zeros(b, 1, 1, width, dtype=query.dtype, device=query.device)
        mask.masked_fill_(padding[:, None, None], float("-inf"))
        o_own, l_own = _flash(query, key, value, 0.0, False, attn_mask=mask, scale=scaling)
    # Each prefix, for the rows that continue it (its real length only).
    pk_all, pv_all = prefix.layers[module.layer_idx]
    parts = []
    for r, rows in prefix.groups:
        n = prefix.lengths[r]
        pk, pv = pk_all[r, :, :n].repeat_interleave(g, dim=0), pv_all[r, :, :n].repeat_interleave(g, dim=0)
        parts.append((rows, _prefix_part(query if rows is None else query[rows], pk, pv, scaling)))
    if parts[0][0] is None:
        o_pre, l_pre = parts[0][1]
    else:
        o_pre, l_pre = torch.empty_like(o_own), torch.empty_like(l_own)
        for rows, (o, lse) in parts:
            o_pre[rows], l_pre[rows] = o, lse
    # One softmax over both parts: weight each by its share of the joint normalizer.
    lse = torch.logaddexp(l_pre, l_own)
    w_pre, w_own = (l_pre - lse).exp_()[..., None], (l_own - lse).exp_()[..., None]
    out = (o_pre * w_pre.to(o_pre.dtype)).add_(o_own * w_own.to(o_own.dtype))
    if last is not None:
        full = out.new_zeros(b, heads, width, d)
        full[every, :, last] = out[:, :, 0]
        out = full
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTN, attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN, sdpa_mask)
