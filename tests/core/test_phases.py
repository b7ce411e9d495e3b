"""Per-phase time and peak memory: each phase reads its own peak, not the process's all-time one."""

import time

import pytest
import torch

from justrl_min import dist
from justrl_min.phases import GiB, PhaseMeter, peak_rss_bytes, reset_peak_rss

SINGLE = dist.DistInfo(rank=0, world_size=1, local_rank=0)


@pytest.mark.skipif(not reset_peak_rss(), reason="this kernel cannot reset the peak resident memory")
def test_each_phase_has_its_own_peak():
    meter = PhaseMeter(torch.device("cpu"))
    with meter("big"):
        block = torch.ones(512 * 2**20 // 4)  # 512 MiB, touched
        del block
    with meter("small"):
        time.sleep(0.05)
    metrics = meter.metrics(SINGLE)
    assert metrics["memory/big_peak_gib"] - metrics["memory/small_peak_gib"] > 0.45
    assert metrics["time/small_s"] >= 0.05 and set(metrics) == {
        "time/big_s", "time/small_s", "memory/big_peak_gib", "memory/small_peak_gib"}
    assert peak_rss_bytes() < metrics["memory/big_peak_gib"] * GiB
