"""The Llama-family layout that pruning understands: its shape, its modules, its parameter count.

Every supported model is `model.embed_tokens`, `model.layers[i]` (input_layernorm, self_attn with
q/k/v/o projections and, for Qwen3, q_norm/k_norm over head_dim, post_attention_layernorm, mlp with
gate/up/down projections), `model.norm` and `lm_head` (tied to the embedding or not).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from slimkit.errors import SlimkitError

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")
# vLLM's Qwen2 derives head_dim from hidden_size / heads (it ignores config.head_dim): a pruned Qwen2
# must keep hidden == heads * head_dim to load there.
HEAD_DIM_FROM_HIDDEN = ("qwen2",)


class PruneError(SlimkitError):
    pass


@dataclass(frozen=True)
class Shape:
    """The widths and depth of a model; pruning keeps head_dim and the query heads per KV group."""

    hidden: int
    mlp: int
    kv_heads: int
    layers: int
    group: int          # query heads per KV head
    head_dim: int

    @property
    def heads(self) -> int:
        return self.kv_heads * self.group

    def with_(self, **kw) -> Shape:
        return replace(self, **kw)

    def as_dict(self) -> dict:
        return {**asdict(self), "heads": self.heads}


@dataclass(frozen=True)
class Layout:
    """What, besides the shape, the parameter count depends on."""

    vocab: int
    tied: bool
    qk_norm: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool


def check_config(config) -> None:
    """One clear error for an architecture pruning does not handle."""
    kind = getattr(config, "model_type", None)
    if kind not in SUPPORTED:
        raise PruneError(f"cannot prune a {kind!r} model: structured pruning supports the Llama-family "
                         f"layouts {', '.join(SUPPORTED)}")
    if getattr(config, "num_key_value_heads", None) is None:
        raise PruneError(f"{kind} config has no num_key_value_heads")
    if config.num_attention_heads % config.num_key_value_heads:
        raise PruneError(f"{config.num_attention_heads} attention heads are not a whole number of "
                         f"{config.num_key_value_heads} KV groups")


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def shape_of(config) -> Shape:
    check_config(config)
    return Shape(hidden=config.hidden_size, mlp=config.intermediate_size, kv_heads=config.num_key_value_heads,
                 layers=config.num_hidden_layers, group=config.num_attention_heads // config.num_key_value_heads,
                 head_dim=head_dim(config))


def layout_of(config) -> Layout:
    kind = config.model_type
    attention_bias = bool(getattr(config, "attention_bias", False))
    return Layout(vocab=config.vocab_size, tied=bool(config.tie_word_embeddings), qk_norm=kind == "qwen3",
                  qkv_bias=kind == "qwen2" or attention_bias, o_bias=kind != "qwen2" and attention_bias,
                  mlp_bias=bool(getattr(config, "mlp_bias", False)))


def layer_params(s: Shape, lay: Layout) -> int:
    h, q, kv, m = s.hidden, s.heads * s.head_dim, s.kv_heads * s.head_dim, s.mlp
    n = 2 * h * q + 2 * h * kv + 3 * h * m + 2 * h
    n += 2 * s.head_dim if lay.qk_norm else 0
    n += q + 2 * kv if lay.qkv_bias else 0
    n += h if lay.o_bias else 0
    n += 2 * m + h if lay.mlp_bias else 0
    return n


def count_params(s: Shape, lay: Layout) -> int:
    """Parameters of a model of shape `s` (a tied lm_head counted once)."""
    embed = lay.vocab * s.hidden * (1 if lay.tied else 2)
    return embed + s.hidden + s.layers * layer_params(s, lay)


def new_config(parent_config, s: Shape, kept_layers: list[int]):
    """The parent's config with the pruned widths and depth: a standard config of the same architecture."""
    cfg = parent_config.__class__.from_dict(parent_config.to_dict())
    cfg.hidden_size, cfg.intermediate_size = s.hidden, s.mlp
    cfg.num_attention_heads, cfg.num_key_value_heads = s.heads, s.kv_heads
    cfg.num_hidden_layers = s.layers
    cfg.head_dim = s.head_dim
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [parent_config.layer_types[i] for i in kept_layers]
    return cfg
