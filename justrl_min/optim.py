"""AdamW, in the fastest implementation torch has for where the parameters live.

torch's fused AdamW kernel (CPU and CUDA) updates every parameter in one pass; without it torch
steps tensor by tensor on CPU and with `foreach` kernels on CUDA, making several full-size
temporaries per step. At the stand-in's 560M fp32 parameters the unfused step measured 5.8-6.3 s on
this project's CPU against 0.60 s fused (issue 24; bench/real_width.py measures it again). Both
compute the same update up to float rounding (tests/core/test_optim.py states the tolerance).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.optimizer import _get_fused_kernels_supported_devices

ADAMW_IMPLEMENTATIONS = ("auto", "fused", "default")


def build_adamw(params: Iterable[torch.nn.Parameter], *, lr: float, betas: tuple[float, float],
                weight_decay: float, implementation: str = "auto") -> tuple[torch.optim.AdamW, str]:
    """AdamW over `params` and the name of the implementation it uses. auto: fused when every
    parameter is a floating-point tensor on a device with the fused kernel, else torch's default."""
    if implementation not in ADAMW_IMPLEMENTATIONS:
        raise ValueError(f"AdamW implementation {implementation!r}: must be one of {ADAMW_IMPLEMENTATIONS}")
    params = list(params)
    fused = implementation == "fused"
    if implementation == "auto":
        devices = set(_get_fused_kernels_supported_devices())
        fused = bool(params) and all(p.device.type in devices and p.is_floating_point() for p in params)
    optimizer = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay,
                                  **({"fused": True} if fused else {}))
    return optimizer, "fused" if fused else "default"
