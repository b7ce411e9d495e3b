"""`train.replay_steps = k`: each step also trains on the responses of the k steps before it.

The JustRL write-up's "online vs offline RL" section describes reusing sampled experience for several
updates with importance sampling correcting for the policy having moved; LLaMA-Factory's PPO has
`ppo_buffer_size`. Here a replayed response keeps what it had when it was sampled and scored: its
behaviour log-probs (the sampling policy's, as the trainer computed them: the step's old log-probs)
and its group advantage. When it is replayed, the current policy's log-probs are taken before the
update (the proximal policy), the PPO ratio and its clip are against those, and each token's loss is
weighted by min(pi_proximal / pi_behaviour, train.replay_is_cap): the decoupled PPO objective of
Hilton et al. (2021, "Batch size-invariance for policy optimization"), through the same per-token
weights as `rollout.tis_cap`. Fresh rows weigh 1 (or their TIS weight). A step's fresh responses
come first in the batch, so the update's first mini-batch still gives them their old log-probs.

Memory (computed, not measured): k steps of one rank's responses, each with (R, T) float32 behaviour
log-probs and mask, 8 bytes a token slot, and its prompt and response token ids as Python lists, about
36 bytes a token. The paper's recipe on 8 ranks (256 responses per rank, up to 15,360 tokens) holds at
most 31 MB of tensors and about 140 MB of ids a step and rank; the tiny recipe under 0.3 MB. The
buffer is saved in every checkpoint (`replay/rank<r>.safetensors` and `.json`, no pickle), so a
resumed run replays what the uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch

from justrl_min import algo, dist
from justrl_min.errors import ConfigError

REPLAY_DIR = "replay"


@dataclass
class KeptStep:
    """One step's responses on this rank, as they were sampled and scored."""
    step: int
    prompts: list[list[int]]
    responses: list[list[int]]
    mask: torch.Tensor             # (R, T), the loss mask (overlong filtering applied)
    behaviour_logp: torch.Tensor   # (R, T), the sampling policy's log-probs
    advantages: torch.Tensor       # (R,)


def _padded(t: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, width - t.shape[1]))


class ReplayBuffer:
    """The last `steps` steps' responses; `extend` adds them to a step's batch, `remember` keeps its own."""

    def __init__(self, steps: int, is_cap: float, info: dist.DistInfo, kept: list[KeptStep] = ()):
        self.is_cap, self.info = is_cap, info
        self.kept: deque[KeptStep] = deque(kept, maxlen=steps)
        self.last: dict[str, float] = {}

    def extend(self, batch, microbatches, scorer, reference=None):
        """`batch` (the step's fresh rows) followed by every kept row, with its proximal log-probs as old
        log-probs, its truncated importance weight, its stored advantage (and reference log-probs)."""
        if not self.kept:
            self.last = {"replay/token_share": 0.0}
            return batch
        prompts = [p for kept in self.kept for p in kept.prompts]
        responses = [r for kept in self.kept for r in kept.responses]
        width = max(batch.mask.shape[1], *(kept.mask.shape[1] for kept in self.kept))
        mask = torch.cat([_padded(kept.mask, width) for kept in self.kept])
        behaviour = torch.cat([_padded(kept.behaviour_logp, width) for kept in self.kept])
        proximal = torch.zeros_like(mask)
        with torch.no_grad():
            microbatches.score(scorer, prompts, responses, list(range(len(responses))), proximal)
        weights = algo.truncated_is_weights(proximal, behaviour, self.is_cap) * mask
        ref_logp = None
        if batch.ref_logp is not None:
            ref_logp = torch.zeros_like(mask)
            with torch.no_grad():
                microbatches.score(reference, prompts, responses, list(range(len(responses))), ref_logp)
            ref_logp = torch.cat([_padded(batch.ref_logp, width), ref_logp])
        fresh_weights = batch.tis_weights if batch.tis_weights is not None else batch.mask
        replayed, fresh = mask.sum().item(), batch.mask.sum().item()
        self.last = {"replay/token_share": replayed / max(replayed + fresh, 1.0),
                     "replay/is_weight_mean": algo.masked_sum(weights, mask).item() / max(replayed, 1.0),
                     "replay/is_capped_frac": algo.masked_sum(
                         (proximal - behaviour >= torch.log(torch.tensor(self.is_cap))).float(), mask).item()
                     / max(replayed, 1.0)}
        return dataclasses.replace(
            batch, prompts=batch.prompts + prompts, responses=batch.responses + responses,
            mask=torch.cat([_padded(batch.mask, width), mask]),
            old_logp=torch.cat([_padded(batch.old_logp, width), proximal]),
            entropy=torch.cat([_padded(batch.entropy, width), torch.zeros_like(mask)]),
            ref_logp=ref_logp, tis_weights=torch.cat([_padded(fresh_weights, width), weights]),
            rollout_logp=None, advantages=torch.cat([batch.advantages, torch.cat([k.advantages for k in self.kept])]))

    def remember(self, step: int, fresh, updated):
        """Keep the step's fresh rows with their behaviour log-probs (the update gave the first mini-batch
        its own); returns `fresh` with the old log-probs and entropy the update completed."""
        rows, width = len(fresh.responses), fresh.mask.shape[1]
        done = dataclasses.replace(fresh, old_logp=updated.old_logp[:rows, :width],
                                   entropy=updated.entropy[:rows, :width], fresh_rows=0)
        self.kept.append(KeptStep(step, fresh.prompts, fresh.responses, fresh.mask.clone(), done.old_logp.clone(),
                                  fresh.advantages.clone()))
        return done

    def metrics(self) -> dict[str, float]:
        """This step's replay figures, over all ranks' tokens (each rank's share weighs alike)."""
        return {key: dist.sum_scalar(value, self.info) / self.info.world_size for key, value in self.last.items()}

    # ---- checkpoints: tensors in safetensors, token ids and steps in JSON

    def state_writer(self):
        """Gather every rank's buffer (a collective); the returned function writes them on rank 0."""
        states = _gather(self._state(), self.info)

        def write(folder: Path) -> None:
            from safetensors.torch import save_file

            out = folder / REPLAY_DIR
            out.mkdir()
            for rank, (tensors, rows) in enumerate(states):
                save_file(tensors, out / f"rank{rank}.safetensors")
                (out / f"rank{rank}.json").write_text(json.dumps(rows))

        return write

    def _state(self) -> tuple[dict[str, torch.Tensor], list[dict]]:
        tensors = {f"{name}_{i}": getattr(kept, name).contiguous() for i, kept in enumerate(self.kept)
                   for name in ("mask", "behaviour_logp", "advantages")}
        rows = [{"step": kept.step, "prompts": kept.prompts, "responses": kept.responses} for kept in self.kept]
        return tensors, rows


def _gather(state, info: dist.DistInfo) -> list:
    if not info.enabled:
        return [state]
    gathered = [None] * info.world_size
    torch.distributed.all_gather_object(gathered, state)
    return gathered


def load_buffer(folder: Path | None, steps: int, is_cap: float, info: dist.DistInfo) -> ReplayBuffer:
    """This rank's buffer from a checkpoint folder (empty without one)."""
    if folder is None:
        return ReplayBuffer(steps, is_cap, info)
    from safetensors.torch import load_file

    tensors_file, rows_file = (folder / REPLAY_DIR / f"rank{info.rank}{ext}" for ext in (".safetensors", ".json"))
    if not rows_file.is_file():
        raise ConfigError(f"{folder}: no {REPLAY_DIR}/{rows_file.name}: the checkpoint was written without "
                          f"train.replay_steps or by another number of ranks; resume it as it was run")
    tensors, rows = load_file(tensors_file), json.loads(rows_file.read_text())
    kept = [KeptStep(row["step"], row["prompts"], row["responses"], tensors[f"mask_{i}"],
                     tensors[f"behaviour_logp_{i}"], tensors[f"advantages_{i}"]) for i, row in enumerate(rows)]
    return ReplayBuffer(steps, is_cap, info, kept[-steps:])
