"""From a target to a pruned shape, and from importance scores to the units each layer keeps.

A parameter target (`keep`, e.g. 0.6) is met by searching the shapes the chosen axes allow: widths
that are multiples of `multiple` (or the parent's own), whole KV groups, 1..L layers; explicit
widths are fixed. Of the shapes whose parameter count lies within `tolerance` (a fraction of the
parent's) of the target, or else the closest, the plan takes the one that keeps the most importance:
the product over the axes of the fraction of the importance mass that the kept units hold. Every
chosen axis is pruned (`width,depth` drops layers and narrows the rest).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from slimkit.compress.prune.arch import Layout, PruneError, Shape, count_params
from slimkit.compress.prune.importance import Importance

AXES = ("width", "depth")


@dataclass
class Plan:
    shape: Shape
    hidden: list[int]                 # kept hidden channels (sorted)
    layers: list[int]                 # kept layers of the parent (sorted)
    mlp: list[list[int]]              # per kept layer: kept neurons (sorted)
    kv_groups: list[list[int]]        # per kept layer: kept KV groups (sorted)

    def removed(self, parent: Shape) -> dict:
        """What pruning removed, in the parent's indices (for the manifest)."""
        def gone(keep: list[int], n: int) -> list[int]:
            return sorted(set(range(n)) - set(keep))

        return {"layers": gone(self.layers, parent.layers),
                "hidden_channels": gone(self.hidden, parent.hidden),
                "mlp_neurons": {str(li): gone(k, parent.mlp) for li, k in zip(self.layers, self.mlp, strict=True)},
                "kv_groups": {str(li): gone(k, parent.kv_heads)
                              for li, k in zip(self.layers, self.kv_groups, strict=True)}}


def top(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k highest scores, in their original order (ties: the lower index)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:k])


def kept_mass(scores: torch.Tensor, k: int) -> float:
    total = float(scores.clamp(min=0).sum())
    return 1.0 if total == 0 else float(scores.clamp(min=0).sort(descending=True).values[:k].sum()) / total


def retained(imp: Importance, parent: Shape, s: Shape) -> float:
    """The importance a shape keeps: product of the kept mass fraction of each pruned axis."""
    layers = top(imp.layers, s.layers)
    mass = kept_mass(imp.hidden, s.hidden) * kept_mass(imp.layers, s.layers)
    mass *= sum(kept_mass(imp.mlp[i], s.mlp) for i in layers) / len(layers)
    mass *= sum(kept_mass(imp.kv_groups[i], s.kv_heads) for i in layers) / len(layers)
    return mass


def check_fixed(parent: Shape, fixed: dict[str, int | None], heads: int | None, family_head_dim: bool) -> dict:
    """Explicit widths and depth, checked against the parent; returns them as Shape fields."""
    out = {k: v for k, v in fixed.items() if v is not None}
    if heads is not None:
        if heads < 1 or heads % parent.group:
            raise PruneError(f"--heads {heads} is not a whole number of KV groups: each KV head serves "
                             f"{parent.group} query heads, so use a multiple of {parent.group}")
        kv = heads // parent.group
        if out.get("kv_heads", kv) != kv:
            raise PruneError(f"--heads {heads} means {kv} KV heads, but --kv-heads is {out['kv_heads']}")
        out["kv_heads"] = kv
    names = {"hidden": "--hidden", "mlp": "--mlp", "kv_heads": "--kv-heads", "layers": "--layers"}
    for key, value in out.items():
        limit = getattr(parent, key)
        if key == "layers" and value < 1:
            raise PruneError(f"--layers {value} removes all {parent.layers} layers (or more): keep at least 1")
        if value < 1:
            raise PruneError(f"{names[key]} {value}: widths must be at least 1")
        if value > limit:
            raise PruneError(f"{names[key]} {value} is more than the parent's {limit}: pruning only removes")
    if family_head_dim and "hidden" in out and out["hidden"] != out.get("kv_heads", parent.kv_heads) * parent.group * parent.head_dim:
        raise PruneError("this architecture derives head_dim from hidden_size / heads: --hidden must equal "
                         "heads x head_dim")
    return out


def _choices(full: int, multiple: int) -> list[int]:
    return sorted({*range(multiple, full, multiple), full})


def candidates(parent: Shape, lay: Layout, *, axes: set[str], fixed: dict, multiple: int, keep: float,
               family_head_dim: bool) -> list[Shape]:
    """The shapes the axes allow; with width, the MLP width is solved for the target (params are linear in it)."""
    width, depth = "width" in axes, "depth" in axes
    hiddens = [fixed["hidden"]] if "hidden" in fixed else _choices(parent.hidden, multiple) if width else [parent.hidden]
    kvs = [fixed["kv_heads"]] if "kv_heads" in fixed else range(1, parent.kv_heads + 1) if width else [parent.kv_heads]
    depths = [fixed["layers"]] if "layers" in fixed else range(1, parent.layers + 1) if depth else [parent.layers]
    target = keep * count_params(parent, lay)
    out = []
    for h, kv, n in itertools.product(hiddens, kvs, depths):
        s = parent.with_(hidden=h, kv_heads=kv, layers=n)
        if family_head_dim and h != s.heads * s.head_dim:
            continue
        if "mlp" in fixed or not width:
            out.append(s.with_(mlp=fixed.get("mlp", parent.mlp)))
            continue
        base, per = count_params(s.with_(mlp=0), lay), count_params(s.with_(mlp=1), lay) - count_params(s.with_(mlp=0), lay)
        want = (target - base) / per
        near = {multiple * int(want // multiple), multiple * int(want // multiple + 1)}
        out += [s.with_(mlp=m) for m in sorted(near | {parent.mlp}) if 1 <= m <= parent.mlp]
    return out


def choose_shape(parent: Shape, lay: Layout, imp: Importance, *, axes: set[str], keep: float | None,
                 fixed: dict, multiple: int = 32, tolerance: float = 0.02, family_head_dim: bool = False) -> Shape:
    """The pruned shape: the fixed widths as given, the rest searched for the `keep` target."""
    if keep is None:
        if not fixed:
            raise PruneError("nothing to prune: give --target-params or explicit --hidden/--mlp/--kv-heads/--layers")
        return parent.with_(**fixed)
    shapes = candidates(parent, lay, axes=axes, fixed=fixed, multiple=multiple, keep=keep,
                        family_head_dim=family_head_dim)
    total = count_params(parent, lay)
    # every chosen axis is pruned: width,depth means fewer layers and narrower ones
    shapes = [s for s in shapes if ("depth" not in axes or s.layers < parent.layers)
              and ("width" not in axes or s.with_(layers=parent.layers) != parent)]
    if not shapes:
        raise PruneError(f"no smaller shape along {', '.join(sorted(axes))} with the fixed widths given")
    gap = {s: abs(count_params(s, lay) - keep * total) / total for s in shapes}
    best = min(gap.values())
    near = [s for s in shapes if gap[s] <= max(tolerance, best + 1e-9)]
    return max(near, key=lambda s: (retained(imp, parent, s), -gap[s]))


def make_plan(parent: Shape, s: Shape, imp: Importance) -> Plan:
    """The units that shape `s` keeps: the most important ones, the layers by block influence."""
    layers = top(imp.layers, s.layers)
    return Plan(shape=s, hidden=top(imp.hidden, s.hidden), layers=layers,
                mlp=[top(imp.mlp[i], s.mlp) for i in layers], kv_groups=[top(imp.kv_groups[i], s.kv_heads) for i in layers])
