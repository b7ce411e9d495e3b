"""The RL math, as pure functions of tensors and floats (no config objects, no I/O).

The JustRL recipe's choices, all visible here:

- Advantages: GRPO-style, no critic. Per group of n samples of one prompt, A = r - mean(r), divided
  by (std(r) + eps) when `scale_by_std` (unbiased sample std, as verl). A group whose rewards are
  all equal carries no signal and gets A = 0.
- Policy loss: the clipped PPO surrogate with asymmetric "clip-higher" bounds (1 - 0.2, 1 + 0.28)
  and dual clip c = 10 on negative-advantage tokens, token-mean over every valid response token of
  the whole mini-batch (the caller passes that count as `token_normalizer` so that micro-batch
  accumulation reproduces the full-batch gradient).
- No KL term and no entropy bonus by default; `kl_penalty` offers the k1/k2/k3 estimators.
  `policy_objective` binds the loss named by `algorithm.policy_loss` (a `POLICY_LOSSES` entry)
  and those optional terms once at start-up.

Classic PPO (algorithm.advantage=gae) adds per-token rewards (the sequence reward on the last valid
token, optionally minus beta * KL to the reference), GAE advantages with returns = advantages +
values, whitening from moments that sum across ranks, the clipped value loss, and the adaptive KL
controller's update of beta.

Shapes: B sequences, T response positions; `mask` is 1.0 on valid response tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

LOG_RATIO_CLAMP = 20.0
KL_CLAMP = 10.0


def masked_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # where() rather than x * mask so that inf/nan under the mask cannot leak into the sum.
    return torch.where(mask.bool(), x, torch.zeros_like(x)).sum()


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `x` over positions where `mask` is nonzero; 0 for an empty mask."""
    return masked_sum(x, mask) / mask.sum().clamp(min=1)


def group_advantages(rewards: torch.Tensor, group_size: int, scale_by_std: bool = True,
                     eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantages.

    rewards: (N * G,) with the G samples of each prompt contiguous. Returns (N * G,).
    The std is the unbiased sample std; a group of one sample has no baseline and gets 0.
    """
    assert rewards.dim() == 1 and rewards.numel() % group_size == 0, (rewards.shape, group_size)
    grouped = rewards.reshape(-1, group_size).to(torch.float64)        # (N, G)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if group_size == 1:
        return torch.zeros_like(rewards)
    if scale_by_std:
        std = grouped.std(dim=1, keepdim=True, unbiased=True)
        # Equal rewards give 0 / (0 + eps) = 0 already; the where() keeps that true for eps = 0.
        centered = torch.where(std > 0, centered / (std + eps), torch.zeros_like(centered))
    return centered.reshape(-1).to(rewards.dtype)


class PolicyInputs(NamedTuple):
    """One micro-batch as a policy objective sees it: (b, T) each, `advantages` (b,) or (b, T);
    `logp` and `entropy` of the current policy (with gradient); `token_weights` the TIS weights;
    `values` the shared value head's (with gradient), `old_values` and `returns` the rollout's."""
    logp: torch.Tensor
    entropy: torch.Tensor
    old_logp: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    token_weights: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    values: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    returns: torch.Tensor | None = None


def ppo_clip_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                  mask: torch.Tensor, clip_low: float = 0.2, clip_high: float = 0.28,
                  dual_clip: float | None = None, token_normalizer: float | torch.Tensor | None = None,
                  token_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped PPO surrogate with clip-higher and optional dual clip, summed over valid tokens.

    logp, old_logp, mask: (B, T); advantages: (B,) or (B, T).
    Per token: max(-A·r, -A·clip(r, 1 - clip_low, 1 + clip_high)) with r = exp(logp - old_logp),
    then for A < 0 and dual clip c: min(that, -A·c). The sum is divided by `token_normalizer`
    (default: the number of valid tokens here). `token_weights` (B, T), if given, multiplies the
    per-token loss (truncated importance sampling against the rollout engine).

    Diagnostics, token means over `mask`: clip_frac (the clip removed the gradient, either side),
    clip_frac_low (A < 0, ratio < 1 - clip_low), clip_frac_high (A > 0, ratio > 1 + clip_high),
    dual_clip_frac (held at the dual-clip bound -A·c), approx_kl (k3(old || new): how far the
    update has moved the policy).
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logp)
    old_logp = old_logp.detach()
    ratio = torch.exp((logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    per_token = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high))
    negative = advantages < 0
    dual_held = torch.zeros_like(negative)
    if dual_clip is not None:
        assert dual_clip > 1.0, dual_clip
        dual_bound = -advantages * dual_clip
        dual_held = negative & (per_token > dual_bound)
        per_token = torch.where(negative, torch.minimum(per_token, dual_bound), per_token)
    if token_weights is not None:
        per_token = per_token * token_weights.detach()
    loss = masked_sum(per_token, mask) / (mask.sum().clamp(min=1) if token_normalizer is None else token_normalizer)

    with torch.no_grad():
        clipped_low = negative & (ratio < 1.0 - clip_low)
        clipped_high = (advantages > 0) & (ratio > 1.0 + clip_high)
        diagnostics = {
            "clip_frac": masked_mean((clipped_low | clipped_high).float(), mask),
            "clip_frac_low": masked_mean(clipped_low.float(), mask),
            "clip_frac_high": masked_mean(clipped_high.float(), mask),
            "dual_clip_frac": masked_mean(dual_held.float(), mask),
            "approx_kl": masked_mean(kl_penalty(logp, old_logp, "k3"), mask),
        }
    return loss, diagnostics


POLICY_LOSSES = {"ppo_clip": lambda x, token_normalizer, **clip: ppo_clip_loss(
    x.logp, x.old_logp, x.advantages, x.mask, **clip, token_normalizer=token_normalizer, token_weights=x.token_weights)}
"""`algorithm.policy_loss` -> fn(PolicyInputs, token_normalizer, clip_low=, clip_high=, dual_clip=)
returning (loss, {name: token-mean diagnostic}); the loss is a sum over valid tokens divided by
`token_normalizer`, so micro-batches accumulate to the whole mini-batch's gradient."""
PolicyObjective = Callable[[PolicyInputs, float], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def policy_objective(loss: str, *, clip_low: float, clip_high: float, dual_clip: float | None,
                     kl_coef: float = 0.0, kl_kind: str = "k3", entropy_coef: float = 0.0,
                     value_coef: float = 0.0, value_clip: float | None = None) -> PolicyObjective:
    """The named policy loss plus its optional terms, bound once at start-up.

    kl_coef > 0 adds kl_coef * token-sum(KL(pi || ref)) / token_normalizer (diagnostic `kl`, the
    token mean); entropy_coef > 0 subtracts entropy_coef * token-sum(entropy) / token_normalizer;
    value_coef > 0 (a value head on the policy's backbone) adds value_coef * `value_loss` with the
    same normalizer (diagnostics `value_loss`, its token mean, and `value_clip_frac`).
    """
    base = POLICY_LOSSES[loss]  # Config.validate names the choices

    def objective(x: PolicyInputs, token_normalizer: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total, diagnostics = base(x, token_normalizer, clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip)
        if kl_coef:
            kl = kl_penalty(x.logp, x.ref_logp, kl_kind)
            total = total + kl_coef * (masked_sum(kl, x.mask) / token_normalizer)
            diagnostics["kl"] = masked_mean(kl.detach(), x.mask)
        if entropy_coef:
            total = total - entropy_coef * masked_sum(x.entropy, x.mask) / token_normalizer
        if value_coef:
            token_mean, metrics = value_loss(x.values, x.old_values, x.returns, x.mask, value_clip)
            # token mean x tokens here / normalizer: the sum over valid tokens / normalizer, as above
            total = total + value_coef * token_mean * x.mask.sum() / token_normalizer
            diagnostics["value_loss"], diagnostics["value_clip_frac"] = token_mean.detach(), metrics.clip_frac
        return total, diagnostics

    return objective


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from samples of pi (Schulman's k1/k2/k3).

    k1 = logp - ref_logp; k2 = 0.5 (logp - ref_logp)^2; k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1,
    clamped to [-10, 10] (k3 is unbiased and always >= 0, but explodes when ref_logp >> logp).
    """
    diff = logp - ref_logp
    if kind == "k1":
        return diff
    if kind == "k2":
        return 0.5 * diff.square()
    if kind == "k3":
        return (torch.exp(-diff) + diff - 1.0).clamp(-KL_CLAMP, KL_CLAMP)
    raise ValueError(f"unknown KL estimator {kind!r} (k1 | k2 | k3)")


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) along the last dim, computed in float32 (or wider)."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    return entropy_from_log_probs(torch.log_softmax(logits, dim=-1))


def entropy_from_log_probs(log_probs: torch.Tensor) -> torch.Tensor:
    """Entropy from normalised log-probabilities (shares one log_softmax with the log-prob gather)."""
    return -(log_probs.exp() * log_probs).sum(dim=-1)


def truncated_is_weights(old_logp: torch.Tensor, rollout_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """min(pi_trainer / pi_rollout, cap) per token: corrects for sampling from a slightly different
    (e.g. vLLM) policy than the one the trainer computes. Constant with respect to the policy."""
    return torch.exp((old_logp - rollout_logp).clamp(max=LOG_RATIO_CLAMP)).clamp(max=cap).detach()


# --------------------------------------------------------------------------------------------------
# Classic PPO with a critic (algorithm.advantage=gae): per-token rewards, GAE, value loss, whitening


def token_rewards(sequence_rewards: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor | None = None,
                  kl_coef: float = 0.0) -> torch.Tensor:
    """Per-token rewards (B, T): the sequence reward (B,) on each row's last valid token, minus
    kl_coef * kl (B, T) on every valid token when `kl` is given (KL folded into the reward, as in
    InstructGPT). Zero under the mask."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(dim=1).values   # (B,)
    rewards = torch.zeros(mask.shape, dtype=sequence_rewards.dtype, device=mask.device)
    has_tokens = last >= 0
    rewards[has_tokens, last[has_tokens]] = sequence_rewards[has_tokens]
    if kl is not None:
        rewards = rewards - kl_coef * kl.to(rewards.dtype)
    return torch.where(mask.bool(), rewards, torch.zeros_like(rewards))


def gae_advantages(token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                   lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over (B, T) tensors with a ragged `mask`.

    delta_t = r_t + gamma * V_next - V_t and A_t = delta_t + gamma * lam * A_next, where "next" is
    the next *valid* position of the row; the value (and advantage) after the last valid token is
    0, since the response ends there. Masked positions are skipped and get A = returns = 0.
    Returns (advantages, returns) with returns = advantages + values (before any whitening).
    """
    valid = mask.bool()
    next_value = torch.zeros_like(values[:, 0])                                     # (B,)
    next_advantage = torch.zeros_like(values[:, 0])
    advantages = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        here = delta + gamma * lam * next_advantage
        advantages[:, t] = torch.where(valid[:, t], here, torch.zeros_like(here))
        next_value = torch.where(valid[:, t], values[:, t], next_value)
        next_advantage = torch.where(valid[:, t], here, next_advantage)
    returns = torch.where(valid, advantages + values, torch.zeros_like(values))
    return advantages, returns


def masked_moments(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(count, sum, sum of squares) of `x` over the mask, float64: summable across ranks, then
    turned into a mean and variance by `mean_var`."""
    x = x.double()
    return torch.stack([mask.bool().sum().double(), masked_sum(x, mask), masked_sum(x.square(), mask)])


def mean_var(moments: torch.Tensor) -> tuple[float, float]:
    """Mean and (population) variance from `masked_moments` (possibly summed over ranks)."""
    count, total, squares = moments.tolist()
    count = max(count, 1.0)
    mean = total / count
    return mean, max(squares / count - mean * mean, 0.0)


def whiten(x: torch.Tensor, mask: torch.Tensor, mean: float, var: float, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) on valid positions, 0 elsewhere (mean / var over the whole batch)."""
    out = (x - mean) / (var + eps) ** 0.5
    return torch.where(mask.bool(), out, torch.zeros_like(out))


class ValueLossMetrics(NamedTuple):
    clip_frac: torch.Tensor
    """Fraction of valid tokens whose clipped value error was the larger one (gradient cut)."""
    value_mean: torch.Tensor


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               value_clip: float | None = 0.2, token_normalizer: float | torch.Tensor | None = None,
               ) -> tuple[torch.Tensor, ValueLossMetrics]:
    """Clipped value loss, summed over valid tokens and divided by `token_normalizer` (default: the
    valid tokens here).

    values, old_values, returns, mask: (B, T). Per token 0.5 * max((V - R)^2, (V_clip - R)^2) with
    V_clip = V_old + clip(V - V_old, -value_clip, value_clip); `value_clip` None: 0.5 * (V - R)^2.
    """
    old_values, returns = old_values.detach(), returns.detach()
    unclipped = (values - returns).square()
    if value_clip is None:
        per_token, cut = unclipped, torch.zeros_like(mask, dtype=torch.bool)
    else:
        clipped_values = old_values + (values - old_values).clamp(-value_clip, value_clip)
        clipped = (clipped_values - returns).square()
        per_token, cut = torch.maximum(unclipped, clipped), clipped > unclipped
    normalizer = mask.sum().clamp(min=1) if token_normalizer is None else token_normalizer
    loss = 0.5 * masked_sum(per_token, mask) / normalizer
    with torch.no_grad():
        metrics = ValueLossMetrics(clip_frac=masked_mean(cut.float(), mask),
                                   value_mean=masked_mean(values, mask))
    return loss, metrics


def adaptive_kl_coef(kl_coef: float, observed_kl: float, target: float, horizon: int, batch_size: int) -> float:
    """One update of the adaptive KL controller (Ziegler et al. 2019): the proportional error
    e = clip(observed / target - 1, -0.2, 0.2) moves the coefficient by a factor 1 + e * batch_size /
    horizon, so it grows while the KL overshoots the target and shrinks while it undershoots."""
    error = min(max(observed_kl / target - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * batch_size / horizon)


def without_truncated(mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """The loss mask (N, T) with every token of a truncated response (``truncated`` (N,) True) off:
    overlong filtering (DAPO section 3.4; TRL's ``mask_truncated_completions``). Those responses keep
    their reward and still count in their group's baseline."""
    return mask * (~truncated.bool()).to(mask.dtype)[:, None]
