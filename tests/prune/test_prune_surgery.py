"""Importance, plan and surgery on tiny random models of every supported architecture: units made dead
are the ones measured unimportant, and cutting them changes no output."""

from __future__ import annotations

import pytest
import torch
from prune_helpers import tiny

from slimkit.compress.prune import prune_model
from slimkit.compress.prune.arch import PruneError, count_params, layout_of, shape_of
from slimkit.toy import toy_tokenizer

ARCHS = [("llama", {"attention_bias": True, "mlp_bias": True}), ("mistral", {}), ("qwen2", {}), ("qwen3", {})]


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("kind,extra", ARCHS)
def test_parameter_count_matches_the_model(kind, extra, tied):
    model = tiny(kind, tied=tied, **extra)
    assert count_params(shape_of(model.config), layout_of(model.config)) == sum(p.numel() for p in model.parameters())


def kill(model, *, neurons: list[int], kv_group: int, layer: int) -> None:
    """Make units dead: MLP neurons (gate/up rows 0), one KV group's values (v rows 0: its query heads
    output 0) in every layer, and a whole layer (o_proj and down_proj 0: the layer is the identity)."""
    c = model.config
    d = c.head_dim if getattr(c, "head_dim", None) else c.hidden_size // c.num_attention_heads
    rows = slice(kv_group * d, (kv_group + 1) * d)
    with torch.no_grad():
        for i, block in enumerate(model.model.layers):
            mlp, attn = block.mlp, block.self_attn
            for lin in (mlp.gate_proj, mlp.up_proj):
                lin.weight[neurons] = 0
                if lin.bias is not None:
                    lin.bias[neurons] = 0
            attn.v_proj.weight[rows] = 0
            if attn.v_proj.bias is not None:
                attn.v_proj.bias[rows] = 0
            if i == layer:
                for lin in (attn.o_proj, mlp.down_proj):
                    lin.weight.zero_()
                    if lin.bias is not None:
                        lin.bias.zero_()


@pytest.mark.parametrize("kind,extra", ARCHS)
def test_cutting_dead_units_changes_no_output(kind, extra):
    tok = toy_tokenizer()
    model = tiny(kind, tied=kind != "llama", **extra)
    dead = list(range(1, 96, 3))                     # 32 of 96 neurons
    kill(model, neurons=dead, kv_group=1, layer=1)
    pruned, info = prune_model(model, tok, keep=None, axes={"width", "depth"},
                               fixed={"hidden": None, "mlp": 64, "kv_heads": 1, "layers": 2},
                               calib=["arith", "jobs"], calib_n=4)
    removed = info["removed"]
    assert removed["layers"] == [1]
    assert removed["mlp_neurons"] == {"0": dead, "2": dead} and removed["kv_groups"] == {"0": [1], "2": [1]}
    assert (pruned.config.num_hidden_layers, pruned.config.num_key_value_heads, pruned.config.num_attention_heads,
            pruned.config.intermediate_size) == (2, 1, 2, 64)
    assert sum(p.numel() for p in pruned.parameters()) == info["params"]["pruned"]
    ids = torch.randint(0, 1835, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)


def test_dead_hidden_channels_are_cut_first():
    tok = toy_tokenizer()
    model = tiny("qwen3")
    dead = list(range(0, 128, 4))                    # 32 channels nothing writes to
    with torch.no_grad():
        model.model.embed_tokens.weight[:, dead] = 0
        for block in model.model.layers:
            block.self_attn.o_proj.weight[dead] = 0
            block.mlp.down_proj.weight[dead] = 0
    pruned, info = prune_model(model, tok, keep=None, axes={"width"}, fixed={"hidden": 96, "mlp": None,
                               "kv_heads": None, "layers": None}, calib=["arith"], calib_n=4)
    assert info["removed"]["hidden_channels"] == dead
    assert pruned.config.hidden_size == 96 and pruned.lm_head.weight.shape == (1835, 96)
    assert pruned.lm_head.weight.data_ptr() == pruned.model.embed_tokens.weight.data_ptr()  # still tied


def test_target_search_meets_the_fraction_along_the_axes():
    tok = toy_tokenizer()
    model = tiny("qwen3")
    total = sum(p.numel() for p in model.parameters())
    none = {"hidden": None, "mlp": None, "kv_heads": None, "layers": None}
    width, info = prune_model(model, tok, keep=0.7, axes={"width"}, fixed=none, calib=["arith"], calib_n=4)
    assert abs(info["params"]["kept_fraction"] - 0.7) <= 0.02 and width.config.num_hidden_layers == 3
    assert all(v % 32 == 0 for v in (width.config.hidden_size, width.config.intermediate_size))
    depth, info = prune_model(model, tok, keep=0.8, axes={"depth"}, fixed=none, calib=["arith"], calib_n=4)
    assert depth.config.num_hidden_layers == 2 and depth.config.hidden_size == 128
    both, info = prune_model(model, tok, keep=0.6, axes={"width", "depth"}, fixed=none, calib=["arith"], calib_n=4)
    assert both.config.num_hidden_layers < 3 and sum(p.numel() for p in both.parameters()) < 0.62 * total
    assert both.config.hidden_size < 128 or both.config.intermediate_size < 96 or both.config.num_key_value_heads < 2
    with pytest.raises(PruneError, match="Qwen2|head_dim"):
        prune_model(tiny("qwen2"), tok, keep=None, axes={"width"}, fixed={**none, "hidden": 96}, calib=["arith"])
