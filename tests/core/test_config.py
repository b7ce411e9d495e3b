"""Recipes load, overrides are typed, and bad keys or values name themselves."""

from pathlib import Path

import pytest

from justrl_min.config import BOXED_SUFFIX, ConfigError, config_to_dict, load_recipe, save_config

RECIPE_DIR = Path(__file__).resolve().parents[2] / "recipes"
RECIPES = sorted(RECIPE_DIR.rglob("*.yaml"))  # subfolders too (recipes/ablations/)


def test_recipe_list_covers_subfolders():
    assert RECIPE_DIR / "ablations" / "overlong_penalty.yaml" in RECIPES


@pytest.mark.parametrize("recipe", RECIPES, ids=[str(r.relative_to(RECIPE_DIR)) for r in RECIPES])
def test_every_shipped_recipe_loads(recipe):
    cfg = load_recipe(recipe)
    assert cfg.train.prompts_per_step % cfg.train.mini_batch_prompts == 0
    assert cfg.minibatch_responses_per_rank(1) >= cfg.rollout.n


def test_overrides_are_typed():
    cfg = load_recipe(None, ["train.lr=2e-6", "rollout.n=4", "algorithm.dual_clip=null",
                             "eval.benchmarks=aime24,amc23", "run.resume=true", "train.betas=[0.9,0.95]"])
    assert cfg.train.lr == 2e-6 and isinstance(cfg.train.lr, float)
    assert cfg.rollout.n == 4
    assert cfg.algorithm.dual_clip is None
    assert cfg.eval.benchmarks == ["aime24", "amc23"]
    assert cfg.run.resume == "true"
    assert cfg.train.betas == (0.9, 0.95)


def test_length_shaping_and_protocol_keys_default_off():
    cfg = load_recipe(None)
    assert (cfg.reward.overlong_buffer, cfg.reward.length_coef, cfg.train.mask_truncated) == (0, 0.0, False)
    assert (cfg.eval.grader, cfg.eval.judge) == ("math-verify", "")
    cfg = load_recipe(None, ["reward.overlong_buffer=4096", "reward.overlong_penalty=1", "train.mask_truncated=true",
                             "reward.length_target=4000", "reward.length_coef=1e-4", "eval.grader=deepscaler",
                             "eval.judge=/models/CompassVerifier-3B", "reward.mode=deepscaler"])
    assert (cfg.reward.overlong_buffer, cfg.reward.overlong_penalty, cfg.train.mask_truncated) == (4096, 1.0, True)
    assert (cfg.reward.length_target, cfg.reward.length_coef) == (4000, 1e-4)
    assert (cfg.eval.grader, cfg.eval.judge, cfg.reward.mode) == ("deepscaler", "/models/CompassVerifier-3B",
                                                                  "deepscaler")


def test_derived_values():
    cfg = load_recipe(None, ["train.prompts_per_step=256", "train.mini_batch_prompts=64", "rollout.n=8"])
    assert cfg.minibatch_responses_per_rank(2) == 256 and cfg.responses_per_step == 2048


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "unknown config key train.lrr; did you mean train.lr?"),
    ("trian.lr=1", "unknown config key trian; did you mean train?"),
    ("rollout.n=abc", "rollout.n: expected int, got str 'abc'"),
    ("rollout.temperature=hot", "rollout.temperature: expected float"),
    ("train.mini_batch_prompts=100", "must be divisible by train.mini_batch_prompts=100"),
    ("algorithm.dual_clip=0.5", "algorithm.dual_clip: must be > 1 or null"),
    ("rollout.engine=sglang", "rollout.engine: unknown engine 'sglang'"),
    ("train.lr", "not of the form section.key=value"),
    ("reward.mode=fuzzy", "reward.mode: must be symbolic | exact | deepscaler"),
    ("reward.overlong_buffer=20000", "reward.overlong_buffer: must be in [0, rollout.max_response_length=15360]"),
    ("reward.overlong_buffer=-1", "reward.overlong_buffer: must be in [0,"),
    ("reward.overlong_penalty=-1", "reward.overlong_penalty: must be >= 0"),
    ("reward.length_target=-5", "reward.length_target: must be >= 0"),
    ("reward.length_coef=-0.1", "reward.length_coef: must be >= 0"),
    ("train.mask_truncated=maybe", "train.mask_truncated: expected bool"),
    ("eval.grader=fuzzy", "eval.grader: unknown grader 'fuzzy' (math-verify | math-verify-unboxed | deepscaler"),
    ("eval.judge_prompt=p.txt", "eval.judge_prompt: needs eval.judge"),
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


def _keyed(cfg):
    """{"section.key": value} of a config (the tree is sections of fields, two levels)."""
    return {f"{section}.{key}": value
            for section, fields in config_to_dict(cfg).items() for key, value in fields.items()}


@pytest.mark.parametrize("ablation, changed", [
    ("overlong_penalty", {"reward.overlong_buffer": 4096, "reward.overlong_penalty": 1.0}),
    ("overlong_deepscaler", {"reward.overlong_buffer": 4096, "reward.overlong_penalty": 1.0,
                             "reward.mode": "deepscaler", "reward.correct": 1.0, "reward.incorrect": -1.0}),
    ("small_batch", {"train.prompts_per_step": 64}),
])
def test_ablation_recipes_differ_from_the_deepseek_recipe_only_where_they_say(ablation, changed):
    base = _keyed(load_recipe(RECIPE_DIR / "deepseek_1p5b.yaml"))
    variant = _keyed(load_recipe(RECIPE_DIR / "ablations" / f"{ablation}.yaml"))
    differing = {key for key in base if base[key] != variant[key]} - {"run.name"}
    assert differing == {key for key in changed if base[key] != changed[key]}
    assert {key: variant[key] for key in changed} == changed
