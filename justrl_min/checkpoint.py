"""Atomic checkpoints and exact resume.

A checkpoint is written into `checkpoints/.tmp-step_N`, every file fsynced, then renamed to
`checkpoints/step_N`; only then does the `latest` symlink move (itself replaced atomically), and
only then are old checkpoints pruned. A crash at any point leaves `latest` pointing at a complete
checkpoint. `checkpoints/latest` is itself a Hugging Face model folder (`from_pretrained` works).

A checkpoint proves itself: its last file, `manifest.json` (written atomically, before the folder
is published), records every other file's size and the SHA-256 of each 64 MiB block. A checkpoint
without one is incomplete. `verify_checkpoint` checks a folder against it (sizes first, then the
blocks' digests on every core); a resume takes the newest checkpoint that passes and says why it
skipped any newer ones; `justrl verify-checkpoint`, `justrl export` and `justrl eval --model`
run the same check.

Optimizer and RNG states are read back with `torch.load(weights_only=True)` (`load_state_file`):
tensors, numbers, strings and containers, plus the numpy array of numpy's RNG state, and nothing
else. A run directory made by someone else cannot run code on resume.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import random
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from justrl_min import dist
from justrl_min.config import Config, ConfigError, save_config
from justrl_min.model import POLICY_PREFIX
from justrl_min.run_lock import LOCK_FILE

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

LATEST = "latest"
COMPLETE_MARKER = "trainer_state.json"
"""What every checkpoint writer must produce (the training state a resume reads)."""
MANIFEST = "manifest.json"
MANIFEST_BLOCK_BYTES = 64 * 2**20
"""Files are hashed in blocks of this size, so that one large file is checked on every core."""
TRAINED_HEADS_FILE = "value_head.safetensors"
"""The trained module's weights beside the policy (critic.shared_backbone's value head), kept out
of the Hugging Face folder so that `latest` stays a plain model folder."""
SAFE_GLOBALS = (np.ndarray, np.dtype, _reconstruct, type(np.dtype(np.uint32)))
"""What a state file may name beyond torch's own weights-only set: numpy's RNG state is a uint32
array, which pickles through these."""


class UnsafeCheckpointError(ConfigError):
    """A state file that names code to run when unpickled: refused, nothing from it executed."""


def load_state_file(path: Path):
    """torch.load with weights_only=True and SAFE_GLOBALS allowed; anything else is refused.

    Memory-mapped: every rank of a resumed FSDP run reads the whole optimizer state (twice the fp32
    weights) to take its shard; mapped, those pages are the file's, shared by the ranks and reclaimable,
    not each rank's own (two ranks of the 2-layer stand-in were killed for memory resuming without)."""
    with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
        try:
            return torch.load(path, weights_only=True, mmap=True)
        except pickle.UnpicklingError:
            allowed = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS}
            named = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - allowed)
            raise UnsafeCheckpointError(
                f"{path}: refused to load: it names {', '.join(named) or 'objects'} to call while unpickling, "
                f"which a training state never holds (allowed: tensors, numbers, strings, containers, numpy "
                f"arrays). Nothing in it was run. Resume only from checkpoints this trainer wrote.") from None


DISK_FULL_BYTES = 256 * 2**20
"""A checkpoint write that fails with less than this free is reported as a full disk."""


class Checkpointer:
    def __init__(self, run_dir: Path, keep: int):
        self.folder = Path(run_dir) / "checkpoints"
        self.keep = keep

    def save(self, step: int, write: Callable[[Path], None]) -> Path:
        """Call `write(tmp_folder)` to fill a checkpoint, then publish it atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"step_{step}"
        tmp = self.folder / f".tmp-step_{step}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            write(tmp)
            if not (tmp / COMPLETE_MARKER).is_file():
                raise RuntimeError(f"checkpoint writer did not produce {COMPLETE_MARKER}")
            write_manifest(tmp)
            _fsync_tree(tmp)
            if final.exists():  # re-saving the same step (e.g. a stop right after a periodic save)
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException as error:
            free = shutil.disk_usage(self.folder).free
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(error, Exception) and free < DISK_FULL_BYTES:  # torch.save says only "unexpected pos"
                raise OSError(errno.ENOSPC, f"the checkpoint of step {step} could not be written to {self.folder}: "
                              f"the disk is full ({free / 2**20:.0f} MiB were left); the last complete checkpoint "
                              f"is {self.latest() or 'none'}. Free space or lower checkpoint.keep, then resume "
                              "with run.resume=true") from error
            raise
        link_tmp = self.folder / f".{LATEST}.tmp"
        if link_tmp.is_symlink() or link_tmp.exists():
            link_tmp.unlink()
        link_tmp.symlink_to(final.name)
        os.replace(link_tmp, self.folder / LATEST)
        _fsync_dir(self.folder)
        self._prune()
        return final

    def latest(self) -> Path | None:
        """The newest checkpoint with a manifest (not checked against it: `newest_verified` does that)."""
        link = self.folder / LATEST
        if link.is_symlink() or link.exists():
            target = link.resolve()
            if (target / MANIFEST).is_file():
                return target
        # `latest` missing or dangling: fall back to the newest complete step folder.
        complete = [p for p in self.all_steps() if (p / MANIFEST).is_file()]
        return complete[-1] if complete else None

    def newest_verified(self) -> tuple[Path | None, list[str]]:
        """The newest checkpoint that passes `verify_checkpoint`, and why each newer one was skipped."""
        skipped = []
        link = self.folder / LATEST
        if link.is_symlink() and not link.resolve().is_dir():
            skipped.append(f"{link} points at {os.readlink(link)}, which does not exist")
        for folder in reversed(self.all_steps()):
            problems = verify_checkpoint(folder)
            if not problems:
                return folder, skipped
            skipped.append(f"{folder} fails its check: {'; '.join(problems)}")
        return None, skipped

    def all_steps(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        steps = [p for p in self.folder.glob("step_*") if p.is_dir() and p.name[5:].isdigit()]
        return sorted(steps, key=lambda p: int(p.name[5:]))

    def _prune(self) -> None:
        for old in self.all_steps()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def _block_digests(folder: Path, sizes: dict[str, int]) -> dict[str, list[str]]:
    """Each file's SHA-256 per MANIFEST_BLOCK_BYTES block, hashed on every core (hashlib releases the GIL)."""
    blocks = [(name, offset) for name, size in sizes.items() for offset in range(0, max(size, 1), MANIFEST_BLOCK_BYTES)]

    def digest(block: tuple[str, int]) -> str:
        with open(folder / block[0], "rb") as f:
            f.seek(block[1])
            return hashlib.sha256(f.read(MANIFEST_BLOCK_BYTES)).hexdigest()

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        digests = list(pool.map(digest, blocks))
    out: dict[str, list[str]] = {name: [] for name in sizes}
    for (name, _), value in zip(blocks, digests):
        out[name].append(value)
    return out


def write_manifest(folder: Path) -> None:
    """Record every file's size and block digests in `folder/manifest.json`, written last and atomically."""
    sizes = {name: (folder / name).stat().st_size for name in _files(folder)}
    digests = _block_digests(folder, sizes)
    manifest = {"format": 1, "block_bytes": MANIFEST_BLOCK_BYTES,
                "files": {name: {"bytes": sizes[name], "sha256": digests[name]} for name in sizes}}
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, folder / MANIFEST)


def verify_checkpoint(folder: Path) -> list[str]:
    """What is wrong with the checkpoint `folder` against its manifest, one line per file ([] if nothing):
    missing, truncated or grown, or changed since it was saved; or no readable manifest at all."""
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder} does not exist"]
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        recorded, block_bytes = manifest["files"], manifest["block_bytes"]
    except FileNotFoundError:
        return [f"no {MANIFEST}: an incomplete checkpoint (its save was interrupted, or it predates manifests)"]
    except (ValueError, KeyError, TypeError) as e:
        return [f"{MANIFEST} is unreadable ({type(e).__name__}: {e})"]
    if block_bytes != MANIFEST_BLOCK_BYTES:
        return [f"{MANIFEST} hashes blocks of {block_bytes} bytes; this version reads {MANIFEST_BLOCK_BYTES}"]
    problems = []
    for name, entry in recorded.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != entry["bytes"]:
            size = path.stat().st_size
            problems.append(f"{name} has {size:,} bytes where {entry['bytes']:,} were saved "
                            f"({'truncated' if size < entry['bytes'] else 'grown'})")
    if problems:
        return problems  # the digests of a file of the wrong size say nothing more
    digests = _block_digests(folder, {name: entry["bytes"] for name, entry in recorded.items()})
    for name, entry in recorded.items():
        changed = [k for k, (a, b) in enumerate(zip(digests[name], entry["sha256"])) if a != b]
        if changed:
            problems.append(f"{name} changed since it was saved (its bytes from {changed[0] * block_bytes:,} "
                            "differ from the recorded checksum)")
    return problems


def checked_model_folder(path: str | Path, log: Callable[[str], None] = print) -> str:
    """`path` as a model to load (`justrl export`, `justrl eval --model`): a trainer checkpoint is
    checked against its manifest first (a ConfigError names the file and why), a run directory stands
    for its newest checkpoint that passes; anything else (a plain model folder, a hub id, `tiny`) is
    returned as it is."""
    folder = Path(path)
    if (folder / "checkpoints").is_dir():  # a run directory
        found, skipped = Checkpointer(folder, keep=1).newest_verified()
        reasons = "".join(f"\n  - {reason}" for reason in skipped)
        if found is None:
            raise ConfigError(f"{folder}: no checkpoint passes its check{reasons or ' (there is none)'}")
        if skipped:
            log(f"{folder}: using {found.name}, the newest checkpoint that passes its check; skipped:{reasons}")
        return str(found)
    if (folder / MANIFEST).is_file() or (folder / COMPLETE_MARKER).is_file():
        problems = verify_checkpoint(folder)
        if problems:
            raise ConfigError(f"{path}: this checkpoint fails its check: {'; '.join(problems)}. "
                              f"`justrl verify-checkpoint {folder.parent.parent}` lists the run's good ones")
        return str(folder.resolve())
    return str(path)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def estimate_checkpoint_bytes(model: torch.nn.Module, with_optimizer: bool) -> int:
    """Trained weights in their dtype plus AdamW's two fp32 moments (and step) per parameter. Only the
    trainable ones: a checkpoint holds every weight in full fine-tuning, only the adapters under LoRA."""
    trained = [p for p in model.parameters() if p.requires_grad]
    params = sum(p.numel() for p in trained)
    weights = sum(p.numel() * p.element_size() for p in trained)
    return weights + (8 * params if with_optimizer else 0)


def check_disk(run_dir: Path, checkpoint_bytes: int, keep: int) -> None:
    """Writable, with room for `keep` checkpoints and the one being written (the oldest goes after it)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    probe = run_dir / ".write_test"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"run directory {run_dir} is not writable: {e}") from None
    free, needed = shutil.disk_usage(run_dir).free, (keep + 1) * checkpoint_bytes
    if free < needed:
        raise ConfigError(f"run directory {run_dir} has {free / 2**30:.2f} GiB free; checkpoint.keep={keep} "
                          f"checkpoints and the one being written need about {needed / 2**30:.2f} GiB "
                          f"({checkpoint_bytes / 2**30:.2f} GiB each): free space, lower checkpoint.keep or set "
                          "run.output_dir")


# --------------------------------------------------------------------------------------------------
# Training state


def resume_point(cfg: Config, checkpointer: Checkpointer, log: Callable[[str], None] = print) -> Path | None:
    """The checkpoint to resume from, per `run.resume`: the newest that passes its check, saying why
    any newer one was skipped; clears or refuses a used run directory."""
    if cfg.run.resume != "false":
        folder, skipped = checkpointer.newest_verified()
        if folder is None and skipped:
            reasons = "".join(f"\n  - {reason}" for reason in skipped)
            raise ConfigError(f"run.resume={cfg.run.resume}: no checkpoint in {checkpointer.folder} passes its "
                              f"check{reasons}\nStart afresh with run.resume=false run.overwrite=true, or set "
                              "run.name to start a separate run")
        if folder is None and cfg.run.resume == "true":
            raise ConfigError(f"run.resume=true but {checkpointer.folder} has no complete checkpoint")
        for reason in skipped:
            log(f"resume: skipped {reason}")
        if skipped:
            log(f"resume: from {folder}, the newest checkpoint that passes its check")
        return folder
    if cfg.run.resume == "false":
        run_dir = cfg.run_dir
        # The run's own lock file stays: this process holds it (run_lock).
        contents = [p for p in run_dir.iterdir() if p.name != LOCK_FILE] if run_dir.exists() else []
        if contents and not cfg.run.overwrite:
            raise ConfigError(f"run directory {run_dir} is not empty and run.resume=false: pick another "
                              f"run.name, or add run.overwrite=true to replace it")
        for path in contents:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        return None


@dataclass
class TrainingState:
    """What a checkpoint holds besides the config: the trained module (FSDP-sharded under torchrun),
    saved by `tuning` (a Hugging Face folder of the policy, or a PEFT folder of its LoRA adapters;
    plus TRAINED_HEADS_FILE when the scorer carries a value head); the optimizer, schedule, sampler;
    the skipped-step count."""
    scorer: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: Any
    tuning: Any
    """`model.FullFineTuning` or `lora.LoraFineTuning`: `save_policy(folder, full model state)`."""
    tokenizer: Any
    skipped_total: int = 0


def restore_training_state(folder: Path, training: TrainingState, info: dist.DistInfo) -> int:
    """Optimizer, LR schedule, sampler position, skipped count and this rank's RNG states; returns the step."""
    scorer, optimizer = training.scorer, training.optimizer
    state = json.loads((folder / "trainer_state.json").read_text())
    training.sampler.load_state_dict(state["sampler"])
    training.scheduler.load_state_dict(state["scheduler"])
    training.skipped_total = state["skipped_steps"]
    if (folder / "optimizer.pt").is_file():
        dist.load_optimizer_state(scorer, optimizer, load_state_file(folder / "optimizer.pt"), info)
    set_rng_state(load_state_file(folder / f"rng_rank{info.rank}.pt"))
    return state["step"]


def save_training_state(checkpointer: Checkpointer, step: int, cfg: Config, training: TrainingState,
                        info: dist.DistInfo, write_extra: Callable[[Path], None] | None = None) -> None:
    """Gather full states (a collective under FSDP) and let rank 0 publish one checkpoint atomically.
    Each rank's RNG state travels through a staging folder, so the run directory must be on a
    file system every rank sees (as multi-node checkpointing needs anyway). `write_extra(folder)`
    adds state gathered beforehand on every rank (the critic's) into the same atomic checkpoint."""
    t = training
    model_state = dist.full_model_state(t.scorer, info)
    optimizer_state = dist.full_optimizer_state(t.scorer, t.optimizer, info) if cfg.checkpoint.save_optimizer else None
    rank_dir = checkpointer.folder / f".rng-step_{step}"
    rank_dir.mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), rank_dir / f"rng_rank{info.rank}.pt")
    dist.barrier(info)
    if info.is_main:
        def write(folder: Path) -> None:
            t.tuning.save_policy(folder, {k: v for k, v in model_state.items() if k.startswith(POLICY_PREFIX)})
            heads = {k: v.contiguous() for k, v in model_state.items() if not k.startswith(POLICY_PREFIX)}
            if heads:
                from safetensors.torch import save_file

                save_file(heads, folder / TRAINED_HEADS_FILE)
            t.tokenizer.save_pretrained(folder)
            if optimizer_state is not None:
                torch.save(optimizer_state, folder / "optimizer.pt")
            for f in rank_dir.iterdir():
                os.replace(f, folder / f.name)
            save_config(cfg, folder / "config.yaml")
            if write_extra is not None:
                write_extra(folder)
            (folder / "trainer_state.json").write_text(json.dumps({
                "step": step, "skipped_steps": t.skipped_total, "sampler": t.sampler.state_dict(),
                "scheduler": t.scheduler.state_dict()}, indent=1))

        checkpointer.save(step, write)
        rank_dir.rmdir()
    dist.barrier(info)


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop metric lines past the checkpoint we resume from: those steps are about to be redone."""
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if line.strip()
                 and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in lines))
