"""The step's reward, built in one place: named sources summed, each one also logged.

`StepReward` holds the sources the recipe asks for, chosen once; called with a step's `Samples` it
returns the total reward and each source's values (logged as `reward/<source>_mean`). A source is
a callable with a `name` taking `Samples` and returning one float64 per response. The verifier's
correct / incorrect reward (`verifier`) is the JustRL recipe's only reward. A recipe may add

- a plain batched function, `package.module:callable`, called as fn(responses, golds, problems) on
  each prompt's group of responses, with their texts, gold answers and `justrl_min.data.Problem`
  records, and returning one finite float per response. It runs in worker processes under a hard
  deadline (`reward.function_timeout_s`, justrl_min.deadline_pool): a group whose call times out or
  raises gets 0 from it, logged as `train/function_timeout_frac` / `train/function_error_frac`;
- an `AutoModelForSequenceClassification` with one label, scoring the prompt exactly as the policy
  saw it (chat template included) followed by the response, in batches.

Their rewards are summed, plus the verifier's unless `reward.with_verifier` is false. With neither
configured nothing is loaded and the verifier's rewards are the total. Length shaping adds penalty
terms for right and wrong answers alike (off by default): DAPO's overlong penalty as verl computes it
(`reward.overlong_buffer`, `reward.overlong_penalty`; justrl_min.variants.shaping) and a linear penalty past a
target length (`reward.length_target`, `reward.length_coef`); the share of responses each one
penalised is logged as `train/<name>_frac`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from justrl_min.variants import shaping
from justrl_min.config import Config, ConfigError
from justrl_min.deadline_pool import DeadlinePool, load_callable

logger = logging.getLogger(__name__)


class RewardSourceError(ValueError):
    """A reward function or model that returned something unusable; the message names it."""


class Samples(NamedTuple):
    """One step's responses as every reward source may read them, one entry per response (groups
    contiguous): decoded texts, golds, `data.Problem` records, token ids, whether generation hit
    rollout.max_response_length, and the verifier's score (R,) float64 (1.0 correct)."""
    responses: list[str]
    golds: list[str]
    problems: list
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    truncated: list[bool]
    verified: torch.Tensor


RewardSource = Callable[[Samples], torch.Tensor]
"""A term of the step reward, with a `name` attribute: source(samples) -> (R,) float64."""


class VerifierReward:
    name = "verifier"

    def __init__(self, correct: float, incorrect: float):
        self.correct, self.incorrect = correct, incorrect

    def __call__(self, samples: Samples) -> torch.Tensor:
        return torch.where(samples.verified > 0, self.correct, self.incorrect)


class LengthPenalty:
    """A `shaping` penalty of each response's length in tokens."""

    def __init__(self, name: str, penalty: Callable[..., torch.Tensor], *args: float):
        self.name, self.penalty, self.args = name, penalty, args

    def __call__(self, samples: Samples) -> torch.Tensor:
        lengths = torch.tensor([len(r) for r in samples.response_ids])   # EOS included, as verl counts it
        return self.penalty(lengths, *self.args).double()


PENALTY_SOURCES = ("overlong", "length")


class StepReward:
    """The sum of the recipe's reward sources, with each source's values kept for the log."""

    def __init__(self, sources: list[RewardSource]):
        self.sources = sources

    def __call__(self, samples: Samples) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total (R,), {source name: its values (R,)}), float64."""
        by_source = {source.name: source(samples) for source in self.sources}
        return sum(by_source.values(), torch.zeros(len(samples.responses), dtype=torch.float64)), by_source

    def failed_responses(self) -> dict[str, int]:
        """{`train/<source>_<timeout|error>_frac`: responses of the last call a source could not score}."""
        return {key: count for source in self.sources for key, count in getattr(source, "failed", {}).items()}

    def close(self) -> None:
        for source in self.sources:
            getattr(source, "close", lambda: None)()


def build_step_reward(cfg: Config, tokenizer, device: torch.device) -> StepReward:
    """The step's reward as the recipe asks for it, chosen once (the verifier's alone by default)."""
    r = cfg.reward
    sources: list[RewardSource] = [VerifierReward(r.correct, r.incorrect)] if r.with_verifier or not (
        r.function or r.model) else []
    if r.function:
        sources.append(FunctionReward(r.function, cfg.rollout.n, r.workers, r.function_timeout_s))
    if r.model:
        sources.append(ModelReward(r.model, tokenizer, device, r.model_batch_size, cfg.model.trust_remote_code))
    if r.overlong_buffer:
        sources.append(LengthPenalty("overlong", shaping.overlong_penalty, cfg.rollout.max_response_length,
                                     r.overlong_buffer, r.overlong_penalty))
    if r.length_coef:
        sources.append(LengthPenalty("length", shaping.linear_length_penalty, r.length_target, r.length_coef))
    return StepReward(sources)


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
