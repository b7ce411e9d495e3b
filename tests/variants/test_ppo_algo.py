"""Classic-PPO math (algorithm.advantage=gae) against values derived by hand in the comments."""

import math

import pytest
import torch

from justrl_min import algo


def test_token_rewards_put_the_sequence_reward_on_the_last_valid_token_minus_beta_kl():
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    rewards = algo.token_rewards(torch.tensor([1.0, -1.0, 5.0]), mask)
    # Row 2 has no valid token: its reward has nowhere to go and every position stays 0.
    assert torch.equal(rewards, torch.tensor([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [0.0, 0.0, 0.0]]))
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0], [1.0, 1.0, 1.0]])
    # beta = 0.5: every valid token loses 0.5 * kl; the masked 9.0 and row 2 stay out.
    with_kl = algo.token_rewards(torch.tensor([1.0, -1.0, 5.0]), mask, kl, kl_coef=0.5)
    expected = torch.tensor([[-0.05, -0.1, 1.0 - 0.15], [-0.2, -1.0 - 0.25, 0.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(with_kl, expected, atol=1e-7)


def test_gae_matches_hand_derived_values_on_ragged_rows():
    # gamma = 0.9, lam = 0.8, so gamma * lam = 0.72; V after a row's last valid token is 0.
    # Row 0 (3 valid tokens), r = [0, 0, 1], V = [0.5, 0.4, 0.2]:
    #   t=2: delta = 1 + 0.9*0 - 0.2 = 0.8                 A2 = 0.8
    #   t=1: delta = 0 + 0.9*0.2 - 0.4 = -0.22             A1 = -0.22 + 0.72*0.8 = 0.356
    #   t=0: delta = 0 + 0.9*0.4 - 0.5 = -0.14             A0 = -0.14 + 0.72*0.356 = 0.11632
    #   returns = A + V = [0.61632, 0.756, 1.0]
    # Row 1 (2 valid tokens), r = [0, -1], V = [0.3, -0.5] (+ a junk 7.0 under the mask):
    #   t=1: delta = -1 + 0.9*0 + 0.5 = -0.5               A1 = -0.5
    #   t=0: delta = 0 + 0.9*(-0.5) - 0.3 = -0.75          A0 = -0.75 + 0.72*(-0.5) = -1.11
    #   returns = [-0.81, -1.0], and 0 under the mask
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    rewards = algo.token_rewards(torch.tensor([1.0, -1.0], dtype=torch.float64), mask)
    values = torch.tensor([[0.5, 0.4, 0.2], [0.3, -0.5, 7.0]], dtype=torch.float64)
    advantages, returns = algo.gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)
    assert torch.allclose(advantages, torch.tensor([[0.11632, 0.356, 0.8], [-1.11, -0.5, 0.0]],
                                                   dtype=torch.float64), atol=1e-12)
    assert torch.allclose(returns, torch.tensor([[0.61632, 0.756, 1.0], [-0.81, -1.0, 0.0]],
                                                dtype=torch.float64), atol=1e-12)
    # What sits under the mask (values or rewards) changes nothing.
    values[1, 2], rewards[1, 2] = -100.0, 50.0
    again, _ = algo.gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)
    assert torch.equal(again, advantages)


def test_gae_with_lambda_one_is_the_return_minus_the_value():
    # gamma = lam = 1: A_t = (sum of rewards from t on) - V_t; here the only reward is 2 at the end.
    mask = torch.ones(1, 4)
    values = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    rewards = algo.token_rewards(torch.tensor([2.0]), mask)
    advantages, returns = algo.gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(advantages, torch.tensor([[1.9, 1.8, 1.7, 1.6]]), atol=1e-6)
    assert torch.allclose(returns, torch.full((1, 4), 2.0), atol=1e-6)


def test_value_loss_clipped_and_unclipped_against_hand_values():
    # Token 0: V = 0.5, V_old = 0.2, R = 1.0. Unclipped (0.5 - 1)^2 = 0.25; V_clip = 0.2 + 0.2 = 0.4,
    #   (0.4 - 1)^2 = 0.36 -> max 0.36 (clipped branch: counted in clip_frac, gradient 0).
    # Token 1: V = 0.0, V_old = 0.1, R = 0.5. The change -0.1 is inside the clip: both branches
    #   (0 - 0.5)^2 = 0.25.
    # Token 2 is masked. loss = 0.5 * (0.36 + 0.25) / 2 = 0.1525; clip_frac 1/2; value_mean 0.25.
    values = torch.tensor([[0.5, 0.0, 3.0]], requires_grad=True)
    old = torch.tensor([[0.2, 0.1, 0.0]])
    returns = torch.tensor([[1.0, 0.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, metrics = algo.value_loss(values, old, returns, mask, value_clip=0.2)
    assert loss.item() == pytest.approx(0.1525, abs=1e-7)
    assert metrics.clip_frac.item() == pytest.approx(0.5) and metrics.value_mean.item() == pytest.approx(0.25)
    loss.backward()
    # d/dV1 of 0.5 * (V1 - 0.5)^2 / 2 = (0 - 0.5) / 2 = -0.25; token 0 sits on the clip: 0; masked: 0.
    assert torch.allclose(values.grad, torch.tensor([[0.0, -0.25, 0.0]]), atol=1e-7)
    # No clip: 0.5 * (0.25 + 0.25) / 2 = 0.125; normalised by 4 tokens instead: 0.5 * 0.5 / 4 = 0.0625.
    unclipped, m = algo.value_loss(values, old, returns, mask, value_clip=None)
    assert unclipped.item() == pytest.approx(0.125, abs=1e-7) and m.clip_frac.item() == 0.0
    assert algo.value_loss(values, old, returns, mask, None, token_normalizer=4.0)[0].item() == \
        pytest.approx(0.0625, abs=1e-7)


def test_whitening_uses_the_moments_of_valid_tokens_only():
    # Valid [1, 2, 3]: mean 2, population variance 2/3 -> (x - 2) / sqrt(2/3) = [-1.2247449, 0, 1.2247449].
    x = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    moments = algo.masked_moments(x, mask)
    assert moments.tolist() == [3.0, 6.0, 14.0]
    mean, var = algo.mean_var(moments)
    assert mean == 2.0 and var == pytest.approx(2 / 3)
    white = algo.whiten(x, mask, mean, var)
    s = 1 / math.sqrt(2 / 3 + 1e-8)
    assert torch.allclose(white, torch.tensor([[-s, 0.0], [s, 0.0]]), atol=1e-6)
    # Moments of two halves add up to those of the whole (how ranks combine them).
    assert torch.equal(algo.masked_moments(x[:1], mask[:1]) + algo.masked_moments(x[1:], mask[1:]), moments)


def test_adaptive_kl_coefficient_moves_toward_the_target():
    # Over target: 0.3 / 0.2 - 1 = 0.5, clipped to 0.2; factor 1 + 0.2 * 64 / 640 = 1.02 -> 0.102.
    assert algo.adaptive_kl_coef(0.1, 0.3, 0.2, horizon=640, batch_size=64) == pytest.approx(0.102)
    # Under target: 0.19 / 0.2 - 1 = -0.05; factor 1 - 0.05 * 0.1 = 0.995 -> 0.0995.
    assert algo.adaptive_kl_coef(0.1, 0.19, 0.2, horizon=640, batch_size=64) == pytest.approx(0.0995)
    assert algo.adaptive_kl_coef(0.1, 0.2, 0.2, horizon=640, batch_size=64) == pytest.approx(0.1)
