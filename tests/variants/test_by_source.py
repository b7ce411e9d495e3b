"""reward.by_source: a grader per data source, run in the verifier pool under its deadline, checked
against the data at start-up, with each source's reward and accuracy logged."""

import json
from pathlib import Path

import pytest
import torch

from justrl_min import tiny, trainer
from justrl_min.config import ConfigError, load_recipe
from justrl_min.data import load_problems
from justrl_min.reward import VerifierPool, extract_boxed
from justrl_min.tracking import read_metrics
from justrl_min.variants.by_source import build_source_grading

ROOT = Path(__file__).resolve().parents[2]
WITHIN_ONE = "justrl_min.tiny:within_one"


def test_pool_judges_each_item_with_its_own_grader():
    responses = ["\\boxed{0.5}", "\\boxed{0.5}", "\\boxed{8}", "\\boxed{8}", "no box"]
    golds = ["\\frac{1}{2}", "\\frac{1}{2}", "7", "7", "7"]
    graders = [None, "exact", WITHIN_ONE, "symbolic", WITHIN_ONE]  # None: the pool's default (symbolic)
    with VerifierPool(workers=1, timeout_s=5.0, graders=("exact", WITHIN_ONE)) as pool:
        result = pool.score(responses, golds, graders)
        # 0.5 = 1/2 symbolically, not as strings; 8 is within one of 7 but not equal to it
        assert result.scores == [1.0, 0.0, 1.0, 0.0, 0.0]
        assert pool.score(responses, golds).scores == [1.0, 1.0, 0.0, 0.0, 0.0]  # all the default (symbolic)
        with pytest.raises(ValueError, match=r"graders \['deepscaler'\] were not given"):
            pool.score(responses[:1], golds[:1], ["deepscaler"])


def test_a_user_grader_runs_under_the_pool_deadline():
    with VerifierPool(workers=1, timeout_s=0.5, graders=("tests.reward_fns:hangs",)) as pool:
        result = pool.score(["\\boxed{1}", "\\boxed{1}"], ["1", "1"], ["tests.reward_fns:hangs", "symbolic"])
    assert result.scores == [0.0, 1.0] and result.timeouts == 1


def test_within_one_reads_the_last_box():
    assert [tiny.within_one(r, "7") for r in ("\\boxed{6}", "\\boxed{8}", "\\boxed{9}", "\\boxed{x}", "7")] == \
        [1.0, 1.0, 0.0, 0.0, 0.0]


def test_grading_is_resolved_once_per_prompt():
    grading = build_source_grading({"b": WITHIN_ONE}, ["a", "b", "b", "c"], ["verifier"])
    assert grading.prompt_graders == (None, WITHIN_ONE, WITHIN_ONE, None)  # None: the pool's default
    assert grading.extra_graders == (WITHIN_ONE,) and grading.sources == ("a", "b", "c")
    assert grading.graders_of([1, 0], n=2) == [WITHIN_ONE, WITHIN_ONE, None, None]
    # One source and no mapping: nothing extra, nothing per source (the default recipe's log is unchanged).
    plain = build_source_grading({}, ["tiny_add"] * 3, ["verifier"])
    assert plain.sources == () and plain.extra_graders == ()
    assert plain.metrics([0], 2, torch.ones(2), torch.ones(2), trainer.dist.DistInfo()) == {}


def test_per_source_metrics_are_means_over_each_sources_responses():
    grading = build_source_grading({}, ["a", "b", ""], ["verifier"])
    assert grading.sources == ("a", "b", "unlabelled")
    # prompts 0 (a) and 1 (b), two responses each; no response of the unlabelled prompt this step
    rewards = torch.tensor([1.0, -1.0, 0.5, 0.25], dtype=torch.float64)
    verified = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    metrics = grading.metrics([0, 1], 2, rewards, verified, trainer.dist.DistInfo())
    assert metrics == {"reward/a_mean": 0.0, "reward/a_accuracy": 0.5,       # (1 - 1) / 2, (1 + 0) / 2
                       "reward/b_mean": 0.375, "reward/b_accuracy": 1.0}     # (0.5 + 0.25) / 2


def test_bad_mappings_are_errors_naming_the_key():
    with pytest.raises(ConfigError, match="reward.by_source.tiny_sub: no row of data.train has source 'tiny_sub' "
                                          r"\(its sources: tiny_add, tiny_estimate\)"):
        build_source_grading({"tiny_sub": "exact"}, ["tiny_add", "tiny_estimate"], [])
    with pytest.raises(ConfigError, match="reward.by_source.tiny_add: unknown grader 'exat'"):
        load_recipe(None, ["reward.by_source={tiny_add: exat}"])
    with pytest.raises(ConfigError, match="reward.by_source.tiny_add='nomodule_xyz:f': cannot import"):
        build_source_grading({"tiny_add": "nomodule_xyz:f"}, ["tiny_add"], [])
    with pytest.raises(ConfigError, match="reward.by_source.tiny_add='tests.reward_fns:missing': .* has no callable"):
        build_source_grading({"tiny_add": "tests.reward_fns:missing"}, ["tiny_add"], [])
    with pytest.raises(ConfigError, match="data source 'verifier' has the name of a reward term"):
        build_source_grading({}, ["verifier", "b"], ["verifier"])
    with pytest.raises(ConfigError, match="reward.by_source: expected a mapping"):
        load_recipe(None, ["reward.by_source=exact"])


def test_problems_keep_their_source():
    assert {p.source for p in load_problems(str(ROOT / "tests/data/dapo_schema_sample.jsonl"))} == {"math_dapo"}
    mixed = load_problems("tiny_mixed", tiny_problems=4)
    assert [p.source for p in mixed] == ["tiny_add", "tiny_estimate"] * 2
    assert mixed[1].problem.startswith("Roughly, what is ")
    assert {p.source for p in load_problems("tiny", tiny_problems=4)} == {"tiny_add"}


def test_mixed_run_grades_each_source_by_its_rule_and_logs_it(warm_model, tmp_path):
    run_dir = tmp_path / "mixed"
    trainer.train(load_recipe(ROOT / "recipes/tiny_mixed.yaml", [
        f"model.path={warm_model}", f"run.output_dir={tmp_path}", "run.name=mixed", "train.steps=1",
        "train.prompts_per_step=8", "train.mini_batch_prompts=4", "rollout.n=4", "reward.workers=1",
        "log.curves_at_end=false", "log.tensorboard=false", "data.tiny_problems=64", "log.samples_per_step=32"]))
    [m] = read_metrics(run_dir)
    for source in ("tiny_add", "tiny_estimate"):
        assert 0 <= m[f"reward/{source}_accuracy"] <= 1
        # correct 1 / incorrect 0: each source's mean reward is its accuracy
        assert m[f"reward/{source}_mean"] == m[f"reward/{source}_accuracy"]
    low, high = sorted([m["reward/tiny_add_accuracy"], m["reward/tiny_estimate_accuracy"]])
    assert low <= m["train/accuracy"] <= high
    samples = [json.loads(line) for line in (run_dir / "samples/step_1.jsonl").read_text().splitlines()]
    assert len(samples) == 32
    for s in samples:  # each response scored by its own source's rule
        if "Roughly" in s["prompt"]:
            assert s["reward"] == tiny.within_one(s["response"], s["gold"])
        else:
            assert s["reward"] == float(extract_boxed(s["response"]) == s["gold"])
