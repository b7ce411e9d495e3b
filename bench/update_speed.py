"""Wall time per trained token of the update (forward + backward) for each micro-batch layout.

The same batch of rollouts goes through the update's core (micro-batches planned by token budget,
log-probs through `TokenScorer`, backward of their token mean) in each layout:

padded        length-sorted, right-padded rows under a padding mask (`train.packing=padded
              train.share_prompts=false`).
padded-shared the same rows, each distinct prompt run once and the responses on its KV cache
              where that saves a quarter of the tokens (`train.packing=padded
              train.share_prompts=auto`, the CPU default); padded elsewhere.
packed        one row per micro-batch, attention per sequence (`train.packing=packed`: torch's
              varlen_attn on CUDA, SDPA per sequence slice on CPU; justrl_min/attention.py).
packed-dense  the layout before issue 12: one row per micro-batch under transformers' sdpa, which
              builds a dense block-diagonal (L, L) mask over the row. Shown for comparison only.
packed-flex   one row per micro-batch under transformers' flex_attention (a block-sparse mask);
              skipped where it does not run.

Lengths are JustRL's shape scaled down by `--scale` (default 32) to fit this CPU: per prompt a
difficulty a ~ N(0, 0.5); responses exp(ln 3500 + a + N(0, 0.6)) clipped to [64, 15360], 5%
run-aways at the cap; prompts exp(ln 250 + N(0, 0.7)) clipped to [100, 1024]; then every length
divided by the scale. Two token budgets (`--budgets`, default 1024 and 4096, the tiny recipe's).
The model is the tiny recipe's architecture (random weights: timing does not depend on them).

Time is the median of `--repeats` runs after one warm-up; "per token" divides by the response
tokens trained. Ratios are to the padded layout at the same budget.

    python bench/update_speed.py [--scale 32] [--prompts 16] [--budgets 1024 4096] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import statistics
import sys
import time
from pathlib import Path

import torch

try:
    from justrl_min import tiny
except ModuleNotFoundError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from justrl_min import tiny
from justrl_min.model import TokenScorer, build_microbatch, plan_microbatches

SAMPLES = 8
RESPONSE_MEDIAN, RESPONSE_MIN, RESPONSE_CAP, RUNAWAY = 3500, 64, 15360, 0.05
DIFFICULTY_SIGMA, SAMPLE_SIGMA = 0.5, 0.6
PROMPT_MEDIAN, PROMPT_SIGMA, PROMPT_MIN, PROMPT_MAX = 250, 0.7, 100, 1024
LAYOUTS = ("padded", "padded-shared", "packed", "packed-dense", "packed-flex")


def justrl_like_lengths(prompts: int, scale: float, seed: int) -> tuple[list[int], list[int]]:
    """(prompt lengths, response lengths), the samples of a prompt next to each other."""
    rng = random.Random(seed)
    prompt_lengths, response_lengths = [], []
    for _ in range(prompts):
        prompt = min(PROMPT_MAX, max(PROMPT_MIN, math.exp(math.log(PROMPT_MEDIAN) + rng.gauss(0, PROMPT_SIGMA))))
        difficulty = rng.gauss(0, DIFFICULTY_SIGMA)
        for _ in range(SAMPLES):
            response = RESPONSE_CAP if rng.random() < RUNAWAY else min(RESPONSE_CAP, max(
                RESPONSE_MIN, math.exp(math.log(RESPONSE_MEDIAN) + difficulty + rng.gauss(0, SAMPLE_SIGMA))))
            prompt_lengths.append(max(1, round(prompt / scale)))
            response_lengths.append(max(1, round(response / scale)))
    return prompt_lengths, response_lengths


def scorer_for(layout: str, seed: int, hidden: int, layers: int) -> TokenScorer:
    torch.manual_seed(seed)
    scorer = TokenScorer(tiny.build_model(tiny.build_tokenizer(), seed=seed, hidden=hidden, layers=layers),
                         share_prompts="when_smaller" if layout == "padded-shared" else "never", chunk_tokens=256)
    if layout == "packed-dense":
        scorer.causal_lm.set_attn_implementation("sdpa")
    elif layout == "packed-flex":
        scorer.causal_lm.set_attn_implementation("flex_attention")
    return scorer


def microbatches(layout: str, prompts, responses, budget: int):
    packed = not layout.startswith("padded")
    plan = plan_microbatches([len(p) + len(r) for p, r in zip(prompts, responses)], budget, packed)
    for group in plan:
        micro = build_microbatch(prompts, responses, group, packed)
        # The dense and flex layouts leave the packed row to transformers' own mask building.
        yield micro if layout in ("padded", "padded-shared", "packed") else dataclasses.replace(micro, cu_seqlens=None)


def computed_tokens(micro, scorer: TokenScorer) -> int:
    """Token positions the backbone runs: P x prompt width + b x response width where prompts are shared."""
    return micro.shared_prompt_tokens if scorer.shares_prompts(micro) else micro.computed_tokens


def update_once(scorer: TokenScorer, layout: str, prompts, responses, budget: int) -> float:
    """Seconds for one pass of forward + backward over every micro-batch."""
    trained = sum(len(r) for r in responses)
    scorer.zero_grad(set_to_none=True)
    started = time.perf_counter()
    for micro in microbatches(layout, prompts, responses, budget):
        logp, _ = scorer(micro)
        (logp.sum() / trained).backward()
    return time.perf_counter() - started


SMOKE = ["--prompts", "1", "--budgets", "512", "--hidden", "16", "--layers", "1", "--repeats", "1",
         "--scale", "256"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=32.0, help="divide JustRL's lengths by this")
    parser.add_argument("--prompts", type=int, default=16, help=f"prompts of {SAMPLES} samples each")
    parser.add_argument("--budgets", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, seconds: the check CI runs (tests/tools/test_bench_smoke.py)")
    args = parser.parse_args(argv)
    if args.smoke:
        args = parser.parse_args([*SMOKE, *(sys.argv[1:] if argv is None else argv)])
    torch.manual_seed(args.seed)

    prompt_lengths, response_lengths = justrl_like_lengths(args.prompts, args.scale, args.seed)
    rng = random.Random(args.seed)
    prompts = [[rng.randrange(tiny.VOCAB_SIZE) for _ in range(n)] for n in prompt_lengths]
    responses = [[rng.randrange(tiny.VOCAB_SIZE) for _ in range(n)] for n in response_lengths]
    sequences = [p + r for p, r in zip(prompt_lengths, response_lengths)]
    trained = sum(response_lengths)
    print(f"{args.prompts} prompts x {SAMPLES} samples, JustRL lengths / {args.scale:g}: sequences mean "
          f"{statistics.fmean(sequences):.0f}, median {statistics.median(sequences):.0f}, max {max(sequences)} "
          f"tokens; {sum(sequences):,} tokens, {trained:,} trained (response) tokens")
    print(f"model: tiny Qwen2, hidden {args.hidden}, {args.layers} layers, {torch.get_num_threads()} threads; "
          f"median of {args.repeats} after a warm-up")
    print(f"{'budget':>7} {'layout':<14}{'micro-b.':>9}{'computed':>10}{'update s':>10}{'us/token':>10}"
          f"{'vs padded':>10}")
    for budget in args.budgets:
        per_token = {}
        for layout in args.layouts:
            scorer = scorer_for(layout, args.seed, args.hidden, args.layers)
            micros = list(microbatches(layout, prompts, responses, budget))
            computed = sum(computed_tokens(m, scorer) for m in micros)
            try:
                update_once(scorer, layout, prompts, responses, budget)  # warm-up
            except Exception as error:  # noqa: BLE001 - a kernel missing on this machine is a result
                print(f"{budget:>7} {layout:<14} skipped: {type(error).__name__}: {str(error)[:80]}")
                continue
            seconds = statistics.median(update_once(scorer, layout, prompts, responses, budget)
                                        for _ in range(args.repeats))
            per_token[layout] = seconds / trained
            ratio = per_token[layout] / per_token["padded"] if "padded" in per_token else float("nan")
            print(f"{budget:>7} {layout:<14}{len(micros):>9}{computed:>10,}{seconds:>10.3f}"
                  f"{per_token[layout] * 1e6:>10.1f}{ratio:>9.2f}x")


if __name__ == "__main__":
    from justrl_min.host_memory import ask_for_huge_pages

    ask_for_huge_pages()  # as the entry points do: before torch's first large allocation
    main()
