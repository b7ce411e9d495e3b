"""Transparent huge pages for large host tensors, so that CPU training does not fault them in 4 KiB
at a time.

torch maps every host tensor above glibc's mmap threshold afresh and unmaps it on free, and a CPU step
at real width allocates and frees the same large buffers every micro-batch (the embedding's dense
[vocab, hidden] gradient, the compute-dtype copies of the embedding and LM head, the head's weight
gradient: 933 MB each at 151,936 x 1536 in fp32). The kernel then takes one page fault per 4 KiB
page. torch's own switch THP_MEM_ALLOC_ENABLE=1 aligns allocations of 2 MiB and more to 2 MiB and
asks for huge pages (madvise), 512 times fewer faults: the stand-in's update measured ~25% faster
with it (bench/real_width.py). torch reads the switch at its first large allocation, so the entry points
(`justrl`, `python train.py`, `python eval.py`) set it before any, unless the environment already says
(THP_MEM_ALLOC_ENABLE=0 turns it off). Importing the package changes no environment variable.
"""

from __future__ import annotations

import os
from pathlib import Path

SWITCH = "THP_MEM_ALLOC_ENABLE"
KERNEL_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def ask_for_huge_pages() -> None:
    os.environ.setdefault(SWITCH, "1")


def huge_pages_status() -> str:
    """One line for the run's log: whether large host tensors get huge pages, and why not."""
    if os.environ.get(SWITCH) != "1":
        return f"host memory: 4 KiB pages ({SWITCH}={os.environ.get(SWITCH, '')!r})"
    try:
        mode = KERNEL_MODE.read_text().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return f"host memory: {SWITCH}=1, but this kernel does not say whether it has transparent huge pages"
    if mode == "never":
        return f"host memory: {SWITCH}=1, but transparent huge pages are off in this kernel ({KERNEL_MODE})"
    return f"host memory: transparent huge pages for tensors of 2 MiB and more (kernel mode {mode})"
