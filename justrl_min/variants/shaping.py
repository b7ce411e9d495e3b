"""Length shaping of the sequence reward, as pure functions of tensors (no config objects, no I/O).

Off in the JustRL recipe; the paper's ablations (Fig. 3) turn the first one on.

- **Overlong penalty** (DAPO, arXiv 2503.14476, Eq. 13, "soft overlong punishment"), in the form
  verl 0.4.0's `DAPORewardManager` computes it and JustRL's ablation ran it:
  ``-factor * max(0, |y| - (L_max - buffer)) / buffer``, added to the correctness reward of every
  response, right or wrong. ``|y|`` counts the response's tokens *including* the EOS token when
  generation stopped on it (verl sums the response's attention mask, and the EOS is in it).
  With L_max = 15,360 and buffer = 4,096 the ramp runs from 0 at 11,264 tokens to -factor at
  15,360.
  Beyond L_max DAPO's Eq. 13 gives -1; verl's formula would keep falling, but in verl a response
  is cut at L_max, so |y| > L_max never reaches it. Here the ramp is **clamped at -factor** beyond
  L_max: the same value as verl on every length verl can produce, DAPO's -1 beyond it (factor 1),
  and a bounded penalty if a caller passes a limit below the rollout's.
- **Linear length penalty**: ``-coef * max(0, |y| - target)``, the form users try first.
- **Overlong filtering** (DAPO section 3.4; TRL's ``mask_truncated_completions``) is a loss mask,
  not a reward: ``algo.without_truncated`` (``train.mask_truncated``).

Shapes: N responses; ``lengths`` is (N,) integer token counts.
"""

from __future__ import annotations

import torch


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int, factor: float) -> torch.Tensor:
    """(N,) float32 penalties <= 0: 0 up to ``max_length - buffer`` tokens, then linear down to
    ``-factor`` at ``max_length``, and ``-factor`` beyond it. ``buffer == 0`` turns it off (zeros)."""
    if buffer < 0 or buffer > max_length:
        raise ValueError(f"overlong buffer must be in [0, max_length={max_length}], got {buffer}")
    if buffer == 0:
        return torch.zeros(lengths.shape, dtype=torch.float32)
    excess = lengths.to(torch.float64) - (max_length - buffer)  # float64: exact for any token count
    return (-factor * (excess / buffer).clamp(0.0, 1.0)).to(torch.float32)


def linear_length_penalty(lengths: torch.Tensor, target: int, coef: float) -> torch.Tensor:
    """(N,) float32 penalties ``-coef * max(0, length - target)``; ``coef == 0`` turns it off."""
    excess = (lengths.to(torch.float64) - target).clamp(min=0.0)
    return (-coef * excess).to(torch.float32)
