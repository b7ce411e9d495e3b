"""Length shaping against values computed by hand (in the comments)."""

import math

import pytest
import torch

from justrl_min.algo import without_truncated
from justrl_min.variants.shaping import linear_length_penalty, overlong_penalty

# JustRL's response limit and the ablation's buffer: the ramp starts at 15,360 - 4,096 = 11,264.
L_MAX, BUFFER = 15_360, 4_096


def test_overlong_penalty_at_the_ramp_edges():
    # penalty = -1.0 * clamp((|y| - 11,264) / 4,096, 0, 1)
    #   10,000 -> below the ramp                    0
    #   11,264 -> start of the ramp: 0 / 4,096      0
    #   11,265 -> 1 / 4,096                        -0.000244140625
    #   13,312 -> middle: 2,048 / 4,096            -0.5
    #   15,359 -> 4,095 / 4,096                    -0.999755859375
    #   15,360 -> the limit: 4,096 / 4,096         -1
    #   16,384 -> beyond: verl's unclamped formula would give -5,120 / 4,096 = -1.25; DAPO Eq. 13
    #             gives -1, and so does this module (clamped at -factor)
    lengths = torch.tensor([10_000, 11_264, 11_265, 13_312, 15_359, 15_360, 16_384])
    expected = torch.tensor([0.0, 0.0, -1 / 4096, -0.5, -4095 / 4096, -1.0, -1.0])
    got = overlong_penalty(lengths, L_MAX, BUFFER, factor=1.0)
    assert got.dtype == torch.float32
    assert torch.allclose(got, expected, atol=1e-7, rtol=0)


def test_overlong_penalty_scales_with_the_factor_and_is_off_without_a_buffer():
    # factor 0.5 at 13,312: -0.5 * 0.5 = -0.25; at 20,000 (beyond): -0.5
    got = overlong_penalty(torch.tensor([13_312, 20_000]), L_MAX, BUFFER, factor=0.5)
    assert torch.allclose(got, torch.tensor([-0.25, -0.5]), atol=1e-7, rtol=0)
    assert torch.equal(overlong_penalty(torch.tensor([15_360, 99_999]), L_MAX, 0, factor=1.0), torch.zeros(2))


def test_overlong_penalty_on_a_tiny_limit():
    # L_max 16, buffer 4: ramp from 12; |y| = 13 -> -1/4, 14 -> -1/2, 16 -> -1
    got = overlong_penalty(torch.tensor([12, 13, 14, 16]), 16, 4, factor=1.0)
    assert torch.allclose(got, torch.tensor([0.0, -0.25, -0.5, -1.0]), atol=1e-7, rtol=0)


@pytest.mark.parametrize("buffer", [-1, L_MAX + 1])
def test_overlong_buffer_outside_the_limit_is_an_error(buffer):
    with pytest.raises(ValueError, match="overlong buffer"):
        overlong_penalty(torch.tensor([1]), L_MAX, buffer, factor=1.0)


def test_linear_length_penalty():
    # coef 1e-4, target 4,000: 3,000 -> 0; 4,000 -> 0; 5,000 -> -1e-4 * 1,000 = -0.1; 14,000 -> -1.0
    got = linear_length_penalty(torch.tensor([3_000, 4_000, 5_000, 14_000]), target=4_000, coef=1e-4)
    assert torch.allclose(got, torch.tensor([0.0, 0.0, -0.1, -1.0]), atol=1e-7, rtol=0)
    assert torch.equal(linear_length_penalty(torch.tensor([9_999]), target=0, coef=0.0), torch.zeros(1))


def test_without_truncated_drops_every_token_of_a_truncated_response():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    truncated = torch.tensor([False, True, False])
    expected = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert torch.equal(without_truncated(mask, truncated), expected)


def _samples(lengths: list[int], verified: list[float]):
    from justrl_min.step_reward import Samples

    return Samples([""] * len(lengths), [""] * len(lengths), [None] * len(lengths), [[1]] * len(lengths),
                   [[7] * n for n in lengths], [n >= 16 for n in lengths], torch.tensor(verified, dtype=torch.float64))


def test_the_step_reward_adds_the_length_penalties_to_right_and_wrong_answers_alike():
    from justrl_min.config import load_recipe
    from justrl_min.options import step_reward as build_step_reward

    cfg = load_recipe("recipes/tiny_cpu.yaml", ["reward.incorrect=-1", "reward.overlong_buffer=8",
                                                "reward.length_target=12", "reward.length_coef=0.1"])
    step_reward = build_step_reward(cfg, tokenizer=None, device=torch.device("cpu"))
    total, by_source = step_reward(_samples([4, 12, 16, 16], [1.0, 0.0, 1.0, 0.0]))
    # max 16, buffer 8: the ramp runs 8 -> 16; 12 tokens is half-way (-0.5), 16 is the limit (-1).
    assert by_source["overlong"].tolist() == [0.0, -0.5, -1.0, -1.0]
    # linear: -0.1 per token past 12
    assert by_source["length"].tolist() == pytest.approx([0.0, 0.0, -0.4, -0.4])
    assert total.tolist() == pytest.approx([1.0, -1.5, -0.4, -2.4])


def test_tiny_run_logs_the_overlong_penalty_and_trains_without_truncated_responses(warm_model, tmp_path):
    from justrl_min import trainer
    from justrl_min.config import load_recipe
    from justrl_min.tracking import read_metrics
    from tests.variants.test_ppo_critic import ROOT, small

    run_dir = tmp_path / "overlong"
    trainer.train(load_recipe(ROOT / "recipes/tiny_cpu.yaml", small(
        warm_model, run_dir, "train.steps=2", "reward.overlong_buffer=8", "train.mask_truncated=true")))
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        # the tiny task's answers are ~10 of 16 tokens: inside the 8-token ramp, so every one pays a little
        assert -1.0 <= row["reward/overlong_mean"] < 0.0 and 0.0 < row["train/overlong_frac"] <= 1.0
        assert row["train/reward_mean"] == pytest.approx(row["reward/verifier_mean"] + row["reward/overlong_mean"])
        assert math.isfinite(row["train/loss"])
