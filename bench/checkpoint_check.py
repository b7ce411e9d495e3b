"""What checkpoints that prove themselves cost: the manifest written at save time and the check a
resume (or `justrl verify-checkpoint`) runs, at the DeepSeek stand-in's size.

The files are the stand-in's checkpoint at `--layers 2` (full width, fp32, untied head: 560M
parameters): model.safetensors 2.24 GB, optimizer.pt with AdamW's two moments 4.48 GB, and the small
files, 6.7 GB (6.3 GiB) in all, filled with random bytes: hashing costs the same whatever the bytes
are. Timed beside it, on the same files: reading them once (a resume reads the weights and the
optimizer state anyway), warm in the page cache and, where the OS lets us drop it, cold.

    python bench/checkpoint_check.py [--gib 6.3] [--dir /tmp]     # --smoke: 64 MiB, seconds
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from justrl_min.checkpoint import Checkpointer, verify_checkpoint, write_manifest  # noqa: E402

STANDIN_SHARES = {"model.safetensors": 1 / 3, "optimizer.pt": 2 / 3}  # weights, and two fp32 moments
SMALL_FILES = {"trainer_state.json": 2_000, "config.yaml": 3_000, "rng_rank0.pt": 8_000, "tokenizer.json": 11_000_000}


def write_files(folder: Path, total_bytes: int) -> None:
    chunk = os.urandom(16 * 2**20)
    for name, share in STANDIN_SHARES.items():
        remaining = int(total_bytes * share)
        with open(folder / name, "wb") as f:
            while remaining > 0:
                f.write(chunk[:min(remaining, len(chunk))])
                remaining -= len(chunk)
    for name, size in SMALL_FILES.items():
        (folder / name).write_bytes(os.urandom(min(size, total_bytes // 100)))


def read_all(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(64 * 2**20):
                    pass


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gib", type=float, default=6.3, help="checkpoint size in GiB (the stand-in's: 6.3)")
    p.add_argument("--dir", default=None, help="where to write it (default: a temporary folder)")
    p.add_argument("--smoke", action="store_true", help="64 MiB, seconds: the check CI runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.gib = 1 / 16
    base = Path(tempfile.mkdtemp(dir=args.dir, prefix="checkpoint_check-"))
    try:
        checkpointer = Checkpointer(base / "run", keep=2)
        total = int(args.gib * 2**30)
        save_s = timed(lambda: checkpointer.save(1, lambda tmp: write_files(tmp, total)))
        folder = checkpointer.latest()
        manifest_s = timed(lambda: write_manifest(folder))  # what save spent on the manifest
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        print(f"checkpoint: {size / 2**30:.2f} GiB in {sum(1 for f in folder.rglob('*') if f.is_file())} files, "
              f"{os.cpu_count()} cores")
        print(f"  save (write, manifest, fsync, publish) {save_s:6.2f} s, of which the manifest {manifest_s:.2f} s")
        rows = []
        for cache in ("warm", "cold"):
            if cache == "cold" and not drop_page_cache():
                print("  cold: not measured (dropping the page cache needs root)")
                continue
            started = time.perf_counter()
            problems = verify_checkpoint(folder)
            check_s = time.perf_counter() - started
            assert not problems, problems
            if cache == "cold":
                drop_page_cache()
            read_s = timed(lambda: read_all(folder))
            rows.append((cache, check_s, read_s))
        for cache, check_s, read_s in rows:
            print(f"  {cache:4s}: check {check_s:6.2f} s ({size / 2**30 / check_s:.2f} GiB/s)   "
                  f"reading the files once {read_s:6.2f} s   ratio {check_s / read_s:.2f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    from justrl_min.host_memory import ask_for_huge_pages

    ask_for_huge_pages()  # as the entry points do: before torch's first large allocation
    sys.exit(main())
