"""One owner per run directory: a lock held for the life of a run.

`python train.py` twice into one run directory (a second terminal, a scheduler's retry) would
interleave two runs' metrics and overwrite each other's checkpoints. The first run holds an
exclusive `fcntl.flock` on `<run_dir>/.lock`; a second launch exits at once, naming the holder
(pid, host, since when, its command) and how to start a separate run. The operating system
releases the lock when its process ends, however it ends, so a crashed run never blocks the
next one; the file itself stays (what it says is read only while someone holds the lock).

Under torchrun rank 0 takes the lock and the other ranks learn the outcome (`held`). flock works
on local file systems and on most network ones (NFS v4 maps it to byte-range locks); on one that
ignores it, two launches would not be told apart. Readers of a run (`eval.py` into its folder,
`justrl doctor`, `justrl curves`) take no lock.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from justrl_min import dist
from justrl_min.errors import ConfigError

LOCK_FILE = ".lock"


class RunDirectoryBusy(ConfigError):
    """Another live process holds the run directory."""


class RunLock:
    def __init__(self, run_dir: Path):
        self.run_dir, self.fd = Path(run_dir), None

    def acquire(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunDirectoryBusy(
                f"run directory {self.run_dir} is in use by {holder}. Wait for that run to end (or stop it: "
                f"it checkpoints and exits on SIGTERM), or start a separate run with another run.name "
                f"(e.g. run.name={self.run_dir.name}-2)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                                  "command": " ".join(sys.argv)}).encode(), 0)
        os.fsync(fd)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 65536, 0).decode() or "{}")
        return (f"pid {holder['pid']} on host {holder['host']} since {holder['since']} "
                f"(command: {holder['command']})")
    except (ValueError, KeyError, UnicodeDecodeError):  # taken a moment ago, not yet described
        return "another process (it has not written its pid yet)"


@contextlib.contextmanager
def held(run_dir: Path, info: dist.DistInfo) -> Iterator[None]:
    """The run directory's lock for the body's duration: rank 0 takes it, every rank raises
    RunDirectoryBusy if it could not."""
    lock = RunLock(run_dir)
    dist.decided_on_main(lock.acquire, info)
    try:
        yield
    finally:
        lock.release()
