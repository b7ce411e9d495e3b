"""Check checkpoints against their manifests, as a resume does: `justrl verify-checkpoint PATH ...`.

    justrl verify-checkpoint runs/x                       # every checkpoint of the run, newest first
    justrl verify-checkpoint runs/x/checkpoints/step_40   # one checkpoint

Each checkpoint's files are compared with what its `manifest.json` recorded when it was saved
(sizes, then SHA-256 per 64 MiB block on every core); the time the check took is printed. Exit 0
when every checkpoint checked passes, 1 when one fails (a run directory also says which checkpoint
a resume would take), 2 when PATH is not a checkpoint or a run directory.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from justrl_min.checkpoint import COMPLETE_MARKER, MANIFEST, Checkpointer, verify_checkpoint


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="justrl verify-checkpoint", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", metavar="PATH", help="a checkpoint folder or a run directory")
    args = p.parse_args(argv)
    failed = 0
    for path in map(Path, args.paths):
        run = Checkpointer(path, keep=1)
        if run.folder.is_dir():
            folders = list(reversed(run.all_steps()))
        elif (path / MANIFEST).is_file() or (path / COMPLETE_MARKER).is_file() or path.parent.name == "checkpoints":
            folders = [path]
        else:
            print(f"verify-checkpoint: error: {path} is neither a checkpoint folder nor a run directory "
                  "(with checkpoints/)", file=sys.stderr)
            return 2
        if not folders:
            print(f"{path}: no checkpoints")
            failed += 1
        for folder in folders:
            started = time.monotonic()
            problems = verify_checkpoint(folder)
            seconds = time.monotonic() - started
            size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0
            print(f"{folder}: {'FAILS' if problems else 'ok'} ({size / 2**30:.2f} GiB checked in {seconds:.1f} s)")
            for problem in problems:
                print(f"  - {problem}")
            failed += bool(problems)
        if run.folder.is_dir() and failed:
            newest, _ = run.newest_verified()
            print(f"{path}: a resume would start from {newest or 'nothing (no checkpoint passes)'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
