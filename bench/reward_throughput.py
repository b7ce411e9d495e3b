"""Reward throughput: one training step's worth of responses through VerifierPool vs a serial loop.

Generates 2,048 responses (256 problems x 8 samples) of 2k-60k characters of chain-of-thought-like
text with the answer boxed at the end: integers, fractions, radicals, expressions, multiples of pi
and pairs, about half correct (often written in an equivalent but different form), a few hedges,
~1% hostile answers (exponent towers, deep nesting, unbalanced boxes, giant literals, control
characters).

The baseline is the plain serial loop: ``compute_score`` on every response in the main thread (its
SIGALRM deadline armed) after ``warm_up()``. The pool extracts the last boxes in the parent and has
its workers (which ran ``warm_up()`` at start) judge each distinct (answer, gold) pair once, so its
gain has two parts, reported separately: de-duplication with parent-side extraction (plain loop vs
a one-worker pool, which does the pool's work in one process) and parallelism (one-worker pool vs
the pool). Several steps are timed, each a new batch, all sides interleaved step by step so that
they see the same load: the LaTeX parser keeps getting faster as its per-process prediction cache
fills (each worker fills its own), so step 1 is the cold first step of a run and the last steps are
closer to the steady state of a run that reuses one pool every step.

On a machine shared with other jobs wall times swing (the "CPU scaling ceiling" lines measure how
much two processes can gain right then). The workers' CPU seconds, read from /proc, are steadier
but not immune (a core shared with a neighbour runs slower): ``1 worker's CPU / busiest worker's
CPU`` is the parallel speed-up on otherwise idle cores, ``all workers' CPU / 1 worker's CPU`` what
splitting the work costs (each worker parses its own golds and fills its own parser cache).

    python bench/reward_throughput.py [--workers N] [--timeout-s S] [--steps K] [--seed K]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

try:
    from justrl_min.reward import VerifierPool, compute_score, warm_up
except ModuleNotFoundError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from justrl_min.reward import VerifierPool, compute_score, warm_up

PROBLEMS = 256
SAMPLES_PER_PROBLEM = 8
HOSTILE_FRACTION = 0.01


@dataclass
class Problem:
    gold: str
    correct_forms: list[str]  # ways a model writes the right answer
    wrong_forms: list[str]


SQUARE_FREE = [2, 3, 5, 6, 7, 10, 11, 13, 14, 15, 17, 19, 21, 22, 23]


def make_problem(rng: random.Random) -> Problem:
    """A gold, the forms a correct sample writes it in, and wrong answers. Values range widely, as in
    real data: across problems answers rarely repeat, within a problem the correct ones do."""
    kind = rng.choice(["integer", "integer", "integer", "fraction", "radical", "expression", "pair", "pi"])
    if kind == "integer":
        n = rng.randint(0, 100_000)
        forms = [str(n), str(n), f"{n:,}".replace(",", "{,}")]
        return Problem(str(n), forms, [str(n + rng.randint(1, 500)), str(rng.randint(0, 100_000)), f"{n}, {n + 1}"])
    if kind == "fraction":
        p, q = rng.randint(1, 200), rng.randint(201, 400)
        k = rng.randint(2, 5)
        return Problem(f"\\frac{{{p}}}{{{q}}}", [f"\\frac{{{p}}}{{{q}}}", f"\\dfrac{{{k * p}}}{{{k * q}}}", f"{p}/{q}"],
                       [f"\\frac{{{q}}}{{{p}}}", f"\\frac{{{p + rng.randint(1, 9)}}}{{{q}}}"])
    if kind == "radical":
        b = rng.choice(SQUARE_FREE)
        a = rng.choice([k for k in range(2, 30) if k != b])  # so that b*sqrt(a) really is wrong
        return Problem(f"{a}\\sqrt{{{b}}}", [f"{a}\\sqrt{{{b}}}", f"\\sqrt{{{a * a * b}}}"],
                       [f"{b}\\sqrt{{{a}}}", f"{a + rng.randint(1, 5)}\\sqrt{{{b}}}"])
    if kind == "expression":
        a, b = rng.randint(1, 30), rng.randint(1, 30)
        return Problem(f"x^2+{a + b}x+{a * b}", [f"(x+{a})(x+{b})", f"x^2+{a + b}x+{a * b}"],
                       [f"(x-{a})(x+{b})", f"x^2+{a + b}x+{a * b + rng.randint(1, 9)}"])
    if kind == "pi":
        p, q = rng.randint(1, 50), rng.randint(51, 99)  # p != q, so that q*pi/p really is wrong
        return Problem(f"\\frac{{{p}\\pi}}{{{q}}}", [f"\\frac{{{p}\\pi}}{{{q}}}", f"\\frac{{{p}}}{{{q}}}\\pi"],
                       [f"\\frac{{{q}\\pi}}{{{p}}}", f"\\frac{{{p + 1}\\pi}}{{{q}}}"])
    a, b = rng.randint(-50, 50), rng.randint(51, 99)
    return Problem(f"({a}, {b})", [f"({a}, {b})", f"\\left({a},{b}\\right)"], [f"({b}, {a})", f"({a}, {b + 1})"])


HOSTILE_ANSWERS = [
    "9^{9^{9^{9}}}",
    "(10!)!",
    "(" * 300 + "1+1" + ")" * 300,
    "{" * 40 + "7" + "}" * 40,
    "9" * 5_000,
    "\\foo{\x00\x1b[31m}",
    "2^{10^{10}}",
]

SENTENCES = [
    "Let me set up the problem carefully.",
    "We have $x^2 - {a}x + {b} = 0$, so by Vieta $x_1 + x_2 = {a}$ and $x_1 x_2 = {b}$.",
    "Substituting $x = {a}$ gives $2x^2 + 3x - 5 = {c}$.",
    "Then $\\frac{{{c}}}{{{a}}} = \\frac{{{c}}}{{{a}}}$, which does not simplify further.",
    "Wait, let me double-check that computation.",
    "Hmm, that doesn't look right; maybe I made an arithmetic error.",
    "By the Pythagorean theorem, $\\sqrt{{{a}^2 + {b}^2}} = \\sqrt{{{c}}}$.",
    "So the sum is $\\sum_{{k=1}}^{{{a}}} k = \\frac{{{a}({a}+1)}}{{2}}$.",
    "Alternatively, consider the case $n = {b}$: then $n \\bmod 7 = {a}$.",
    "Let's verify with a small example: if $a = {a}$ and $b = {b}$, the product is ${c}$.",
    "Taking logarithms, $\\log_2 {c} \\approx {a}.{b}$.",
    "So far the candidate answer is {a}, but I should check the boundary cases.",
]


def chain_of_thought(rng: random.Random, target_chars: int) -> str:
    parts, length = [], 0
    while length < target_chars:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        sentence = rng.choice(SENTENCES).format(a=a, b=b, c=a * b)
        parts.append(sentence)
        length += len(sentence) + 1
    return " ".join(parts)


def make_batch(seed: int, problems: int = PROBLEMS) -> tuple[list[str], list[str], list[float | None]]:
    """Responses, golds, and the intended label (None for hostile items)."""
    rng = random.Random(seed)
    responses, golds, intended = [], [], []
    for _ in range(problems):
        problem = make_problem(rng)
        for _ in range(SAMPLES_PER_PROBLEM):
            target_chars = int(2_000 * 30 ** rng.random())  # log-uniform over 2k-60k
            thought = chain_of_thought(rng, target_chars)
            if rng.random() < 0.15:  # a draft box in the middle that the final one overrides
                thought += f" So maybe \\boxed{{{rng.choice(problem.wrong_forms)}}}? No, let me redo this. "
            if rng.random() < HOSTILE_FRACTION:
                answer, label = rng.choice(HOSTILE_ANSWERS), None
            elif rng.random() < 0.5:
                answer, label = rng.choice(problem.correct_forms), 1.0
            else:
                answer, label = rng.choice(problem.wrong_forms), 0.0
            responses.append(f"<think>\n{thought}\n</think>\n\nTherefore, the final answer is $\\boxed{{{answer}}}$.")
            golds.append(problem.gold)
            intended.append(label)
    return responses, golds, intended


def _burn_cpu(iterations: int = 20_000_000) -> int:
    total = 0
    for i in range(iterations):
        total += i & 7
    return total


def cpu_scaling_ceiling(workers: int, iterations: int = 20_000_000) -> float:
    """How much faster ``workers`` processes of a pure-Python loop finish than one doing it all, right
    now: the most any pool can gain on this machine (other jobs on a shared box lower it)."""
    started = time.perf_counter()
    for _ in range(workers):
        _burn_cpu(iterations)
    serial_s = time.perf_counter() - started
    context = multiprocessing.get_context("fork")  # fork: no interpreter start-up in the measurement
    processes = [context.Process(target=_burn_cpu, args=(iterations,)) for _ in range(workers)]
    started = time.perf_counter()
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    return serial_s / (time.perf_counter() - started)


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process, from /proc (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(") ", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class StepTiming:
    wall_s: float
    scores: list[float]
    slowest_s: float
    cpu_s: float  # serial: the loop's CPU; pool: the parent's CPU while it waits on the workers
    worker_cpu_s: tuple[float, ...] = ()  # pool only: each worker's CPU during the step
    timeouts: int = 0
    errors: int = 0
    judged: int = 0  # verdicts computed

    def describe(self) -> str:
        text = (f"{self.wall_s:6.2f} s  {self.judged} verdicts, slowest {self.slowest_s:.2f} s, timeouts "
                f"{self.timeouts}, errors {self.errors}; CPU s: {'parent' if self.worker_cpu_s else 'loop'} "
                f"{self.cpu_s:.2f}")
        if self.worker_cpu_s:
            text += ", workers " + " + ".join(f"{cpu:.2f}" for cpu in self.worker_cpu_s)
        return text


def serial_step(responses: list[str], golds: list[str], timeout_s: float) -> StepTiming:
    scores, slowest = [], 0.0
    cpu_before, started = own_cpu_s(), time.perf_counter()
    for response, gold in zip(responses, golds, strict=True):
        item_started = time.perf_counter()
        scores.append(compute_score(response, gold, timeout_s=timeout_s))
        slowest = max(slowest, time.perf_counter() - item_started)
    return StepTiming(time.perf_counter() - started, scores, slowest, own_cpu_s() - cpu_before, judged=len(responses))


def pool_step(pool: VerifierPool, responses: list[str], golds: list[str]) -> StepTiming:
    pids = pool.worker_pids()
    workers_before = [process_cpu_s(pid) for pid in pids]
    cpu_before, started = own_cpu_s(), time.perf_counter()
    result = pool.score(responses, golds)
    wall_s, cpu_s = time.perf_counter() - started, own_cpu_s() - cpu_before
    if pool.worker_pids() != pids:  # a worker was replaced: its CPU cannot be attributed; say so
        worker_cpu_s = ()
    else:
        worker_cpu_s = tuple(process_cpu_s(pid) - before for pid, before in zip(pids, workers_before, strict=True))
    return StepTiming(wall_s, result.scores, result.slowest_s, cpu_s, worker_cpu_s, result.timeouts, result.errors,
                      result.judged)


def start_pool(workers: int, timeout_s: float, chunk_size: int | None) -> tuple[VerifierPool, float]:
    """A pool whose workers are all up and warmed, and how long that took."""
    started = time.perf_counter()
    pool = VerifierPool(workers=workers, timeout_s=timeout_s, chunk_size=chunk_size)
    pool.score(["\\boxed{1}"] * workers, ["1"] * workers)
    return pool, time.perf_counter() - started


SMOKE = ["--workers", "2", "--steps", "1", "--problems", "2", "--burn-iterations", "100000"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--timeout-s", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=4, help="training steps to time, each a new batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--problems", type=int, default=PROBLEMS,
                        help=f"per step, {SAMPLES_PER_PROBLEM} responses each")
    parser.add_argument("--burn-iterations", type=int, default=20_000_000,
                        help="loop length of the CPU scaling probe")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, seconds: the check CI runs (tests/tools/test_bench_smoke.py)")
    args = parser.parse_args(argv)
    if args.smoke:
        args = parser.parse_args([*SMOKE, *(sys.argv[1:] if argv is None else argv)])

    steps = [make_batch(args.seed + step, args.problems) for step in range(args.steps)]
    responses, _, intended = steps[0]
    lengths = sorted(len(r) for r in responses)
    print(f"{args.steps} steps of {len(responses)} responses; step 1: {sum(lengths) / 1e6:.1f} M chars, length "
          f"min/median/max {lengths[0]}/{lengths[len(lengths) // 2]}/{lengths[-1]}, hostile {intended.count(None)}")
    print(f"CPU scaling ceiling before ({args.workers} processes of a pure-Python loop vs one): "
          f"{cpu_scaling_ceiling(args.workers, args.burn_iterations):.2f}x; load average {os.getloadavg()[0]:.2f}")

    chunked_pool, chunked_startup_s = start_pool(args.workers, args.timeout_s, chunk_size=None)
    one_worker_pool, _ = start_pool(1, args.timeout_s, chunk_size=None)
    single_pool, _ = start_pool(args.workers, args.timeout_s, chunk_size=1)
    print(f"pool start-up, until all {args.workers} workers are warm: {chunked_startup_s:.2f} s")
    warm_up()  # what each pool worker did before it reported ready
    pooled, serial, one_worker, single = [], [], [], []
    for responses, golds, _ in steps:  # interleaved, so that all sides see the same load
        pooled.append(pool_step(chunked_pool, responses, golds))
        serial.append(serial_step(responses, golds, args.timeout_s))
        one_worker.append(pool_step(one_worker_pool, responses, golds))
        if not single:  # one step shows what sending jobs one at a time costs
            single.append(pool_step(single_pool, responses, golds))
    chunked_pool.close()
    one_worker_pool.close()
    single_pool.close()

    print(f"pool, {args.workers} workers, auto chunks (gold-aligned, <= 8 jobs):")
    for number, timing in enumerate(pooled, start=1):
        print(f"  step {number}: {timing.describe()}")
    print(f"pool, {args.workers} workers, 1 job per send:")
    print(f"  step 1: {single[0].describe()}")
    print("serial compute_score loop in the main thread (SIGALRM deadline armed), after warm_up():")
    for number, timing in enumerate(serial, start=1):
        print(f"  step {number}: {timing.describe()}")
    print("pool, 1 worker (the pool's work in one process: what parallelism is measured against):")
    for number, timing in enumerate(one_worker, start=1):
        print(f"  step {number}: {timing.describe()}")
    print(f"CPU scaling ceiling after: {cpu_scaling_ceiling(args.workers, args.burn_iterations):.2f}x; "
          f"load average {os.getloadavg()[0]:.2f}")

    print("speed-up, plain serial loop / pool (auto chunks) = (serial / 1-worker pool) x (1-worker pool / pool):")
    for number, (plain, same_work, pool) in enumerate(zip(serial, one_worker, pooled, strict=True), start=1):
        line = (f"  step {number}: wall {plain.wall_s / pool.wall_s:.2f}x = "
                f"{plain.wall_s / same_work.wall_s:.2f}x x {same_work.wall_s / pool.wall_s:.2f}x")
        if pool.worker_cpu_s and same_work.worker_cpu_s:
            line += (f"; parallelism on idle cores (1 worker's CPU / busiest worker's CPU) "
                     f"{sum(same_work.worker_cpu_s) / max(pool.worker_cpu_s):.2f}x; work split cost "
                     f"(all workers' CPU / 1 worker's CPU) {sum(pool.worker_cpu_s) / sum(same_work.worker_cpu_s):.2f}x")
        print(line)
    total = {name: sum(t.wall_s for t in timings)
             for name, timings in (("serial", serial), ("one_worker", one_worker), ("pool", pooled))}
    print(f"  all steps: wall {total['serial'] / total['pool']:.2f}x = {total['serial'] / total['one_worker']:.2f}x "
          f"(de-duplication, extraction in the parent) x {total['one_worker'] / total['pool']:.2f}x (parallelism); "
          f"1 job per send, step 1: wall {serial[0].wall_s / single[0].wall_s:.2f}x")
    limit = args.timeout_s + 1.0
    slowest_pooled = max(t.slowest_s for t in pooled + single)
    print(f"slowest item anywhere vs timeout + 1 s ({limit:.0f} s): pool {slowest_pooled:.2f} s, "
          f"serial {max(t.slowest_s for t in serial):.2f} s")
    against_serial = [*zip(pooled, serial, strict=True), *zip(one_worker, serial, strict=True), (single[0], serial[0])]
    disagreements = sum(a != b for pool, plain in against_serial
                        for a, b in zip(pool.scores, plain.scores, strict=True))
    labelled = [(score, label) for timing, (_, _, labels) in zip(pooled, steps, strict=True)
                for score, label in zip(timing.scores, labels, strict=True) if label is not None]
    mislabelled = sum(score != label for score, label in labelled)
    mean_reward = sum(score for score, _ in labelled) / len(labelled)
    print(f"items where the pools and the serial loop disagree: {disagreements}; "
          f"mean reward (non-hostile) {mean_reward:.3f}; "
          f"scores differing from the generator's intended label: {mislabelled} of {len(labelled)}")


if __name__ == "__main__":
    from justrl_min.host_memory import ask_for_huge_pages

    ask_for_huge_pages()  # as the entry points do: before torch's first large allocation
    main()
