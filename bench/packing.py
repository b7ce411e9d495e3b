"""Padding efficiency of `plan_microbatches` on one JustRL-sized step of rollouts.

One step of the JustRL recipe: 256 prompts x 8 samples = 2,048 sequences (prompt + response), with
made-up but JustRL-like lengths, seeded:

responses  5% run-away responses (repetition loops) that hit the 15,360-token cap; the rest
           log-normal, exp(ln 3500 + a_prompt + e) with a_prompt ~ N(0, 0.5) shared by a prompt's
           8 samples (hard problems get long answers) and e ~ N(0, 0.6), clipped to [64, 15360].
           Mean ~5k tokens, ~8% of responses at the cap (the realised summary is printed).
prompts    log-normal around 250 tokens (sigma 0.7), clipped to [100, 1024] (max_prompt_length).

Schemes, all with the token budget ``--max-tokens`` (default 32768, the GPU recipes'
``train.max_tokens_per_microbatch``):

packed        ``plan_microbatches(packed=True)``: first-fit decreasing into rows of at most the
              budget, sequences concatenated padding-free.
sorted-pad    ``plan_microbatches(packed=False)``: length-sorted runs, right-padded to the longest.
fixed-k       the naive baseline: k sequences per micro-batch in random order, right-padded to the
              longest of the k (no budget: its largest micro-batch is printed next to the budget).

Every micro-batch is actually laid out by ``build_microbatch``; computed tokens are its
``input_ids.numel()`` (padding included), useful tokens are the prompt + response tokens.

padding efficiency  useful / computed tokens (packed: 1 by construction, no pad token exists).
budget fill         useful / (micro-batches x budget): how full the micro-batches are, i.e. how
                    close the number of forward passes is to the floor ceil(useful / budget).
                    Not given for fixed-k, which ignores the budget.

Two views: the whole step at once (the old-log-prob pass plans all 2,048 sequences together) and
per mini-batch (the loss pass plans each mini-batch of 64 prompts x 8 = 512 sequences on its own;
numbers summed over the step's 4 mini-batches).

    python bench/packing.py [--max-tokens 32768] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from pathlib import Path

try:
    from justrl_min.model import build_microbatch, plan_microbatches
except ModuleNotFoundError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from justrl_min.model import build_microbatch, plan_microbatches

PROMPTS = 256
SAMPLES = 8
MINI_BATCH_PROMPTS = 64
RESPONSE_CAP = 15360
RUNAWAY = 0.05
RESPONSE_MEDIAN, PROMPT_SIGMA_LOG, SAMPLE_SIGMA_LOG = 3500, 0.5, 0.6
PROMPT_MEDIAN, PROMPT_SIGMA, PROMPT_MIN, PROMPT_MAX = 250, 0.7, 100, 1024
FIXED_SIZES = (2, 4, 8)


def sample_lengths(seed: int) -> tuple[list[int], list[int]]:
    """Prompt and response lengths of one step, the 8 samples of a prompt next to each other."""
    rng = random.Random(seed)
    prompts, responses = [], []
    for _ in range(PROMPTS):
        prompt = min(PROMPT_MAX, max(PROMPT_MIN, round(math.exp(math.log(PROMPT_MEDIAN)
                                                                 + rng.gauss(0, PROMPT_SIGMA)))))
        difficulty = rng.gauss(0, PROMPT_SIGMA_LOG)
        for _ in range(SAMPLES):
            if rng.random() < RUNAWAY:
                n = RESPONSE_CAP
            else:
                n = round(math.exp(math.log(RESPONSE_MEDIAN) + difficulty + rng.gauss(0, SAMPLE_SIGMA_LOG)))
                n = min(RESPONSE_CAP, max(64, n))
            prompts.append(prompt)
            responses.append(n)
    return prompts, responses


def _summary(values: list[int]) -> str:
    q = sorted(values)
    pct = lambda p: q[min(len(q) - 1, int(p * len(q)))]  # noqa: E731
    return (f"mean {statistics.fmean(q):7.0f}  p10 {pct(0.1):6d}  median {pct(0.5):6d}  p90 {pct(0.9):6d}  "
            f"min {q[0]:5d}  max {q[-1]:6d}")


def measure(prompt_ids: list[list[int]], response_ids: list[list[int]], groups: list[list[int]],
            packed: bool) -> dict:
    """Lay out every micro-batch with build_microbatch and count what it computes."""
    computed = useful = targets = largest = 0
    for group in groups:
        micro = build_microbatch(prompt_ids, response_ids, group, packed)
        computed += micro.computed_tokens
        largest = max(largest, micro.computed_tokens)
        useful += sum(len(prompt_ids[i]) + len(response_ids[i]) for i in group)
        targets += micro.target_ids.numel()
    return {"n": len(groups), "computed": computed, "useful": useful, "targets": targets, "largest": largest}


def schemes(rows: list[int], lengths: list[int], max_tokens: int, rng: random.Random):
    """(name, micro-batches as indices into the caller's lists, packed) for one planning call."""
    local = [lengths[i] for i in rows]
    yield "packed", [[rows[j] for j in g] for g in plan_microbatches(local, max_tokens, packed=True)], True
    yield "sorted-pad", [[rows[j] for j in g] for g in plan_microbatches(local, max_tokens, packed=False)], False
    for k in FIXED_SIZES:
        shuffled = rows[:]
        rng.shuffle(shuffled)
        yield f"fixed-{k}", [shuffled[s:s + k] for s in range(0, len(shuffled), k)], False


def report(title: str, calls: list[list[int]], prompt_ids, response_ids, lengths, max_tokens, seed) -> dict:
    rng = random.Random(seed + 1)
    totals: dict[str, dict] = {}
    for rows in calls:
        for name, groups, packed in schemes(rows, lengths, max_tokens, rng):
            assert sorted(i for g in groups for i in g) == sorted(rows)
            m = measure(prompt_ids, response_ids, groups, packed)
            t = totals.setdefault(name, dict.fromkeys(m, 0))
            for key, value in m.items():
                t[key] = max(t[key], value) if key == "largest" else t[key] + value
    useful = next(iter(totals.values()))["useful"]
    floor = sum(math.ceil(sum(lengths[i] for i in rows) / max_tokens) for rows in calls)
    print(f"{title}  (floor: {floor} micro-batches of {max_tokens} tokens)")
    print(f"  {'scheme':<11}{'micro-batches':>14}{'computed tokens':>17}{'padding eff.':>14}{'budget fill':>13}"
          f"{'largest mb':>12}")
    for name, t in totals.items():
        assert t["useful"] == useful and t["targets"] == sum(len(response_ids[i]) for rows in calls for i in rows)
        over = " > budget" if t["largest"] > max_tokens else ""
        fill = "n/a" if name.startswith("fixed") else f"{t['useful'] / (t['n'] * max_tokens):.4f}"
        print(f"  {name:<11}{t['n']:>14}{t['computed']:>17,}{t['useful'] / t['computed']:>14.4f}"
              f"{fill:>13}{t['largest']:>12,}{over}")
    return totals


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-tokens", type=int, default=32768, help="micro-batch token budget")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()

    prompts, responses = sample_lengths(args.seed)
    lengths = [p + r for p, r in zip(prompts, responses, strict=True)]
    prompt_ids = [[1] * p for p in prompts]
    response_ids = [[2] * r for r in responses]
    n = len(responses)
    at_cap = sum(r == RESPONSE_CAP for r in responses)
    print(f"{PROMPTS} prompts x {SAMPLES} samples = {n} sequences, seed {args.seed}, budget {args.max_tokens} tokens")
    print(f"  responses: {RUNAWAY:.0%} run-away to the cap; others exp(ln {RESPONSE_MEDIAN} + N(0,{PROMPT_SIGMA_LOG}) "
          f"per prompt + N(0,{SAMPLE_SIGMA_LOG})) clipped to [64, {RESPONSE_CAP}]")
    print(f"  prompts:   exp(ln {PROMPT_MEDIAN} + N(0,{PROMPT_SIGMA})) clipped to [{PROMPT_MIN}, {PROMPT_MAX}]")
    print(f"  response tokens  {_summary(responses)}  at cap {at_cap} ({at_cap / n:.1%})")
    print(f"  prompt tokens    {_summary(prompts[::SAMPLES])}  (per prompt)")
    print(f"  sequence tokens  {_summary(lengths)}  total {sum(lengths):,}")
    print()

    whole = report("Whole step, 2,048 sequences planned at once (old-log-prob pass):", [list(range(n))],
                   prompt_ids, response_ids, lengths, args.max_tokens, args.seed)
    print()
    per = MINI_BATCH_PROMPTS * SAMPLES
    minis = [list(range(s, min(s + per, n))) for s in range(0, n, per)]
    report(f"Per mini-batch, {len(minis)} x {per} sequences planned separately (loss pass), summed:", minis,
           prompt_ids, response_ids, lengths, args.max_tokens, args.seed)
    print()
    p = whole["packed"]
    fill = p["useful"] / (p["n"] * args.max_tokens)
    print(f"packed, whole step: padding efficiency {p['useful'] / p['computed']:.4f}, budget fill {fill:.4f} "
          f"(target >= 0.97: {'met' if min(fill, p['useful'] / p['computed']) >= 0.97 else 'NOT met'})")
    print(f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
