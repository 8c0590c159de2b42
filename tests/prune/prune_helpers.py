"""Tiny models of each supported architecture (a plain module: conftest is not importable by name)."""

from __future__ import annotations

import torch

SHAPE = dict(hidden_size=128, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
             num_hidden_layers=3, head_dim=32, vocab_size=1835, max_position_embeddings=128)


def tiny(kind: str, *, tied: bool = True, seed: int = 0, **extra):
    """A random-init tiny model of architecture `kind` (llama, mistral, qwen2, qwen3), fp32."""
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[kind]
    shape = dict(SHAPE)
    if kind == "qwen2":
        shape.pop("head_dim")        # Qwen2 derives head_dim = hidden / heads (here 32)
    cfg = cls(**shape, tie_word_embeddings=tied, **extra)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():             # norms away from 1, so that slicing a norm wrongly shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.copy_(torch.rand_like(p) + 0.5 if "norm" in name else torch.randn_like(p) * 0.1)
    return model
