"""Rewards chosen per data source (`reward.by_source`), and each source's share of the log.

A mixed training set (math, puzzles, a task with its own answer format) needs a grader per source:
a verifier mode for one, an exact match or a user function for another. `build_source_grading`
resolves the mapping once at start-up into each prompt's grader, checked against the data (a key no
row carries, or a grader that does not import, is an error naming the key). The verifier pool runs
every grader under the same hard deadline, so the verdict (`verified`) already is the source's;
the reward sources (`reward_sources.py`) read it as before.

Each source's mean total reward and accuracy (the verdict's mean) are logged as
`reward/<source>_mean` and `reward/<source>_accuracy` when the recipe maps sources or the data has
more than one; sums over ranks divided by the source's responses over ranks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from justrl_min import dist
from justrl_min.config import ConfigError
from justrl_min.reward import check_grader

UNLABELLED = "unlabelled"
"""The metric name of rows without a source."""


@dataclass(frozen=True)
class SourceGrading:
    """`reward.by_source` resolved against the prompt set; indexed by prompt position."""
    prompt_graders: tuple[str | None, ...]
    """Each prompt's grader; None: the verifier pool's default (`reward.mode`)."""
    extra_graders: tuple[str, ...]
    """The graders `reward.by_source` names, for the verifier pool's workers to load."""
    sources: tuple[str, ...]
    """Metric names of the sources logged, sorted; empty: no per-source metrics."""
    prompt_source: tuple[int, ...]
    """Each prompt's position in `sources` (0 when none are logged)."""

    def graders_of(self, prompts: Sequence[int], n: int) -> list[str | None]:
        """The grader of each of the step's responses: n per prompt, groups contiguous."""
        return [self.prompt_graders[i] for i in prompts for _ in range(n)]

    def metrics(self, prompts: Sequence[int], n: int, rewards: torch.Tensor, verified: torch.Tensor,
                info: dist.DistInfo) -> dict[str, float]:
        """reward/<source>_mean and reward/<source>_accuracy over all ranks; rewards, verified (R,)."""
        if not self.sources:
            return {}
        codes = torch.tensor([self.prompt_source[i] for i in prompts], dtype=torch.long).repeat_interleave(n)
        sums = torch.zeros(3, len(self.sources), dtype=torch.float64)
        sums[0].index_add_(0, codes, rewards.double())
        sums[1].index_add_(0, codes, verified.double())
        sums[2].index_add_(0, codes, torch.ones_like(rewards, dtype=torch.float64))
        reward_sum, correct_sum, responses = dist.all_reduce_sum(sums, info).tolist()
        out = {}
        for k, name in enumerate(self.sources):
            if responses[k]:  # a source no rank sampled this step has no mean to log
                out[f"reward/{name}_mean"] = reward_sum[k] / responses[k]
                out[f"reward/{name}_accuracy"] = correct_sum[k] / responses[k]
        return out


def build_source_grading(by_source: dict[str, str], problem_sources: Sequence[str],
                         reward_source_names: Iterable[str], data_name: str = "data.train") -> SourceGrading:
    """Each prompt's grader (by_source[its source], else None: the pool's default) and the
    per-source metric names.

    `problem_sources` holds each prompt's source; `reward_source_names` are the step reward's own
    terms (verifier, function, ...), whose reward/<name>_mean a source must not shadow.
    """
    present = sorted(set(problem_sources))
    for source, grader in by_source.items():
        if source not in present:
            raise ConfigError(f"reward.by_source.{source}: no row of {data_name} has source {source!r} "
                              f"(its sources: {', '.join(s or repr('') for s in present)})")
        check_grader(grader, f"reward.by_source.{source}")
    names = {source: source or UNLABELLED for source in present}
    sources = tuple(sorted(set(names.values()))) if by_source or len(present) > 1 else ()
    shadowed = sorted(set(sources) & set(reward_source_names))
    if shadowed:
        raise ConfigError(f"data source {shadowed[0]!r} has the name of a reward term: reward/{shadowed[0]}_mean "
                          f"would mean two things; rename the source in {data_name}")
    position = {source: sources.index(names[source]) if sources else 0 for source in present}
    return SourceGrading(
        prompt_graders=tuple(by_source.get(source) for source in problem_sources),
        extra_graders=tuple(dict.fromkeys(by_source.values())),
        sources=sources,
        prompt_source=tuple(position[source] for source in problem_sources))
