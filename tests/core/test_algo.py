"""The RL math against values derived by hand (in the comments), with tight tolerances."""

import math

import pytest
import torch

from justrl_min import algo


def close(actual, expected, tol=1e-6):
    return abs(float(actual) - expected) <= tol


# ---- group_advantages


def test_group_advantages_mean_and_unbiased_std():
    # Group 1: [1, 0, 0, 1], mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = sqrt(1/3) = 0.5773503
    #   -> A = +-0.5 / (0.5773503 + 1e-6) = +-0.8660239
    # Group 2: [1, 1, 1, 1] -> all equal, A = 0 (no signal, and no division by zero).
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    adv = algo.group_advantages(rewards, group_size=4, scale_by_std=True, eps=1e-6)
    expected = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    assert torch.allclose(adv[:4], torch.tensor([expected, -expected, -expected, expected]), atol=1e-6)
    assert torch.equal(adv[4:], torch.zeros(4))


def test_group_advantages_without_std_is_mean_centered():
    # [+1, -1, -1] on the +-1 scale: mean -1/3 -> [4/3, -2/3, -2/3]
    adv = algo.group_advantages(torch.tensor([1.0, -1.0, -1.0]), group_size=3, scale_by_std=False)
    assert torch.allclose(adv, torch.tensor([4 / 3, -2 / 3, -2 / 3]), atol=1e-6)


def test_group_advantages_of_single_sample_groups_are_zero():
    assert torch.equal(algo.group_advantages(torch.tensor([1.0, 0.0]), group_size=1), torch.zeros(2))


def test_group_advantages_groups_are_contiguous():
    # [0, 1 | 1, 1]: only the first pair carries signal; std of [0, 1] (unbiased) = 0.7071068
    adv = algo.group_advantages(torch.tensor([0.0, 1.0, 1.0, 1.0]), group_size=2, eps=0.0)
    assert torch.allclose(adv, torch.tensor([-0.5 / math.sqrt(0.5), 0.5 / math.sqrt(0.5), 0.0, 0.0]), atol=1e-6)


# ---- ppo_clip_loss

# One sequence, four positions, the last one padding. log-ratios give ratios 1, 1.5, 0.5, (1.1 masked).
LOGP_OLD = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
RATIOS = torch.tensor([[1.0, 1.5, 0.5, 1.1]])
LOGP = LOGP_OLD + RATIOS.log()
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0]])


def test_ppo_loss_positive_advantage_clips_high_side():
    # A = +1: per token max(-r, -clip(r, 0.8, 1.28))
    #   r=1   -> max(-1, -1)       = -1
    #   r=1.5 -> max(-1.5, -1.28)  = -1.28   (clipped high)
    #   r=0.5 -> max(-0.5, -0.8)   = -0.5    (A > 0 never clips low)
    # token-mean over 3 tokens: -2.78 / 3 = -0.9266667
    loss, m = algo.ppo_clip_loss(LOGP, LOGP_OLD, torch.tensor([1.0]), MASK, clip_low=0.2, clip_high=0.28)
    assert close(loss, -2.78 / 3)
    assert close(m["clip_frac"], 1 / 3) and close(m["clip_frac_high"], 1 / 3) and close(m["clip_frac_low"], 0.0)


def test_ppo_loss_negative_advantage_clips_low_side():
    # A = -1: per token max(r, clip(r, 0.8, 1.28))
    #   r=1 -> 1;  r=1.5 -> max(1.5, 1.28) = 1.5;  r=0.5 -> max(0.5, 0.8) = 0.8 (clipped low)
    # token-mean: 3.3 / 3 = 1.1
    loss, m = algo.ppo_clip_loss(LOGP, LOGP_OLD, torch.tensor([-1.0]), MASK, clip_low=0.2, clip_high=0.28)
    assert close(loss, 1.1)
    assert close(m["clip_frac_low"], 1 / 3) and close(m["clip_frac_high"], 0.0)


def test_dual_clip_bounds_negative_advantage_loss():
    # A = -2, ratio 5 on one token, dual clip c = 3:
    #   standard: max(-A r, -A clip(r)) = max(10, 2.56) = 10; dual: min(10, -A c = 6) = 6.
    # Without dual clip the loss is 10; A > 0 tokens are untouched by dual clip.
    logp_old = torch.tensor([[-2.0]])
    logp = logp_old + math.log(5.0)
    mask = torch.ones(1, 1)
    loss, m = algo.ppo_clip_loss(logp, logp_old, torch.tensor([-2.0]), mask, dual_clip=3.0)
    assert close(loss, 6.0) and close(m["dual_clip_frac"], 1.0)
    loss, _ = algo.ppo_clip_loss(logp, logp_old, torch.tensor([-2.0]), mask, dual_clip=None)
    assert close(loss, 10.0)
    loss, m = algo.ppo_clip_loss(logp, logp_old, torch.tensor([2.0]), mask, dual_clip=3.0)
    assert close(loss, -2.0 * 1.28) and close(m["dual_clip_frac"], 0.0)


def test_dual_clip_zero_gradient_when_held():
    logp_old = torch.tensor([[-2.0]])
    logp = (logp_old + math.log(5.0)).requires_grad_()
    loss, _ = algo.ppo_clip_loss(logp, logp_old, torch.tensor([-2.0]), torch.ones(1, 1), dual_clip=3.0)
    loss.backward()
    assert logp.grad.abs().item() == 0.0


def test_ppo_loss_token_normalizer_and_per_token_advantages():
    # Same as the positive case, but divided by 6 instead of 3: -2.78 / 6.
    loss, _ = algo.ppo_clip_loss(LOGP, LOGP_OLD, torch.ones(1, 4), MASK, token_normalizer=6.0)
    assert close(loss, -2.78 / 6)


def test_ppo_loss_gradient_paths():
    # d loss / d logp_t = -A r_t / N on unclipped tokens, 0 on clipped ones; old log-probs are constants.
    logp = LOGP.clone().requires_grad_()
    old = LOGP_OLD.clone().requires_grad_()
    loss, _ = algo.ppo_clip_loss(logp, old, torch.tensor([1.0]), MASK)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-1.0 / 3, 0.0, -0.5 / 3, 0.0]]), atol=1e-6)
    assert old.grad is None


def test_ppo_loss_ignores_values_under_mask():
    junk_logp, junk_old = LOGP.clone(), LOGP_OLD.clone()
    junk_logp[0, 3], junk_old[0, 3] = float("nan"), float("-inf")
    a, _ = algo.ppo_clip_loss(LOGP, LOGP_OLD, torch.tensor([1.0]), MASK)
    b, _ = algo.ppo_clip_loss(junk_logp, junk_old, torch.tensor([1.0]), MASK)
    assert torch.equal(a, b)


def test_ppo_loss_ratio_is_clamped_in_log_space():
    # A log-ratio of 100 is clamped to 20 before exp: the loss stays finite.
    loss, _ = algo.ppo_clip_loss(torch.tensor([[100.0]]), torch.tensor([[0.0]]), torch.tensor([-1.0]),
                                 torch.ones(1, 1))
    assert close(loss, math.exp(20.0), tol=1e-3 * math.exp(20.0))


def test_token_weights_scale_per_token_loss():
    # Truncated IS weight 0.5 on the first token: (-1 * 0.5 - 1.28 - 0.5) / 3
    weights = torch.tensor([[0.5, 1.0, 1.0, 1.0]])
    loss, _ = algo.ppo_clip_loss(LOGP, LOGP_OLD, torch.tensor([1.0]), MASK, token_weights=weights)
    assert close(loss, (-0.5 - 1.28 - 0.5) / 3)


def test_truncated_is_weights():
    # exp(old - rollout) = [e^0.1, e^-1, e^3] capped at 2 -> [1.1051709, 0.3678794, 2]
    w = algo.truncated_is_weights(torch.tensor([0.1, -1.0, 3.0]), torch.zeros(3), cap=2.0)
    assert torch.allclose(w, torch.tensor([math.exp(0.1), math.exp(-1.0), 2.0]), atol=1e-6)


# ---- KL, entropy, masked reductions


def test_kl_estimators_by_hand():
    # logp = -1, ref = -2: k1 = 1; k2 = 0.5; k3 = exp(-1) - (-1) - 1 = 0.3678794
    logp, ref = torch.tensor([-1.0]), torch.tensor([-2.0])
    assert close(algo.kl_penalty(logp, ref, "k1"), 1.0)
    assert close(algo.kl_penalty(logp, ref, "k2"), 0.5)
    assert close(algo.kl_penalty(logp, ref, "k3"), math.exp(-1.0))
    assert close(algo.kl_penalty(ref, ref, "k3"), 0.0)
    # k3 with ref_logp - logp = 30 would be ~1e13: clamped to 10.
    assert close(algo.kl_penalty(torch.tensor([-31.0]), torch.tensor([-1.0]), "k3"), 10.0)
    with pytest.raises(ValueError, match="k4"):
        algo.kl_penalty(logp, ref, "k4")


def test_entropy_from_logits():
    # Uniform over 4 -> ln 4; one-hot (others -inf) -> 0; [0, ln 3]: p = [1/4, 3/4]
    #   H = -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.5623351
    assert close(algo.entropy_from_logits(torch.zeros(4)), math.log(4))
    assert close(algo.entropy_from_logits(torch.tensor([0.0, math.log(3.0)])), 0.5623351)
    assert close(algo.entropy_from_logits(torch.tensor([0.0, -1e4, -1e4])), 0.0)


def test_masked_mean_and_empty_mask():
    x = torch.tensor([[1.0, 2.0, float("inf")]])
    assert close(algo.masked_mean(x, torch.tensor([[1.0, 1.0, 0.0]])), 1.5)
    assert close(algo.masked_mean(x, torch.zeros(1, 3)), 0.0)
