"""Recipes load, overrides are typed, and bad keys or values name themselves."""

from pathlib import Path

import pytest

from justrl_min.config import BOXED_SUFFIX, ConfigError, load_recipe, save_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_every_shipped_recipe_loads(recipe):
    cfg = load_recipe(recipe)
    assert cfg.train.prompts_per_step % cfg.train.mini_batch_prompts == 0
    assert cfg.updates_per_step >= 1


def test_overrides_are_typed():
    cfg = load_recipe(None, ["train.lr=2e-6", "rollout.n=4", "algorithm.dual_clip=null",
                             "eval.benchmarks=aime24,amc23", "run.resume=true", "train.betas=[0.9,0.95]"])
    assert cfg.train.lr == 2e-6 and isinstance(cfg.train.lr, float)
    assert cfg.rollout.n == 4
    assert cfg.algorithm.dual_clip is None
    assert cfg.eval.benchmarks == ["aime24", "amc23"]
    assert cfg.run.resume == "true"
    assert cfg.train.betas == (0.9, 0.95)


def test_derived_values():
    cfg = load_recipe(None, ["train.prompts_per_step=256", "train.mini_batch_prompts=64", "rollout.n=8"])
    assert cfg.updates_per_step == 4 and cfg.responses_per_step == 2048


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "unknown config key train.lrr; did you mean train.lr?"),
    ("trian.lr=1", "unknown config key trian; did you mean train?"),
    ("rollout.n=abc", "rollout.n: expected int, got str 'abc'"),
    ("rollout.temperature=hot", "rollout.temperature: expected float"),
    ("train.mini_batch_prompts=100", "must be divisible by train.mini_batch_prompts=100"),
    ("algorithm.dual_clip=0.5", "algorithm.dual_clip: must be > 1 or null"),
    ("rollout.engine=sglang", "rollout.engine: unknown engine 'sglang'"),
    ("train.lr", "not of the form section.key=value"),
    ("reward.mode=fuzzy", "reward.mode: must be symbolic | exact"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_recipe(None, [override])
    assert message in str(e.value)


def test_bad_recipe_files(tmp_path):
    with pytest.raises(ConfigError, match="recipe not found"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match="train.stepz; did you mean train.steps"):
        load_recipe(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="a recipe is a mapping"):
        load_recipe(bad)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_recipe(None, ["train.lr=3e-6", "data.prompt_suffix=" + "' x'"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_recipe(tmp_path / "config.yaml")
    assert again == cfg


def test_default_prompt_suffix_is_the_papers():
    assert load_recipe(None).data.prompt_suffix == BOXED_SUFFIX
    assert BOXED_SUFFIX == "\n\nPlease reason step by step, and put your final answer within \\boxed{}."
