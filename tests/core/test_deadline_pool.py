"""The deadline pool on its own: outcomes in job order, values of any type, the alarm and the kill,
groups kept together in a chunk, and the in-process deadline."""

import os
import signal
import time

import pytest

from justrl_min import deadline_pool
from justrl_min.deadline_pool import DeadlinePool, Outcome, call_with_deadline


def pair(x, y):
    return (x, y)


def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


def sleep_in_c(seconds):
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # like C code the alarm cannot stop
    time.sleep(seconds)


def worker_pid():
    return os.getpid()


def test_outcomes_come_back_in_job_order_with_their_values():
    with DeadlinePool([pair, "os.path:join"], workers=2, timeout_s=5.0) as pool:
        outcomes = pool.run([(0, (i, [i])) for i in range(10)] + [(1, ("a", "b"))])
    assert [o.value for o in outcomes] == [(i, [i]) for i in range(10)] + [os.path.join("a", "b")]
    assert {o.status for o in outcomes} == {"ok"}


def test_the_alarm_stops_python_code_and_the_kill_stops_the_rest(monkeypatch):
    monkeypatch.setattr(deadline_pool, "HARD_DEADLINE_GRACE_S", 0.5)
    with DeadlinePool([sleep_then, sleep_in_c, worker_pid], workers=1, timeout_s=0.5) as pool:
        (first,) = pool.run([(2, ())])
        started = time.monotonic()
        alarm, kill, after = pool.run([(0, (30, "x")), (1, (30,)), (2, ())], chunk_size=3)
        elapsed = time.monotonic() - started
    assert (alarm.status, alarm.value) == ("timeout", None) and "exceeded 0.5 s" in alarm.detail
    assert kill.status == "timeout" and "killed worker" in kill.detail
    assert after.status == "ok" and after.value != first.value  # the rest ran in the replacement
    assert elapsed < 15.0


def test_an_exception_is_an_error_outcome():
    with DeadlinePool(["math:sqrt"], workers=1, timeout_s=5.0) as pool:
        ok, bad = pool.run([(0, (4.0,)), (0, (-1.0,))])
    assert ok == Outcome(2.0, "ok", "", ok.elapsed_s)
    assert (bad.status, bad.value) == ("error", None) and bad.detail.startswith("ValueError")


def test_a_run_of_one_group_goes_to_one_worker():
    with DeadlinePool([worker_pid], workers=2, timeout_s=5.0) as pool:
        pool.run([(0, ())] * 2)  # both workers started
        outcomes = pool.run([(0, ())] * 6, chunk_size=2, groups=["a"] * 4 + ["b"] * 2)
    # chunks: the first grows to the end of group "a" (at most 2 x 2 jobs), "b" goes together
    assert len({o.value for o in outcomes[:4]}) == 1 and len({o.value for o in outcomes[4:]}) == 1


def test_call_with_deadline_in_process():
    assert call_with_deadline(pair, (1, 2), 1.0) == ((1, 2), "ok", "")
    value, status, detail = call_with_deadline(sleep_then, (5, 1), 0.2)
    assert (value, status, detail) == (None, "timeout", "exceeded 0.2 s")
    assert call_with_deadline(int, ("x",), None)[1] == "error"


def test_a_closed_pool_refuses_work():
    pool = DeadlinePool([pair], workers=1, timeout_s=1.0, purpose="test pool")
    pool.close()
    with pytest.raises(RuntimeError, match="test pool is closed"):
        pool.run([(0, (1, 2))])
