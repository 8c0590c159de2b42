"""Build the pruned model: the parent's tensors sliced to the kept units, loaded into a fresh model of
the pruned config (a standard config of the same architecture, so it loads with no custom code)."""

from __future__ import annotations

import re

import torch

from slimkit.compress.prune.arch import PruneError, new_config
from slimkit.compress.prune.plan import Plan

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def _rows(w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return w.index_select(0, idx)


def _cols(w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return w.index_select(1, idx)


def _units(groups: list[int], size: int) -> torch.Tensor:
    """Row indices of whole blocks (`size` rows each) of a projection's output."""
    return torch.tensor([g * size + j for g in groups for j in range(size)], dtype=torch.long)


def slice_layer(name: str, w: torch.Tensor, hid: torch.Tensor, mlp: torch.Tensor, q: torch.Tensor,
                kv: torch.Tensor) -> torch.Tensor:
    """One decoder-layer tensor (`name` relative to the layer) cut to the kept units."""
    if name in ("input_layernorm.weight", "post_attention_layernorm.weight"):
        return w[hid]
    if name in ("self_attn.q_norm.weight", "self_attn.k_norm.weight"):
        return w
    proj, _, kind = name.rpartition(".")
    outs = {"self_attn.q_proj": q, "self_attn.k_proj": kv, "self_attn.v_proj": kv,
            "mlp.gate_proj": mlp, "mlp.up_proj": mlp, "self_attn.o_proj": hid, "mlp.down_proj": hid}
    ins = {"self_attn.o_proj": q, "mlp.down_proj": mlp}
    if proj not in outs or kind not in ("weight", "bias"):
        raise PruneError(f"unexpected tensor model.layers.N.{name}: not a Llama-family layout")
    w = _rows(w, outs[proj])
    return _cols(w, ins.get(proj, hid)) if kind == "weight" else w


def pruned_state(state: dict[str, torch.Tensor], plan: Plan, head_dim: int, group: int) -> dict[str, torch.Tensor]:
    """The parent's state dict cut to the plan, layers renumbered in order."""
    hid = torch.tensor(plan.hidden, dtype=torch.long)
    new_index = {old: new for new, old in enumerate(plan.layers)}
    out = {}
    for key, w in state.items():
        m = _LAYER.match(key)
        if m is None:
            if key in ("model.embed_tokens.weight", "lm_head.weight"):
                out[key] = _cols(w, hid)
            elif key == "model.norm.weight":
                out[key] = w[hid]
            else:
                raise PruneError(f"unexpected tensor {key}: not a Llama-family layout")
            continue
        old = int(m.group(1))
        if old not in new_index:
            continue
        j = new_index[old]
        kv_groups = plan.kv_groups[j]
        q_heads = [g * group + k for g in kv_groups for k in range(group)]
        out[f"model.layers.{j}.{m.group(2)}"] = slice_layer(
            m.group(2), w, hid, torch.tensor(plan.mlp[j], dtype=torch.long),
            _units(q_heads, head_dim), _units(kv_groups, head_dim)).contiguous()
    return out


def build(parent, plan: Plan):
    """A new model of the pruned shape holding the parent's kept weights (same dtype)."""
    from transformers import AutoModelForCausalLM

    s = plan.shape
    cfg = new_config(parent.config, s, plan.layers)
    dtype = next(parent.parameters()).dtype
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    state = pruned_state(parent.state_dict(), plan, s.head_dim, s.group)
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (cfg.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise PruneError(f"pruned weights do not fit the pruned config (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    model.generation_config = parent.generation_config
    return model.eval()
