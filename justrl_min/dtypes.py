"""Compute dtypes this machine runs fast, measured at start-up rather than assumed.

A CPU without bf16 matrix instructions multiplies bf16 matrices hundreds of times slower than fp32
(this project's machines: 0.3 against 128 GFLOP/s on 2 threads), so a GPU recipe (`compute_dtype:
bfloat16`) rehearsed on CPU would crawl without a word. On CPU the trainer and the engines ask
`fast_cpu_dtype` once, and compute in float32 instead when the recipe's dtype is that slow here.
"""

from __future__ import annotations

import functools
import time

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


@functools.lru_cache(maxsize=None)
def cpu_matmul_gflops(name: str, size: int = 512, budget_s: float = 0.1) -> float:
    """GFLOP/s of a size x size matmul in dtype `name` on one CPU thread: the fastest of the calls
    that fit in `budget_s` (at least two), so that other work on the machine barely moves it."""
    a, b = torch.randn(size, size).to(DTYPES[name]), torch.randn(size, size).to(DTYPES[name])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a @ b
        fastest, start = float("inf"), time.perf_counter()
        for call in range(1000):
            if call >= 2 and time.perf_counter() - start > budget_s:
                break
            began = time.perf_counter()
            a @ b
            fastest = min(fastest, time.perf_counter() - began)
    finally:
        torch.set_num_threads(threads)
    return 2 * size**3 / fastest / 1e9


def fast_cpu_dtype(name: str, slowdown_limit: float = 4.0) -> tuple[str, str | None]:
    """`name` if its matmuls run within `slowdown_limit` x fp32's time on this CPU, else float32 and a
    message saying why (float64 is kept: it is asked for on purpose, for exactness checks)."""
    if name in ("float32", "float64"):
        return name, None
    fast, slow = cpu_matmul_gflops("float32"), cpu_matmul_gflops(name)
    if fast <= slowdown_limit * slow:
        return name, None
    return "float32", (f"{name} matmuls run at {slow:.1f} GFLOP/s on this CPU against {fast:.0f} in float32 "
                       f"({fast / slow:.0f}x slower): computing in float32 instead "
                       "(model.cpu_float32_fallback=false keeps it)")
