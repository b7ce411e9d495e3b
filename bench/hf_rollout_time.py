"""Wall time of one HFEngine.generate call at the tiny recipe's rollout shape.

The warm-started tiny model (float32, sdpa), the first `--prompts` tiny-task prompts, n samples of up
to `--max-tokens` tokens, all rows in one chunk of `hf_batch_size` as in recipes/tiny_cpu.yaml.
Repeat i samples with seed i, so two checkouts timed with the same arguments draw the same samples
(up to float rounding) and do the same work. One warm-up call, then `--repeats` timed calls; prints
the minimum and median (the machine is shared: run under `flock /tmp/justrl_cpu.lock`).

    python bench/hf_rollout_time.py [--prompts 32] [--n 8] [--max-tokens 16] [--repeats 20]

To time another checkout's engine (e.g. main before a change), put its root first on PYTHONPATH:
`PYTHONPATH=/path/to/other/checkout python bench/hf_rollout_time.py`.
"""

from __future__ import annotations

import argparse
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
from justrl_min import rollout
from justrl_min.data import load_problems, tokenize_problems
from justrl_min.model import load_causal_lm, load_tokenizer
from justrl_min.rollout import HFEngine, Sampling

SMOKE = ["--prompts", "2", "--n", "2", "--max-tokens", "4", "--repeats", "1"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes, seconds: the check CI runs (tests/tools/test_bench_smoke.py)")
    args = p.parse_args(argv)
    if args.smoke:
        args = p.parse_args([*SMOKE, *(sys.argv[1:] if argv is None else argv)])

    path = str(tiny.prepare_warm_start())
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, dtype="float32", attn_implementation="sdpa")
    prompts = tokenize_problems(load_problems("tiny"), tokenizer, "", 64).prompt_ids[:args.prompts]
    engine = HFEngine(model, tokenizer, batch_size=args.prompts * args.n)

    engine.generate(prompts, args.n, Sampling(1.0, 1.0, args.max_tokens, seed=10_000))
    seconds, tokens = [], 0
    for i in range(args.repeats):
        started = time.perf_counter()
        out = engine.generate(prompts, args.n, Sampling(1.0, 1.0, args.max_tokens, seed=i))
        seconds.append(time.perf_counter() - started)
        tokens += sum(len(r) for r in out.response_ids)
    print(f"HFEngine.generate from {rollout.__file__}: {args.prompts} prompts x n={args.n}, "
          f"up to {args.max_tokens} new tokens, {torch.get_num_threads()} torch threads, "
          f"{tokens / args.repeats:.0f} tokens per call")
    print(f"  min {min(seconds):.3f} s  median {statistics.median(seconds):.3f} s  over {args.repeats} calls")


if __name__ == "__main__":
    from justrl_min.host_memory import ask_for_huge_pages

    ask_for_huge_pages()  # as the entry points do: before torch's first large allocation
    main()
