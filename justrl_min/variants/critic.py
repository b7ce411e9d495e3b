"""The critic's advantage estimators, chosen once from `algorithm.advantage` (justrl_min.options,
whose `GroupBaseline` is the JustRL recipe's: group-relative advantages, no critic).

- `CriticGAE` (gae, classic RLHF PPO): a value model (the policy's causal-LM backbone, or
  `critic.path`'s, with a scalar head) predicts V(s_t) before every response token. The sequence
  reward sits on the last valid token, optionally minus beta * KL(pi || ref) on every token
  (`algorithm.kl_in_reward`, beta adapted toward a target KL when asked); GAE(gamma, lambda) gives
  per-token advantages and returns = advantages + values; advantages are whitened over the step.
  The critic trains on the clipped value loss with its own AdamW, over the same epochs and
  mini-batches as the policy (token-mean across micro-batches and ranks), is sharded with FSDP2
  under torchrun, and is saved in `checkpoints/step_N/critic/` for an exact resume. For its first
  `critic.warmup_steps` steps only the critic trains.
- `SharedHeadGAE` (gae with `critic.shared_backbone`, the classic shared policy-value network): the
  value head sits on the policy's own backbone (`ValueTokenScorer`), so the no-grad pass that gives
  the old log-probs gives the rollout's values too, and the policy update's one forward and one
  backward train both (policy loss + critic.value_coef * value loss, `algo.policy_objective`) with
  the policy's optimizer. The head is saved beside the policy (checkpoint.TRAINED_HEADS_FILE), its
  Adam moments in the policy's optimizer state; GAE, whitening and the KL in the reward are as above.

All expose `with_advantages(rewards, batch) -> batch`, `policy_trains(step)`, `update(batch) ->
metrics`, `state_writer() -> write(folder) | None` and `reads_old_logp`, so the loop has no branches
on the estimator.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Callable
from pathlib import Path

import torch

from justrl_min import algo, dist
from justrl_min.checkpoint import TRAINED_HEADS_FILE, load_state_file
from justrl_min.config import Config, ConfigError
from justrl_min.model import (
    MicroBatch,
    MicroBatcher,
    TokenScorer,
    minibatch_rows,
    optimizer_step,
    shard,
    unflatten,
)
from justrl_min.optim import build_adamw

CRITIC_DIR = "critic"


def zero_value_head(causal_lm: torch.nn.Module) -> torch.nn.Linear:
    """A scalar head on the backbone's hidden size, in its dtype and on its device, all zeros: it predicts
    0 everywhere at the start, so the first advantages carry no random bias."""
    parameter = next(causal_lm.parameters())
    head = torch.nn.Linear(causal_lm.config.get_text_config().hidden_size, 1, dtype=parameter.dtype,
                           device=parameter.device)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return head


class ValueModel(torch.nn.Module):
    """A causal LM's backbone with a scalar head: forward gives V(s_t) for each response token t,
    read from the hidden state that predicts token t (the state after prompt + response[:t])."""

    def __init__(self, causal_lm: torch.nn.Module, autocast_dtype: torch.dtype | None = None):
        super().__init__()
        causal_lm.set_output_embeddings(torch.nn.Identity())  # the LM head is unused: do not train or save it
        self.causal_lm = causal_lm  # the attribute name model.shard looks for to shard per decoder layer
        self.value_head = zero_value_head(causal_lm)
        self.autocast_dtype = autocast_dtype

    def forward(self, batch: MicroBatch, *_ignored) -> torch.Tensor:
        """Values (n,) in float32; extra arguments are accepted so model.shard's warm-up call fits."""
        with torch.autocast(batch.input_ids.device.type, dtype=self.autocast_dtype,
                            enabled=self.autocast_dtype is not None):
            hidden = self.causal_lm.get_decoder()(input_ids=batch.input_ids, position_ids=batch.position_ids,
                                                  attention_mask=batch.attention_mask,
                                                  use_cache=False).last_hidden_state
            hidden = hidden.reshape(-1, hidden.shape[-1])[batch.target_index]        # (n, H)
            return self.value_head(hidden).squeeze(-1).float()


class CriticGAE:
    """algorithm.advantage=gae: a trained value model, GAE advantages, optional KL in the reward."""

    def __init__(self, cfg: Config, model: ValueModel | None, optimizer: torch.optim.Optimizer | None,
                 kl_coef: float, microbatches: MicroBatcher):
        self.cfg, self.model, self.optimizer, self.kl_coef = cfg, model, optimizer, kl_coef
        self.microbatches, self.info = microbatches, microbatches.info
        self.metrics: dict[str, float] = {}
        self.reads_old_logp = cfg.algorithm.kl_in_reward
        """`with_advantages` reads the batch's no-grad pass (old log-probs for the KL in the reward; the
        shared head's values), so every row must be scored before the update."""

    def policy_trains(self, step: int) -> bool:
        return step > self.cfg.critic.warmup_steps

    @torch.no_grad()
    def with_advantages(self, rewards: torch.Tensor, batch):
        """The batch with per-token advantages, the rollout's values and the returns, (R, T) each.
        With kl_in_reward the KL to the reference lives in the reward (the policy objective was
        built without its KL term)."""
        a, info = self.cfg.algorithm, self.info
        mask = batch.mask
        values = self._predict(batch)                                                   # (R, T)
        kl = algo.kl_penalty(batch.old_logp, batch.ref_logp, a.kl_kind) if a.kl_in_reward else None
        rewards_t = algo.token_rewards(rewards.float(), mask, kl, self.kl_coef)
        advantages, returns = algo.gae_advantages(rewards_t, values, mask, a.gamma, a.lam)
        sums = dist.all_reduce_sum(torch.cat([
            algo.masked_moments(returns, mask), algo.masked_moments(returns - values, mask),
            algo.masked_moments(values, mask), algo.masked_moments(advantages, mask)]), info)
        (return_mean, return_var), (_, residual_var), (value_mean, _), (adv_mean, adv_var) = (
            algo.mean_var(m) for m in sums.split(3))
        self.metrics = {"train/explained_variance": 1.0 - residual_var / return_var if return_var > 0 else 0.0,
                        "train/value_mean": value_mean, "train/return_mean": return_mean}
        if a.whiten_advantages:
            advantages = algo.whiten(advantages, mask, adv_mean, adv_var)
        if a.kl_in_reward:
            self._account_kl(kl, mask, len(batch.responses))
        return dataclasses.replace(batch, advantages=advantages, values=values, returns=returns)

    def _account_kl(self, kl: torch.Tensor, mask: torch.Tensor, responses: int) -> None:
        a = self.cfg.algorithm
        s = dist.all_reduce_sum(torch.tensor([algo.masked_sum(kl.double(), mask).item(), mask.sum().item(),
                                              float(responses)], dtype=torch.float64), self.info).tolist()
        self.metrics.update({"train/kl": s[0] / max(s[1], 1.0), "train/kl_coef": self.kl_coef})
        if a.adaptive_kl_target:  # steer beta by the mean KL per response, over the whole step
            self.kl_coef = algo.adaptive_kl_coef(self.kl_coef, s[0] / s[2], a.adaptive_kl_target,
                                                 a.adaptive_kl_horizon, int(s[2]))

    def _predict(self, batch) -> torch.Tensor:
        values = torch.zeros_like(batch.mask)
        self.microbatches.score(self.model, batch.prompts, batch.responses, list(range(len(batch.responses))), values)
        return values

    def update(self, batch) -> dict[str, float]:
        """ppo_epochs passes of the clipped value loss over the same mini-batches as the policy."""
        cfg, info, device = self.cfg, self.info, self.microbatches.device
        per_rank_mini = cfg.minibatch_responses_per_rank(info.world_size)
        loss_total, clipped_tokens, grad_norm_total, passes = 0.0, 0.0, 0.0, 0
        for _epoch, _number, rows in minibatch_rows(len(batch.responses), per_rank_mini, cfg.algorithm.ppo_epochs):
            normalizer, loss, clipped = dist.all_reduce_sum(batch.mask[rows].sum().double(), info).item(), 0.0, 0.0
            for idx, micro in self.microbatches(batch.prompts, batch.responses, rows):  # accumulate the gradient
                width = max(micro.response_lengths)
                values = unflatten(self.model(micro), micro.response_lengths, width)         # (b, T)
                mask = batch.mask[idx, :width].to(device)
                micro_loss, metrics = algo.value_loss(values, batch.values[idx, :width].to(device),
                                                      batch.returns[idx, :width].to(device), mask,
                                                      cfg.critic.value_clip, token_normalizer=normalizer)
                (micro_loss * info.world_size).backward()  # FSDP averages over ranks; this makes it a sum
                loss += micro_loss.item()
                clipped += metrics.clip_frac.item() * mask.sum().item()
            loss = dist.sum_scalar(loss, info)
            grad_norm, _ = optimizer_step(self.model, self.optimizer, cfg.critic.grad_clip, math.isfinite(loss))
            loss_total, clipped_tokens, passes = loss_total + loss, clipped_tokens + clipped, passes + 1
            grad_norm_total += grad_norm if math.isfinite(grad_norm) else 0.0
        tokens = dist.all_reduce_sum(batch.mask.sum().double(), info).item() * cfg.algorithm.ppo_epochs
        clip_frac = dist.sum_scalar(clipped_tokens, info) / max(tokens, 1.0)
        return {**self.metrics, "train/value_loss": loss_total / passes, "train/critic_grad_norm":
                grad_norm_total / passes, "train/value_clip_frac": clip_frac}

    def state_writer(self) -> Callable[[Path], None]:
        """Gather the critic's full state (a collective under FSDP); the returned function writes it
        into a checkpoint folder on rank 0."""
        from safetensors.torch import save_file

        model_state = {k: v.contiguous() for k, v in dist.full_model_state(self.model, self.info).items()}
        optimizer_state = (dist.full_optimizer_state(self.model, self.optimizer, self.info)
                           if self.cfg.checkpoint.save_optimizer else None)
        kl_coef = self.kl_coef

        def write(folder: Path) -> None:
            out = _write_critic_state(folder, kl_coef)
            save_file(model_state, out / "model.safetensors")
            if optimizer_state is not None:
                torch.save(optimizer_state, out / "optimizer.pt")

        return write


def _write_critic_state(folder: Path, kl_coef: float) -> Path:
    """critic/state.json (the adaptive KL coefficient) in a checkpoint folder; returns critic/."""
    out = folder / CRITIC_DIR
    out.mkdir()
    (out / "state.json").write_text(json.dumps({"kl_coef": kl_coef}))
    return out


class SharedHeadGAE(CriticGAE):
    """critic.shared_backbone: GAE on the values of the policy's own value head (`ValueTokenScorer`).

    The values come with the batch's no-grad pass (so every row is scored before the update:
    `reads_old_logp`), and the policy update trains the head; this estimator only turns values and
    rewards into advantages and returns, and keeps the KL coefficient."""

    def __init__(self, cfg: Config, kl_coef: float, microbatches: MicroBatcher):
        super().__init__(cfg, None, None, kl_coef, microbatches)
        self.reads_old_logp = True

    def _predict(self, batch) -> torch.Tensor:
        return batch.values

    def update(self, _batch) -> dict[str, float]:
        """The value loss is the policy update's (train/value_loss, train/value_clip_frac)."""
        return self.metrics

    def state_writer(self) -> Callable[[Path], None]:
        return functools.partial(_write_critic_state, kl_coef=self.kl_coef)


class ValueTokenScorer(TokenScorer):
    """The policy's TokenScorer with a scalar value head on its backbone: one forward gives log-probs,
    entropy and V(s_t), all from the hidden state that predicts response token t."""
    has_values = True

    def __init__(self, causal_lm: torch.nn.Module, *args, saved: Path | None = None, **kwargs):
        super().__init__(causal_lm, *args, **kwargs)
        self.value_head = zero_value_head(causal_lm)
        if saved is not None:
            from safetensors.torch import load_file

            if not (saved / TRAINED_HEADS_FILE).is_file():
                raise ConfigError(f"{saved} has no {TRAINED_HEADS_FILE} (saved by a run without "
                                  f"critic.shared_backbone): resume it with its own critic settings, or start fresh")
            state = load_file(saved / TRAINED_HEADS_FILE)
            self.value_head.load_state_dict({k.removeprefix("value_head."): v for k, v in state.items()})

    def _forward(self, batch: MicroBatch, temperature: float, chunk_tokens: int):
        """(log-probs, entropy, values), each (n,); values in float32 or wider, like the log-probs."""
        hidden = self._response_hidden(batch)
        logp, entropy = self._token_logprobs(hidden, batch.target_ids, temperature, chunk_tokens)
        values = self.value_head(hidden).squeeze(-1)
        return logp, entropy, values.float() if values.dtype in (torch.float16, torch.bfloat16) else values


def build_critic_estimator(cfg: Config, resume_from: Path | None, microbatches: MicroBatcher,
                           load: Callable[..., torch.nn.Module], compute_dtype: torch.dtype,
                           autocast: torch.dtype | None) -> CriticGAE:
    """algorithm.advantage=gae: the critic (restored exactly from `resume_from`), its backbone loaded
    by `load(path, gradient_checkpointing=)` as the policy's is."""
    saved = resume_from / CRITIC_DIR if resume_from else None
    if saved is not None and not saved.is_dir():
        raise ConfigError(f"{resume_from} has no {CRITIC_DIR}/ folder (saved by a run without a critic): "
                          f"resume it with its own algorithm.advantage, or start a fresh run")
    kl_coef = json.loads((saved / "state.json").read_text())["kl_coef"] if saved else cfg.algorithm.kl_coef
    if cfg.critic.shared_backbone:
        return SharedHeadGAE(cfg, kl_coef, microbatches)
    c, info = cfg.critic, microbatches.info
    model = ValueModel(load(c.path or cfg.model.path, gradient_checkpointing=cfg.model.gradient_checkpointing),
                       autocast)
    if saved is not None:
        from safetensors.torch import load_file

        if not (saved / "model.safetensors").is_file():
            raise ConfigError(f"{saved} has no model.safetensors (saved by a critic.shared_backbone run): "
                              f"resume it with critic.shared_backbone=true, or start a fresh run")
        model.load_state_dict(load_file(saved / "model.safetensors"))
    model = shard(model, info, compute_dtype)
    optimizer, _ = build_adamw(model.parameters(), lr=c.lr, betas=cfg.train.betas, weight_decay=c.weight_decay,
                               implementation=cfg.train.adamw)
    if saved is not None and (saved / "optimizer.pt").is_file():
        dist.load_optimizer_state(model, optimizer, load_state_file(saved / "optimizer.pt"), info)
    return CriticGAE(cfg, model, optimizer, kl_coef, microbatches)
