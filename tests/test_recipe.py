import pytest

from slimkit import recipe
from slimkit.recipe import RecipeError, StageConfig


class Optim(StageConfig):
    lr: float = 1e-3
    warmup: int = 0


class Cfg(StageConfig):
    name: str = "run"
    steps: int = 10
    optim: Optim = Optim()


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("steps: 5\noptim:\n  lr: 0.01\n")
    cfg = recipe.load(Cfg, p, ["optim.warmup=3", "name=abc"])
    assert (cfg.steps, cfg.optim.lr, cfg.optim.warmup, cfg.name) == (5, 0.01, 3, "abc")
    assert recipe.dump(cfg)["optim"] == {"lr": 0.01, "warmup": 3}


def test_unknown_key_is_one_clear_error(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("steps: 5\noptim:\n  lrr: 0.01\n")
    with pytest.raises(RecipeError, match="unknown key 'optim.lrr'"):
        recipe.load(Cfg, p)


def test_bad_value_and_bad_override():
    with pytest.raises(RecipeError, match="steps"):
        recipe.load(Cfg, None, ["steps=many"])
    with pytest.raises(RecipeError, match="key=value"):
        recipe.load(Cfg, None, ["steps"])
    with pytest.raises(RecipeError, match="not a section"):
        recipe.apply_overrides({"steps": 5}, ["steps.x=1"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        recipe.load(Cfg, tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="mapping"):
        recipe.load(Cfg, p)
