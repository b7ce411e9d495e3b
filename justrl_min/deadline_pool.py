"""Persistent worker processes that run functions under a hard per-call deadline.

Whatever must neither stall nor crash the trainer runs here: the answer verifier (`reward.VerifierPool`),
the per-source graders, a recipe's reward function. A `DeadlinePool` is built with the functions its
workers load (picklable top-level callables, or `package.module:callable` specs imported in the
worker) and runs batches of jobs, each job a function's position and its arguments. Each call gets
two deadlines: the worker's own SIGALRM at `timeout_s` stops Python code cleanly, and the parent kills
a worker still busy `HARD_DEADLINE_GRACE_S` later (C code, such as a big-integer power, ignores the
alarm), then starts a replacement and re-queues the jobs the lost worker had not begun. A crashed
worker costs its current job only. Results come back in job order as `Outcome`s; nothing raises for
a job's sake.

Workers are started with "spawn": fresh interpreters, safe beside torch's threads and CUDA.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from justrl_min.errors import load_callable

logger = logging.getLogger(__name__)

HARD_DEADLINE_GRACE_S = 0.5  # the worker's own alarm fires at timeout_s; the parent kills after this
_START_METHOD = "spawn"
_WORKER_STARTUP_TIMEOUT_S = 180.0
_MAX_STARTUP_FAILURES = 3
_UNGUARDED_MAIN_EXIT_CODE = 86

Function = str | Callable[..., Any]
"""What a worker runs: a picklable top-level callable, or a `package.module:callable` spec."""


@dataclass(frozen=True)
class Outcome:
    value: Any
    """The function's return value; None unless status is "ok"."""
    status: str
    """"ok", "timeout" (the alarm, or the parent's kill) or "error" (it raised, or its worker died)."""
    detail: str
    elapsed_s: float
    """Wall time as the parent saw it, from the worker taking the job to its answer."""


# --------------------------------------------------------------------------- in-process deadline


class DeadlineExceeded(BaseException):
    """Raised by the alarm; a BaseException so that library ``except Exception`` blocks let it through."""


@contextmanager
def alarm_deadline(timeout_s: float | None) -> Iterator[None]:
    """Raise DeadlineExceeded in this (main) thread after ``timeout_s``; a no-op elsewhere.

    Cannot interrupt C code: that is what the pool's kill is for. An outer ITIMER_REAL, if one was
    running, is re-armed with its remaining time.
    """
    if not timeout_s or timeout_s <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return
    armed = [True]

    def on_alarm(_signum: int, _frame: Any) -> None:
        if armed[0]:
            raise DeadlineExceeded(f"exceeded {timeout_s:g} s")

    started = time.monotonic()
    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    outer_delay, outer_interval = signal.setitimer(signal.ITIMER_REAL, timeout_s)
    if 0 < outer_delay < timeout_s:  # nested inside a shorter deadline: that one still wins
        signal.setitimer(signal.ITIMER_REAL, outer_delay)
    try:
        yield
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if outer_delay > 0:
            remaining = max(outer_delay - (time.monotonic() - started), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, remaining, outer_interval)


def call_with_deadline(fn: Callable[..., Any], args: tuple, timeout_s: float | None) -> tuple[Any, str, str]:
    """(value, status, detail) with status "ok", "timeout" or "error"; never raises (bar Ctrl-C)."""
    try:
        with alarm_deadline(timeout_s):
            return fn(*args), "ok", ""
    except DeadlineExceeded as exc:
        return None, "timeout", str(exc)
    except Exception as exc:  # noqa: BLE001 - not swallowed: the caller counts and logs it
        return None, "error", f"{type(exc).__name__}: {str(exc)[:200]}"


# --------------------------------------------------------------------------- workers


@dataclass
class _Worker:
    process: Any  # multiprocessing.process.BaseProcess
    conn: Connection
    started_at: float
    ready: bool = False
    in_flight: deque = field(default_factory=deque)  # (job id, function, args, group) sent, in order
    item_started_at: float = 0.0  # when the worker began in_flight[0]


def _worker_main(conn: Connection, functions: tuple[Function, ...], timeout_s: float,
                 warm_up: Callable[[], None] | None) -> None:
    """Receive a chunk of jobs, answer job by job (so the parent can time each one)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business; it closes us
    if warm_up is not None:
        warm_up()
    loaded = [load_callable(fn) if isinstance(fn, str) else fn for fn in functions]
    conn.send(("ready",))
    while True:
        try:
            chunk = conn.recv()
        except EOFError:
            return
        if chunk is None:
            return
        for job_id, position, args, _group in chunk:
            conn.send(("result", job_id, *call_with_deadline(loaded[position], args, timeout_s)))


def _unguarded_main_message(purpose: str) -> str:
    script = getattr(sys.modules.get("__main__"), "__file__", None) or "the main script"
    return (f"{purpose} workers cannot start: {script} creates a worker pool (a VerifierPool, score_batch, "
            f"a reward function's pool) when it is imported, and has no `if __name__ == \"__main__\":` guard. "
            f"Workers are started with multiprocessing's \"{_START_METHOD}\" method, which re-imports the "
            f"main script in every worker, so each worker would start a pool of its own. Fix: put the "
            f"script's top-level code under `if __name__ == \"__main__\":`.")


def _exit_if_reimporting_main(purpose: str) -> None:
    """In a "spawn" child that is still importing its parent's main script, stop with a known exit code.

    multiprocessing marks a child as ``_inheriting`` while it re-imports ``__main__``; code that runs
    then (an unguarded pool at a script's top level) would recurse. The parent recognises the exit
    code and raises ``_unguarded_main_message()`` instead of retrying.
    """
    if getattr(mp.current_process(), "_inheriting", False):  # the flag multiprocessing itself checks
        print(_unguarded_main_message(purpose), file=sys.stderr)
        raise SystemExit(_UNGUARDED_MAIN_EXIT_CODE)


def _stop_workers(workers: list[_Worker]) -> None:
    """Ask every worker to exit, give them a moment, then kill and reap what is left."""
    for worker in workers:
        try:
            worker.conn.send(None)
        except OSError:
            pass  # already dead; reaped below
    give_up_at = time.monotonic() + 1.0
    for worker in workers:
        worker.process.join(timeout=max(give_up_at - time.monotonic(), 0.0))
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()
    workers.clear()


def auto_chunk_size(jobs: int, workers: int) -> int:
    """~4 chunks per worker per batch, at most 8 jobs: small enough to balance the tail."""
    return max(1, min(8, jobs // (4 * workers)))


def _take_chunk(pending: deque, size: int) -> list:
    """Up to ``size`` jobs, extended (to at most 2x) to the end of a run of jobs of one group, so that
    related jobs (one problem's samples, which share a gold to parse) go to one worker."""
    chunk = [pending.popleft()]
    while pending and len(chunk) < size:
        chunk.append(pending.popleft())
    group = chunk[-1][3]
    while group is not None and pending and len(chunk) < 2 * size and pending[0][3] == group:
        chunk.append(pending.popleft())
    return chunk


_Results = dict[int, Outcome]
"""The outcomes of one `DeadlinePool.run` so far, by job id."""


class DeadlinePool:
    """Persistent workers that run ``functions`` under a per-call deadline of ``timeout_s``.

    Create once and reuse: a worker takes ~1-3 s to start (interpreter, imports, ``warm_up``, a
    picklable no-argument callable each worker runs before it reports ready). ``workers`` None/0
    means ``os.cpu_count()``. ``purpose`` names the pool in messages. Close it, or use it as a
    context manager; it is reaped at garbage collection or interpreter exit anyway.
    """

    def __init__(self, functions: Sequence[Function], workers: int | None = None, timeout_s: float = 10.0, *,
                 warm_up: Callable[[], None] | None = None, purpose: str = "deadline pool") -> None:
        _exit_if_reimporting_main(purpose)
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.functions = tuple(functions)
        self.num_workers = workers or os.cpu_count() or 1
        self.timeout_s = float(timeout_s)
        self.purpose = purpose
        self._warm_up = warm_up
        self._context = mp.get_context(_START_METHOD)
        self._workers: list[_Worker] = []
        self._startup_failures = 0
        self._closed = False
        self._finalizer = weakref.finalize(self, _stop_workers, self._workers)
        self._workers.extend(self._start_worker() for _ in range(self.num_workers))

    def run(self, jobs: Sequence[tuple[int, tuple]], chunk_size: int | None = None,
            groups: Sequence[Hashable] | None = None) -> list[Outcome]:
        """Run each (function position, args) job; return their outcomes in job order. ``chunk_size``
        None picks `auto_chunk_size`; ``groups`` (one key per job) keeps runs of one key together in
        a chunk. One call at a time: the pool is not meant to be shared by threads."""
        if self._closed:
            raise RuntimeError(f"{self.purpose} is closed")
        keys = list(groups) if groups is not None else [None] * len(jobs)
        pending = deque((job_id, position, args, key)
                        for job_id, ((position, args), key) in enumerate(zip(jobs, keys, strict=True)))
        size = chunk_size or auto_chunk_size(len(pending), self.num_workers)
        results: _Results = {}
        while len(results) < len(jobs):
            self._dispatch(pending, size)
            sources = [source for worker in self._workers for source in (worker.conn, worker.process.sentinel)]
            self._handle_events(wait(sources, self._seconds_to_next_deadline()), pending, results)
            self._kill_overdue(pending, results)
            self._replace_stalled_starters()
        return [results[job_id] for job_id in range(len(jobs))]

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (for monitoring and tests)."""
        return [worker.process.pid for worker in self._workers]

    def close(self) -> None:
        """Stop and reap every worker; safe to call twice."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> DeadlinePool:
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self.close()

    # ---- workers

    def _start_worker(self) -> _Worker:
        parent_end, child_end = self._context.Pipe(duplex=True)
        process = self._context.Process(target=_worker_main,
                                        args=(child_end, self.functions, self.timeout_s, self._warm_up),
                                        name="justrl-worker", daemon=True)  # never outlive the trainer
        process.start()
        child_end.close()  # so the parent sees EOF when the child dies
        return _Worker(process=process, conn=parent_end, started_at=time.monotonic())

    def _replace(self, worker: _Worker, *, kill: bool) -> None:
        if kill:
            worker.process.kill()
        worker.process.join(timeout=5.0)
        worker.conn.close()
        if not worker.ready:
            if worker.process.exitcode == _UNGUARDED_MAIN_EXIT_CODE:
                raise RuntimeError(_unguarded_main_message(self.purpose))
            self._startup_failures += 1
            if self._startup_failures > _MAX_STARTUP_FAILURES:
                raise RuntimeError(f"{self.purpose} workers keep failing to start "
                                   f"(exit code {worker.process.exitcode})")
        self._workers[self._workers.index(worker)] = self._start_worker()

    def _lose_current_job(self, worker: _Worker, pending: deque, results: _Results, status: str, detail: str,
                          *, kill: bool) -> None:
        """The job ``worker`` was on ends with ``status``; the jobs sent to it but not started go back
        to the front of the queue, in order, and a fresh worker replaces it."""
        job_id = worker.in_flight.popleft()[0]
        results[job_id] = Outcome(None, status, detail, time.monotonic() - worker.item_started_at)
        pending.extendleft(reversed(worker.in_flight))
        worker.in_flight.clear()
        self._replace(worker, kill=kill)

    # ---- the event loop

    def _dispatch(self, pending: deque, chunk_size: int) -> None:
        """Send a chunk to each idle worker. Idle workers are blocked in recv(), so send() cannot stall."""
        for worker in list(self._workers):
            if not pending or not worker.ready or worker.in_flight:
                continue
            chunk = _take_chunk(pending, chunk_size)
            try:
                worker.conn.send(chunk)
            except OSError:  # died while idle: nothing of this chunk was started
                pending.extendleft(reversed(chunk))
                logger.warning("%s worker %s died while idle; replacing it", self.purpose, worker.process.pid)
                self._replace(worker, kill=True)
                continue
            worker.in_flight.extend(chunk)
            worker.item_started_at = time.monotonic()

    def _seconds_to_next_deadline(self) -> float:
        now = time.monotonic()
        deadlines = [worker.item_started_at + self.timeout_s + HARD_DEADLINE_GRACE_S - now
                     for worker in self._workers if worker.in_flight]
        return max(min(deadlines, default=1.0), 0.0)

    def _handle_events(self, ready: list[Any], pending: deque, results: _Results) -> None:
        for worker in list(self._workers):
            if worker.conn in ready or worker.process.sentinel in ready:
                alive = self._drain(worker, results)
                if not alive or worker.process.sentinel in ready:
                    self._on_worker_death(worker, pending, results)

    def _drain(self, worker: _Worker, results: _Results) -> bool:
        """Read every message the worker has sent; False once its end of the pipe is gone."""
        try:
            while worker.conn.poll():
                message = worker.conn.recv()
                if message[0] == "ready":
                    worker.ready = True
                    self._startup_failures = 0
                else:
                    self._on_result(worker, message, results)
        except (EOFError, OSError):
            return False
        return True

    @staticmethod
    def _on_result(worker: _Worker, message: tuple, results: _Results) -> None:
        _, job_id, value, status, detail = message
        expected_job_id = worker.in_flight.popleft()[0]
        assert job_id == expected_job_id, f"worker answered job {job_id}, expected {expected_job_id}"
        now = time.monotonic()
        results[job_id] = Outcome(value, status, detail, now - worker.item_started_at)
        worker.item_started_at = now

    def _on_worker_death(self, worker: _Worker, pending: deque, results: _Results) -> None:
        exitcode = worker.process.exitcode
        if worker.in_flight:
            self._lose_current_job(worker, pending, results, "error",
                                   f"worker pid {worker.process.pid} died (exit code {exitcode})", kill=False)
            return
        logger.warning("%s worker pid %s exited (code %s) while idle; replacing it",
                       self.purpose, worker.process.pid, exitcode)
        self._replace(worker, kill=False)

    def _kill_overdue(self, pending: deque, results: _Results) -> None:
        limit_s = self.timeout_s + HARD_DEADLINE_GRACE_S
        for worker in list(self._workers):
            if not worker.in_flight or time.monotonic() - worker.item_started_at < limit_s:
                continue
            if not self._drain(worker, results) or not worker.in_flight:  # answered just in time, or died:
                continue  # the next loop turn sees the result or the dead sentinel
            if time.monotonic() - worker.item_started_at >= limit_s:
                self._lose_current_job(worker, pending, results, "timeout",
                                       f"killed worker pid {worker.process.pid} past the deadline", kill=True)

    def _replace_stalled_starters(self) -> None:
        now = time.monotonic()
        for worker in list(self._workers):
            if not worker.ready and now - worker.started_at > _WORKER_STARTUP_TIMEOUT_S:
                logger.warning("%s worker pid %s did not start in %.0f s; replacing it",
                               self.purpose, worker.process.pid, _WORKER_STARTUP_TIMEOUT_S)
                self._replace(worker, kill=True)
