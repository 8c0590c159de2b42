"""Recipes: YAML files validated by pydantic. Each stage owns a config model (defined next to the
stage, extending `StageConfig`); this module loads YAML, applies `key.sub=value` overrides from the
command line, and turns validation failures into one clear message."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from slimkit.errors import SlimkitError


class RecipeError(SlimkitError):
    pass


class StageConfig(BaseModel):
    """Base of every stage config: unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


C = TypeVar("C", bound=BaseModel)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value parsed as YAML: numbers, bools, lists work)."""
    if "=" not in item:
        raise RecipeError(f"override {item!r} is not of the form key=value (e.g. loss.kind=reverse)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise RecipeError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    for item in overrides or []:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise RecipeError(f"override {item!r}: {part!r} is not a section")
            node = nxt
        node[path[-1]] = value
    return data


def _format_validation(e: ValidationError, source: str) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(root)"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {loc!r}")
        else:
            parts.append(f"{loc}: {err['msg']}")
    return f"invalid recipe {source}: " + "; ".join(parts)


def validate(cls: type[C], data: dict[str, Any], source: str = "") -> C:
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise RecipeError(_format_validation(e, source or cls.__name__)) from None


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"recipe {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {p} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {p} must be a mapping at the top level")
    return data


def load(cls: type[C], path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> C:
    """Load a recipe of type `cls` from YAML (optional) plus `key=value` overrides."""
    data = load_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    return validate(cls, data, str(path) if path else "(command line)")


def dump(cfg: BaseModel) -> dict[str, Any]:
    return cfg.model_dump(mode="json")
