"""The one place the core chooses a variant from the config, each seam once, before the loop.

Every function returns the JustRL recipe's own part when the recipe asks for nothing else, and
otherwise imports the variant it names from justrl_min/variants/. So a plain run loads no variant,
and a variant's module may import any core module without an import circle: the core reaches the
variants only through the imports inside these functions (tests/test_layout.py checks both).

    seam                   default (the JustRL recipe)          variants
    fine-tuning            model.FullFineTuning                 variants/lora.py (model.lora.rank > 0)
    advantage estimator    GroupBaseline (below)                variants/critic.py (algorithm.advantage=gae)
    policy scorer          model.TokenScorer                    critic.ValueTokenScorer (critic.shared_backbone)
    reward sources         step_reward.VerifierReward           variants/reward_sources.py, variants/shaping.py
    grader per source      OneGrader (below: reward.mode)       variants/by_source.py (reward.by_source, mixed data)
    rollout engine         rollout.build_hf_engine              variants/vllm_engine.py (rollout.engine=vllm)
    rollout reuse          NoReplay (below: each step once)     variants/replay.py (train.replay_steps > 0)
    in-training eval       (none)                               eval/ (eval.every_steps, eval.benchmarks)
    curves at the end      (none)                               tools/curves.py (log.curves_at_end)

The policy loss is a name in `algo.POLICY_LOSSES`, chosen by `algo.policy_objective`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ContextManager

import torch

from justrl_min import algo
from justrl_min.config import Config, LoraConfig
from justrl_min.model import FullFineTuning, MicroBatcher, TokenScorer
from justrl_min.rollout import RolloutEngine, Sampling, build_hf_engine
from justrl_min.step_reward import RewardSource, StepReward, VerifierReward


def fine_tuning(lora: LoraConfig, seed: int):
    """Full fine-tuning, or LoRA adapters when `model.lora.rank` > 0."""
    if lora.rank == 0:
        return FullFineTuning()
    from justrl_min.variants.lora import LoraFineTuning

    return LoraFineTuning(lora, seed)


def policy_scorer_class(cfg: Config, resume_from: Path | None) -> Callable[..., TokenScorer]:
    """What wraps the policy: a TokenScorer, or with critic.shared_backbone one carrying the value
    head (restored from `resume_from`)."""
    if not cfg.critic.shared_backbone:
        return TokenScorer
    from justrl_min.variants.critic import ValueTokenScorer

    return functools.partial(ValueTokenScorer, saved=resume_from)


class GroupBaseline:
    """algorithm.advantage=grpo: the JustRL recipe's group-relative advantages, no critic. The
    estimators' interface: `with_advantages(rewards, batch) -> batch`, `policy_trains(step)`,
    `update(batch) -> metrics`, `state_writer() -> write(folder) | None` and `reads_old_logp`."""

    def __init__(self, group_size: int, scale_by_std: bool, eps: float):
        self.group_size, self.scale_by_std, self.eps = group_size, scale_by_std, eps
        self.reads_old_logp = False

    def with_advantages(self, rewards: torch.Tensor, batch):
        """The batch with group advantages (R,)."""
        return dataclasses.replace(batch, advantages=algo.group_advantages(
            rewards, self.group_size, self.scale_by_std, self.eps).float())

    def policy_trains(self, _step: int) -> bool:
        return True

    def update(self, _batch) -> dict[str, float]:
        return {}

    def state_writer(self) -> Callable[[Path], None] | None:
        return None


def advantage_estimator(cfg: Config, resume_from: Path | None, microbatches: MicroBatcher,
                        load: Callable[..., torch.nn.Module], compute_dtype: torch.dtype,
                        autocast: torch.dtype | None):
    """The estimator `algorithm.advantage` names; for gae, the critic (justrl_min/variants/critic.py)."""
    if cfg.algorithm.advantage == "grpo":
        return GroupBaseline(cfg.rollout.n, cfg.algorithm.scale_by_std, cfg.algorithm.adv_eps)
    from justrl_min.variants.critic import build_critic_estimator

    return build_critic_estimator(cfg, resume_from, microbatches, load, compute_dtype, autocast)


class NoReplay:
    """train.replay_steps=0, the JustRL recipe: a step trains on its own responses only. The interface:
    `extend(batch, microbatches, scorer, reference) -> batch` before the update, `remember(step, fresh,
    updated) -> the fresh batch, completed` after it, `metrics()`, `state_writer() -> write(folder) | None`."""

    def extend(self, batch, _microbatches, _scorer, _reference=None):
        return batch

    def remember(self, _step: int, _fresh, updated):
        return updated

    def metrics(self) -> dict[str, float]:
        return {}

    def state_writer(self) -> Callable[[Path], None] | None:
        return None


def replay(cfg: Config, resume_from: Path | None, info):
    """Each step alone, or with the previous `train.replay_steps` steps' responses (restored on resume)."""
    if not cfg.train.replay_steps:
        return NoReplay()
    from justrl_min.variants.replay import load_buffer

    return load_buffer(resume_from, cfg.train.replay_steps, cfg.train.replay_is_cap, info)


def step_reward(cfg: Config, tokenizer, device: torch.device) -> StepReward:
    """The step's reward as the recipe asks for it (the verifier's alone by default)."""
    r = cfg.reward
    sources: list[RewardSource] = [VerifierReward(r.correct, r.incorrect)] if r.with_verifier or not (
        r.function or r.model) else []
    if r.function or r.model or r.overlong_buffer or r.length_coef:
        from justrl_min.variants.reward_sources import added_sources

        sources += added_sources(cfg, tokenizer, device)
    return StepReward(sources)


class OneGrader:
    """No `reward.by_source` and one data source: every response is graded with `reward.mode` (the
    verifier pool's default) and nothing per source is logged."""
    extra_graders: tuple[str, ...] = ()

    def graders_of(self, _prompts: Sequence[int], _n: int) -> None:
        return None

    def metrics(self, *_step) -> dict[str, float]:
        return {}


def source_grading(by_source: dict[str, str], problem_sources: Sequence[str], reward_source_names: Sequence[str],
                   data_name: str):
    """The grader of each prompt: `OneGrader`, or per source (justrl_min/variants/by_source.py) when
    the recipe maps sources or the data has several (each source's reward is then logged)."""
    if not by_source and len(set(problem_sources)) <= 1:
        return OneGrader()
    from justrl_min.variants.by_source import build_source_grading

    return build_source_grading(by_source, problem_sources, reward_source_names, data_name)


def rollout_engine(cfg: Config, policy: torch.nn.Module, tokenizer, gathered: Callable[[], ContextManager[None]],
                   distributed: bool = False, log: Callable[[str], None] = print) -> RolloutEngine:
    """The engine `rollout.engine` names. vLLM keeps its own copy of the weights and loads from the
    folder the policy came from (a checkpoint when resuming)."""
    if cfg.rollout.engine == "hf":
        return build_hf_engine(cfg, policy, tokenizer, gathered, log)
    from justrl_min.variants.vllm_engine import VLLMEngine, VLLMSettings

    return VLLMEngine(policy.name_or_path, VLLMSettings.from_config(cfg, distributed), log=log)


def draw_curves(run_dir: Path) -> None:
    """log.curves_at_end: the run's curves as run_dir/curves.png (justrl_min/tools/curves.py)."""
    from justrl_min.tools.curves import plot_runs

    plot_runs([run_dir], run_dir / "curves.png")


def evaluate(cfg: Config, engine: RolloutEngine, tokenizer, pool, device: torch.device) -> dict[str, float]:
    """eval.every_steps: the `eval` section's benchmarks on the rollout engine, as flat metrics."""
    from justrl_min.eval import evaluate, protocols

    sampling = Sampling(cfg.eval.temperature, cfg.eval.top_p, cfg.eval.max_tokens, seed=cfg.run.seed)
    judge = protocols.Judge.for_training(cfg, device) if cfg.eval.judge else None
    results = evaluate.evaluate_benchmarks(engine, tokenizer, cfg.eval.benchmarks, n=cfg.eval.n or None,
                                           sampling=sampling, data_dir=cfg.eval.data_dir or None, pool=pool,
                                           grader=cfg.eval.grader, judge=judge, generating=engine.generating)
    return evaluate.flat_metrics(results)
