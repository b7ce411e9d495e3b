"""Reward sources a recipe may add to the verifier's (justrl_min/step_reward.py), each loaded only
when asked (justrl_min.options.step_reward):

- a plain batched function, `package.module:callable`, called as fn(responses, golds, problems) on
  each prompt's group of responses, with their texts, gold answers and `justrl_min.data.Problem`
  records, and returning one finite float per response. It runs in worker processes under a hard
  deadline (`reward.function_timeout_s`, justrl_min.deadline_pool): a group whose call times out or
  raises gets 0 from it, logged as `train/function_timeout_frac` / `train/function_error_frac`;
- an `AutoModelForSequenceClassification` with one label, scoring the prompt exactly as the policy
  saw it (chat template included) followed by the response, in batches.

Their rewards are summed, plus the verifier's unless `reward.with_verifier` is false. Length shaping
adds penalty terms for right and wrong answers alike (off by default): DAPO's overlong penalty as
verl computes it (`reward.overlong_buffer`, `reward.overlong_penalty`; justrl_min.variants.shaping)
and a linear penalty past a target length (`reward.length_target`, `reward.length_coef`); the share
of responses each one penalised is logged as `train/<name>_frac`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from justrl_min.config import Config
from justrl_min.deadline_pool import DeadlinePool
from justrl_min.errors import ConfigError, load_callable
from justrl_min.step_reward import Samples
from justrl_min.variants import shaping

logger = logging.getLogger(__name__)


class RewardSourceError(ValueError):
    """A reward function or model that returned something unusable; the message names it."""


class LengthPenalty:
    """A `shaping` penalty of each response's length in tokens."""

    def __init__(self, name: str, penalty: Callable[..., torch.Tensor], *args: float):
        self.name, self.penalty, self.args = name, penalty, args

    def __call__(self, samples: Samples) -> torch.Tensor:
        lengths = torch.tensor([len(r) for r in samples.response_ids])   # EOS included, as verl counts it
        return self.penalty(lengths, *self.args).double()


def checked_rewards(values, count: int, name: str) -> torch.Tensor:
    """One finite float per response, or an error naming the source and what was wrong."""
    try:
        rewards = torch.as_tensor([float(v) for v in values], dtype=torch.float64)
    except (TypeError, ValueError) as e:
        raise RewardSourceError(f"{name} must return one float per response: {e}") from None
    if rewards.numel() != count:
        raise RewardSourceError(f"{name} returned {rewards.numel()} rewards for {count} responses")
    bad = (~torch.isfinite(rewards)).nonzero().flatten().tolist()
    if bad:
        raise RewardSourceError(f"{name} returned non-finite rewards at responses {bad[:8]} "
                                f"(e.g. {rewards[bad[0]].item()})")
    return rewards


class FunctionReward:
    """`reward.function` on each group of responses, in a `DeadlinePool` of its own."""
    name = "function"

    def __init__(self, spec: str, group_size: int, workers: int, timeout_s: float):
        load_callable(spec)  # a bad spec fails at start-up, with the key's name
        self.spec, self.group_size = spec, group_size
        self.pool = DeadlinePool([spec], workers, timeout_s, purpose=f"reward.function {spec}")
        self.failed: dict[str, int] = {}

    def __call__(self, samples: Samples) -> torch.Tensor:
        groups = [slice(start, start + self.group_size) for start in range(0, len(samples.responses), self.group_size)]
        outcomes = self.pool.run([(0, (samples.responses[g], samples.golds[g], samples.problems[g])) for g in groups],
                                 chunk_size=1)
        values, self.failed = [], {"train/function_timeout_frac": 0, "train/function_error_frac": 0}
        for group, outcome in zip(groups, outcomes, strict=True):
            count = len(samples.responses[group])
            if outcome.status == "ok":
                values.append(checked_rewards(outcome.value, count, f"reward.function {self.spec}"))
                continue
            self.failed[f"train/function_{outcome.status}_frac"] += count
            logger.warning("reward.function %s: %s after %.1f s on the group at response %d (scored 0): %s",
                           self.spec, outcome.status, outcome.elapsed_s, group.start, outcome.detail)
            values.append(torch.zeros(count, dtype=torch.float64))
        return torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)

    def close(self) -> None:
        self.pool.close()


class ModelReward:
    """A sequence-classification reward model with its own tokenizer, right-padded batches, no grad."""
    name = "model"

    def __init__(self, path: str, policy_tokenizer, device: torch.device, batch_size: int,
                 trust_remote_code: bool = False):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.path, self.policy_tokenizer, self.device, self.batch_size = path, policy_tokenizer, device, batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self.model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=trust_remote_code)
        if self.model.config.num_labels != 1:
            raise ConfigError(f"reward.model={path}: expected a one-label (scalar) reward model, "
                              f"it has num_labels={self.model.config.num_labels}")
        self.model.config.pad_token_id = self.tokenizer.pad_token_id  # where each row's score is read
        self.model.to(device).eval().requires_grad_(False)

    @torch.no_grad()
    def score_texts(self, texts: Sequence[str]) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, return_tensors="pt",
                                 add_special_tokens=False).to(self.device)
            scores += self.model(**enc).logits[:, 0].float().cpu().tolist()
        return scores

    def __call__(self, samples: Samples) -> torch.Tensor:
        prompts = self.policy_tokenizer.batch_decode(samples.prompt_ids)
        scores = self.score_texts([p + r for p, r in zip(prompts, samples.responses)])
        return checked_rewards(scores, len(samples.responses), f"reward.model {self.path}")


def added_sources(cfg: Config, tokenizer, device: torch.device) -> list:
    """The reward sources the recipe adds to the verifier's (justrl_min.options.step_reward)."""
    r, sources = cfg.reward, []
    if r.function:
        sources.append(FunctionReward(r.function, cfg.rollout.n, r.workers, r.function_timeout_s))
    if r.model:
        sources.append(ModelReward(r.model, tokenizer, device, r.model_batch_size, cfg.model.trust_remote_code))
    if r.overlong_buffer:
        sources.append(LengthPenalty("overlong", shaping.overlong_penalty, cfg.rollout.max_response_length,
                                     r.overlong_buffer, r.overlong_penalty))
    if r.length_coef:
        sources.append(LengthPenalty("length", shaping.linear_length_penalty, r.length_target, r.length_coef))
    return sources
