"""torchrun / FSDP2 glue; with one process every function is a cheap no-op.

Launch: `torchrun --nproc_per_node N train.py RECIPE` (multi-node: add `--nnodes`, `--node_rank`,
`--rdzv_endpoint`). Each rank holds whole prompt groups (all n samples of a prompt), so advantages
need no communication; the token-mean normaliser and the metrics are all-reduced. Parameters are
sharded with FSDP2 `fully_shard` per decoder layer plus the root; gradients are reduced in fp32
when the parameters are bf16. NCCL on GPUs, gloo on CPU (which is how the tests run two ranks).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as torch_dist

from justrl_min.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init(device_type: str, timeout_s: float = 600.0) -> DistInfo:
    """Join the process group torchrun describes in the environment (nothing to do without it).
    A collective that waits `timeout_s` for another rank raises instead of hanging."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not torch_dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        torch_dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo",
                                      timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


LOST_RANK_GRACE_S = 20.0
"""At most this long (and at most the process-group timeout) a failing rank waits for the others to
report their own failure before naming those that did not. Under 30 s, torchrun's grace between
the SIGTERM it sends the surviving ranks and its SIGKILL."""


class RankLost(RuntimeError):
    """A collective failed because another rank died or hung; the message names it."""


@contextlib.contextmanager
def naming_lost_ranks(info: DistInfo, timeout_s: float):
    """Turn an error on one rank of several into one that names the ranks that stopped answering.

    A failing rank writes its own key to torchrun's rendezvous store (it lives in the torchrun agent,
    which outlives the workers) and waits for every other rank's key. A rank that died, or hangs
    outside any collective, never writes one. If every rank reports, they all failed alike and the
    original error goes on unchanged.
    """
    try:
        yield
    except Exception as error:
        if not info.enabled:
            raise
        grace = min(timeout_s, LOST_RANK_GRACE_S)
        silent = _silent_ranks(info, grace)
        if not silent:
            raise
        first_line = (str(error).strip().splitlines() or [""])[0][:300]
        raise RankLost(
            f"rank {info.rank}: {type(error).__name__}: {first_line}\n"
            f"rank(s) {', '.join(map(str, silent))} of {info.world_size} did not report within {grace:.0f} s: "
            f"dead or hung (collectives wait run.dist_timeout_s={timeout_s:g} s). Resume from the last checkpoint "
            f"with run.resume=true.") from error


def _silent_ranks(info: DistInfo, grace_s: float) -> list[int]:
    """Ranks that did not set their key in the rendezvous store within `grace_s` ([] if unreachable)."""
    prefix = f"justrl_min/failed/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
    try:
        store = torch_dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                    timeout=datetime.timedelta(seconds=max(grace_s, 1.0)), wait_for_workers=False)
        store.set(f"{prefix}{info.rank}", "failed")
        deadline = time.monotonic() + grace_s
        while True:
            silent = [r for r in range(info.world_size) if not store.check([f"{prefix}{r}"])]
            if not silent or time.monotonic() > deadline:
                return silent
            time.sleep(0.1)
    except (KeyError, ValueError, RuntimeError):  # no torchrun store to ask (or it is gone): cannot tell
        return []


def shutdown(info: DistInfo) -> None:
    if info.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def exit_worker(code: int) -> None:
    """End a process that torchrun started (WORLD_SIZE > 1) with `code`, after `shutdown`: the exit
    handlers run and stdout and stderr are flushed, but CPython's interpreter teardown is skipped.
    In one process it returns.

    Why: gloo has no shutdown for its worker threads, and after `fully_shard` the process group
    outlives `destroy_process_group` (measured: its threads keep running), so they are still there
    while the interpreter finalizes. One that is still freeing a finished collective's tensors then
    needs the GIL to drop their Python objects; CPython ends a thread that asks for the GIL during
    finalization with `pthread_exit`, and that unwind through the work's destructor (`noexcept`)
    aborts the whole process: "terminate called without an active exception", SIGABRT, after a run
    that had finished and saved. The stack of such an abort here: `ProcessGroupGloo::runLoop` ->
    `~AsyncAllreduceWork` -> `TensorImpl::decref_pyobject` -> `take_gil` -> `pthread_exit` ->
    `std::terminate`. The same message ended a rank of a CI two-rank test on 2026-12-02;
    pytorch/pytorch#179291 describes the same teardown.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a float64 tensor over ranks (returns a new tensor; the input is untouched)."""
    values = values.detach().clone()
    if info.enabled:
        torch_dist.all_reduce(values, op=torch_dist.ReduceOp.SUM)
    return values


def sum_scalar(value: int | float, info: DistInfo) -> float:
    """One number summed over ranks, in float64."""
    return all_reduce_sum(torch.tensor(float(value), dtype=torch.float64), info).item()


def all_reduce_max(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    values = values.detach().clone()
    if info.enabled:
        torch_dist.all_reduce(values, op=torch_dist.ReduceOp.MAX)
    return values


def broadcast_object(obj, info: DistInfo):
    if not info.enabled:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def decided_on_main(decide: Callable[[], T], info: DistInfo) -> T:
    """`decide()` on rank 0 only (it may touch the file system), and its result on every rank; a
    ConfigError it raises is raised on every rank, so that all of them stop with the same message."""
    outcome = None
    if info.is_main:
        try:
            outcome = (decide(), None)
        except ConfigError as error:
            outcome = (None, error)
    value, error = broadcast_object(outcome, info)
    if error is not None:
        raise error
    return value


def barrier(info: DistInfo) -> None:
    if info.enabled:
        torch_dist.barrier()


def full_model_state(module: torch.nn.Module, info: DistInfo) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict on CPU, on every rank (collective under FSDP)."""
    if not info.enabled:
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def iter_full_tensors(module: torch.nn.Module, info: DistInfo, dtype: torch.dtype):
    """Yield (name, full tensor in `dtype`) one at a time, gathering each shard on demand.

    Every rank must consume the iterator in the same order (each gather is a collective). Peak
    extra memory is one full tensor, not the whole model.
    """
    for name, tensor in module.state_dict().items():
        if info.enabled and hasattr(tensor, "full_tensor"):
            tensor = tensor.full_tensor()
        yield name, tensor.detach().to(dtype)


def full_optimizer_state(module: torch.nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo) -> dict:
    if not info.enabled:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(module: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict,
                         info: DistInfo) -> None:
    """Load a full (unsharded) optimizer state into a possibly sharded module's optimizer."""
    if not info.enabled:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))


@contextlib.contextmanager
def gathered_for_generation(scorer: torch.nn.Module, info: DistInfo):
    """HF `generate` on the trainer's own module runs the causal LM directly, bypassing the FSDP
    root's forward hooks, so the root's own parameters (final norm, LM head) are gathered around it.
    Decoder layers and the input embedding gather themselves through their own hooks."""
    if not info.enabled:
        yield
        return
    scorer.unshard()
    try:
        yield
    finally:
        scorer.reshard()
