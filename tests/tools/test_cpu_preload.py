"""The CPU run's preloaded libraries: the command starts itself again once with tcmalloc in LD_PRELOAD,
and libiomp5 too when it samples with vLLM; never twice, never when switched off."""

import os
import subprocess
import sys

import pytest

from justrl_min.tools import cpu_preload


@pytest.fixture
def execs(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_preload.os, "execve", lambda exe, argv, env: calls.append((exe, argv, env)))
    monkeypatch.setattr(cpu_preload, "preload_libraries", lambda engine: ["/lib/libtcmalloc_minimal.so.4"] + (
        ["/v/libiomp5.so"] if engine == "vllm" else []))
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv(cpu_preload.SWITCH, raising=False)
    monkeypatch.delenv(cpu_preload.DECOMMIT, raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return calls


def test_a_cpu_run_restarts_with_tcmalloc_and_a_vllm_run_with_both_libraries_first(execs, monkeypatch):
    monkeypatch.setattr(sys, "orig_argv", ["python3", "train.py", "recipes/tiny_cpu.yaml"])
    cpu_preload.restart_with_preload("hf", sys.argv[1:])
    [(_, argv, env)] = execs
    assert argv == [sys.executable, "train.py", "recipes/tiny_cpu.yaml"]
    assert env["LD_PRELOAD"] == "/lib/libtcmalloc_minimal.so.4"
    execs.clear()
    cpu_preload.restart_with_preload("hf", ["tiny_cpu", "train.steps=1"])   # called from another program: never
    assert execs == []
    monkeypatch.setenv("LD_PRELOAD", "/mine.so")
    monkeypatch.setattr(sys, "orig_argv", ["python3", "train.py", "recipes/x.yaml", "rollout.engine=vllm"])
    cpu_preload.restart_with_preload("vllm", sys.argv[1:])
    [(exe, argv, env)] = execs
    assert exe == sys.executable and argv == [sys.executable, "train.py", "recipes/x.yaml", "rollout.engine=vllm"]
    assert env["LD_PRELOAD"] == "/lib/libtcmalloc_minimal.so.4:/v/libiomp5.so:/mine.so"
    assert cpu_preload.DECOMMIT not in env          # one process: tcmalloc keeps freed pages for reuse
    monkeypatch.setenv("WORLD_SIZE", "2")            # torchrun's ranks share the memory: each hands pages back
    cpu_preload.restart_with_preload("vllm", sys.argv[1:])
    assert execs[-1][2][cpu_preload.DECOMMIT] == "true"
    monkeypatch.setenv(cpu_preload.DECOMMIT, "false")  # the user's own choice stands
    cpu_preload.restart_with_preload("vllm", sys.argv[1:])
    assert execs[-1][2][cpu_preload.DECOMMIT] == "false"


def test_no_restart_when_preloaded_already_switched_off_or_missing(execs, monkeypatch, capsys):
    monkeypatch.setenv("LD_PRELOAD", "/x/libtcmalloc.so")
    cpu_preload.restart_with_preload("vllm", sys.argv[1:])
    monkeypatch.delenv("LD_PRELOAD")
    monkeypatch.setenv(cpu_preload.SWITCH, "0")
    cpu_preload.restart_with_preload("vllm", sys.argv[1:])
    monkeypatch.delenv(cpu_preload.SWITCH)
    monkeypatch.setattr(cpu_preload, "preload_libraries", lambda _engine: [])
    cpu_preload.restart_with_preload("vllm", sys.argv[1:])
    cpu_preload.restart_with_preload("hf", sys.argv[1:])
    monkeypatch.setattr(cpu_preload.sys, "platform", "darwin")    # no LD_PRELOAD there
    monkeypatch.setattr(cpu_preload, "preload_libraries", lambda _engine: ["/lib/libtcmalloc_minimal.so.4"])
    cpu_preload.restart_with_preload("hf", sys.argv[1:])
    assert execs == []
    out = capsys.readouterr().out
    assert "not both found" in out and "libtcmalloc was not found" in out


def test_the_restarted_process_has_the_libraries_loaded():
    if not cpu_preload.preload_libraries("vllm"):
        pytest.skip("libtcmalloc (Debian's libtcmalloc-minimal4) or libiomp5 (intel-openmp) is not installed")
    probe = ("import os; print('LD_PRELOAD=' + os.environ.get('LD_PRELOAD', ''), flush=True); "
             "from justrl_min.tools.cpu_preload import restart_with_preload; restart_with_preload('vllm', []); "
             "print('tcmalloc mapped:', 'libtcmalloc' in open('/proc/self/maps').read()); "
             "import re, torch\nfor _ in range(2): blocks = [torch.ones(2**28), torch.ones(2**27)]; del blocks\n"
             "print('resident after free:', int(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read())[1]))")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", cpu_preload.SWITCH, cpu_preload.DECOMMIT)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True).stdout
    lines = out.splitlines()
    assert lines[0] == "LD_PRELOAD=" and lines[1].startswith("CPU: restarting with LD_PRELOAD=")
    assert "libtcmalloc" in lines[2] and "libiomp5" in lines[2]   # the second start
    assert lines[-2] == "tcmalloc mapped: True"
    # tcmalloc reused the 1.5 GiB the first round freed for the second: resident once, not twice
    assert 1_400_000 < int(lines[-1].split(": ")[1]) < 2_300_000, lines[-1]  # kB
