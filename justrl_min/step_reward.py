"""The step's reward: named sources summed, each one also logged.

`StepReward` holds the sources the recipe asks for, chosen once (`justrl_min.options.step_reward`);
called with a step's `Samples` it returns the total reward and each source's values (logged as
`reward/<source>_mean`). A source is a callable with a `name` taking `Samples` and returning one
float64 per response. The verifier's correct / incorrect reward (`VerifierReward`) is the JustRL
recipe's only reward; a reward function, a reward model and length penalties are variants
(justrl_min/variants/reward_sources.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch


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
