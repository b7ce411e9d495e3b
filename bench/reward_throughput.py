"""Reward throughput: one training step's worth of responses through VerifierPool vs a serial loop.

Generates 2,048 responses (256 problems x 8 samples) of 2k-60k characters of chain-of-thought-like
text with the answer boxed at the end: integers, fractions, radicals, expressions and pairs, about
half correct (often written in an equivalent but different form), a few hedges, and ~1% hostile
answers (exponent towers, deep nesting, unbalanced boxes, giant literals, control characters).

Both sides do the same work: the serial loop calls ``compute_score`` in the main thread (its SIGALRM
deadline armed) after ``warm_up()``; the pool runs the very same function in worker processes that
ran ``warm_up()`` at start. Two steps are timed, with different batches: the LaTeX parser keeps
getting faster as its per-process prediction cache fills, so step 1 is the cold first step of a run
and step 2 is closer to the steady state of a run that reuses one pool every step.

    python bench/reward_throughput.py [--workers N] [--timeout-s S] [--seed K]
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


def make_problem(rng: random.Random) -> Problem:
    kind = rng.choice(["integer", "integer", "integer", "fraction", "radical", "expression", "pair"])
    if kind == "integer":
        n = rng.randint(0, 2_000)
        forms = [str(n), f"{n:,}" if n >= 1_000 else str(n)]
        return Problem(str(n), forms, [str(n + rng.choice([-2, -1, 1, 3, 10])), f"{n}, {n + 1}"])
    if kind == "fraction":
        p, q = rng.randint(1, 30), rng.randint(31, 60)
        return Problem(f"\\frac{{{p}}}{{{q}}}", [f"\\frac{{{p}}}{{{q}}}", f"\\dfrac{{{2 * p}}}{{{2 * q}}}", f"{p}/{q}"],
                       [f"\\frac{{{q}}}{{{p}}}", f"\\frac{{{p + 1}}}{{{q}}}"])
    if kind == "radical":
        b = rng.choice([2, 3, 5, 6, 7])
        a = rng.choice([k for k in range(2, 10) if k != b])  # so that b*sqrt(a) really is wrong
        return Problem(f"{a}\\sqrt{{{b}}}", [f"{a}\\sqrt{{{b}}}", f"\\sqrt{{{a * a * b}}}"],
                       [f"{b}\\sqrt{{{a}}}", f"{a + 1}\\sqrt{{{b}}}"])
    if kind == "expression":
        a = rng.randint(1, 9)
        return Problem(f"x^2+{2 * a}x+{a * a}", [f"(x+{a})^2", f"x^2+{2 * a}x+{a * a}"],
                       [f"(x-{a})^2", f"x^2+{a}x+{a * a}"])
    a, b = rng.randint(-9, 9), rng.randint(10, 20)
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


def make_batch(seed: int) -> tuple[list[str], list[str], list[float | None]]:
    """Responses, golds, and the intended label (None for hostile items)."""
    rng = random.Random(seed)
    responses, golds, intended = [], [], []
    for _ in range(PROBLEMS):
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


def cpu_scaling_ceiling(workers: int) -> float:
    """How much faster ``workers`` processes of a pure-Python loop finish than one doing it all, right
    now: the most any pool can gain on this machine (other jobs on a shared box lower it)."""
    started = time.perf_counter()
    for _ in range(workers):
        _burn_cpu()
    serial_s = time.perf_counter() - started
    context = multiprocessing.get_context("fork")  # fork: no interpreter start-up in the measurement
    processes = [context.Process(target=_burn_cpu) for _ in range(workers)]
    started = time.perf_counter()
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    return serial_s / (time.perf_counter() - started)


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


@dataclass
class StepTiming:
    wall_s: float
    cpu_s: float  # the scoring process(es): serial loop, or the pool's parent (workers are below)
    scores: list[float]
    slowest_s: float
    timeouts: int = 0
    errors: int = 0


def serial_step(responses: list[str], golds: list[str], timeout_s: float) -> StepTiming:
    scores, slowest = [], 0.0
    cpu_before, started = cpu_seconds(resource.RUSAGE_SELF), time.perf_counter()
    for response, gold in zip(responses, golds, strict=True):
        item_started = time.perf_counter()
        scores.append(compute_score(response, gold, timeout_s=timeout_s))
        slowest = max(slowest, time.perf_counter() - item_started)
    return StepTiming(time.perf_counter() - started, cpu_seconds(resource.RUSAGE_SELF) - cpu_before, scores, slowest)


def pool_step(pool: VerifierPool, responses: list[str], golds: list[str]) -> StepTiming:
    cpu_before, started = cpu_seconds(resource.RUSAGE_SELF), time.perf_counter()
    result = pool.score(responses, golds)
    return StepTiming(time.perf_counter() - started, cpu_seconds(resource.RUSAGE_SELF) - cpu_before,
                      result.scores, result.slowest_s, result.timeouts, result.errors)


def start_pool(workers: int, timeout_s: float, chunk_size: int | None) -> tuple[VerifierPool, float]:
    """A pool whose workers are all up and warmed, and how long that took."""
    started = time.perf_counter()
    pool = VerifierPool(workers=workers, timeout_s=timeout_s, chunk_size=chunk_size)
    pool.score(["\\boxed{1}"] * workers, ["1"] * workers)
    return pool, time.perf_counter() - started


def describe(timing: StepTiming) -> str:
    return (f"{timing.wall_s:6.2f} s (slowest item {timing.slowest_s:.2f} s, timeouts {timing.timeouts}, "
            f"errors {timing.errors}, scoring-process CPU {timing.cpu_s:.2f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--timeout-s", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=3, help="training steps to time, each a new batch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    steps = [make_batch(args.seed + step) for step in range(args.steps)]
    responses, _, intended = steps[0]
    lengths = sorted(len(r) for r in responses)
    print(f"{args.steps} steps of {len(responses)} responses; step 1: {sum(lengths) / 1e6:.1f} M chars, length "
          f"min/median/max {lengths[0]}/{lengths[len(lengths) // 2]}/{lengths[-1]}, hostile {intended.count(None)}")
    print(f"CPU scaling ceiling before ({args.workers} processes of a pure-Python loop vs one): "
          f"{cpu_scaling_ceiling(args.workers):.2f}x; load average {os.getloadavg()[0]:.2f}")

    # Interleaved, step by step, so that both sides see the same load on a shared machine.
    children_before = cpu_seconds(resource.RUSAGE_CHILDREN)
    chunked_pool, chunked_startup_s = start_pool(args.workers, args.timeout_s, chunk_size=None)
    single_pool, single_startup_s = start_pool(args.workers, args.timeout_s, chunk_size=1)
    warm_up()  # what each pool worker does before it reports ready
    pooled, serial, single = [], [], []
    for responses, golds, _ in steps:
        pooled.append(pool_step(chunked_pool, responses, golds))
        serial.append(serial_step(responses, golds, args.timeout_s))
        if not single:  # one step is enough to see what sending items one by one costs
            single.append(pool_step(single_pool, responses, golds))
    chunked_pool.close()
    single_pool.close()
    workers_cpu_s = cpu_seconds(resource.RUSAGE_CHILDREN) - children_before

    print(f"pool start-up until all {args.workers} workers are warm: {chunked_startup_s:.2f} s "
          f"(second pool {single_startup_s:.2f} s); both pools' workers' CPU over their life {workers_cpu_s:.2f} s")
    print(f"pool, {args.workers} workers, auto chunks:")
    for number, timing in enumerate(pooled, start=1):
        print(f"  step {number}: {describe(timing)}")
    print(f"pool, {args.workers} workers, 1 item per send:")
    print(f"  step 1: {describe(single[0])}")
    print("serial compute_score loop in the main thread (SIGALRM deadline armed), after warm_up():")
    for number, timing in enumerate(serial, start=1):
        print(f"  step {number}: {describe(timing)}")
    print(f"CPU scaling ceiling after: {cpu_scaling_ceiling(args.workers):.2f}x; "
          f"load average {os.getloadavg()[0]:.2f}")

    ratios = ", ".join(f"step {number} {serial_timing.wall_s / pool_timing.wall_s:.2f}x"
                       for number, (serial_timing, pool_timing) in enumerate(zip(serial, pooled, strict=True), 1))
    print(f"speed-up serial / pool (auto chunks): {ratios}; "
          f"all steps {sum(s.wall_s for s in serial) / sum(p.wall_s for p in pooled):.2f}x")
    print(f"speed-up serial / pool (1 item per send), step 1: {serial[0].wall_s / single[0].wall_s:.2f}x")
    limit = args.timeout_s + 1.0
    slowest_pool = max(t.slowest_s for t in pooled + single)
    print(f"slowest item anywhere vs timeout + 1 s ({limit:.0f} s): pool {slowest_pool:.2f} s, "
          f"serial {max(t.slowest_s for t in serial):.2f} s")
    disagreements = sum(a != b for p, s in zip(pooled, serial, strict=True)
                        for a, b in zip(p.scores, s.scores, strict=True))
    labelled = [(score, label) for timing, (_, _, labels) in zip(pooled, steps, strict=True)
                for score, label in zip(timing.scores, labels, strict=True) if label is not None]
    mislabelled = sum(score != label for score, label in labelled)
    mean_reward = sum(score for score, _ in labelled) / len(labelled)
    print(f"pool vs serial disagreements: {disagreements}; mean reward (non-hostile) {mean_reward:.3f}; "
          f"scores differing from the generator's intended label: {mislabelled} of {len(labelled)}")


if __name__ == "__main__":
    main()
