"""The tiny recipe with `train.replay_steps=K` beside 0, seed by seed: what replaying buys per sampled
token and per second of wall time.

Each run is `recipes/tiny_cpu.yaml` with only the seed and `train.replay_steps` changed, run one after
the other in this process's machine (nothing else should run: the time is wall time). Printed per run:
the reward over the last 10% of steps, the worst late fall (the lowest step of the last 20% below the
best step before it), the response tokens sampled and the seconds taken to first reach a smoothed
reward (EMA over 5 steps) of `--target`, and in all; then per K the means over seeds.

    python bench/replay.py [--seeds 0 1 2] [--replay 0 1] [--target 0.7]
    python bench/replay.py --smoke        # 3 steps, one seed: that it runs
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

try:
    from justrl_min import trainer
except ModuleNotFoundError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from justrl_min import trainer
from justrl_min.config import load_recipe
from justrl_min.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def one_run(out: Path, seed: int, replay: int, extra: list[str]) -> dict[str, float]:
    name = f"seed{seed}-replay{replay}"
    cfg = load_recipe(ROOT / "recipes/tiny_cpu.yaml", [
        f"run.output_dir={out}", f"run.name={name}", f"run.seed={seed}", f"train.replay_steps={replay}",
        "run.resume=false", "log.curves_at_end=false", "log.tensorboard=false", "checkpoint.every_steps=1000",
        *extra])
    started = time.monotonic()
    trainer.train(cfg)
    wall = time.monotonic() - started
    rows = read_metrics(out / name)
    responses = cfg.train.prompts_per_step * cfg.rollout.n
    rewards = [m["train/reward_mean"] for m in rows]
    tokens = [m["train/response_length_mean"] * responses for m in rows]
    step_s = [m["time/step_s"] for m in rows]
    tail, late = max(1, len(rows) // 10), max(1, len(rows) // 5)
    falls = [max(rewards[:i]) - rewards[i] for i in range(len(rows) - late, len(rows)) if i > 0]
    ema, reached = None, None
    for i, r in enumerate(rewards):
        ema = r if ema is None else ema + (r - ema) / 5
        if reached is None and ema >= ARGS.target:
            reached = i
    return {"last10": statistics.mean(rewards[-tail:]), "late_fall": max([0.0, *falls]),
            "tokens_to_target": sum(tokens[:reached + 1]) if reached is not None else float("nan"),
            "s_to_target": sum(step_s[:reached + 1]) if reached is not None else float("nan"),
            "tokens": sum(tokens), "wall_s": wall}


def main() -> None:
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for replay in ARGS.replay:
            for seed in ARGS.seeds:
                rows[replay, seed] = one_run(Path(tmp), seed, replay, ["train.steps=3"] if ARGS.smoke else [])
    print(f"tiny recipe, reward target {ARGS.target} (EMA over 5 steps); tokens = response tokens sampled")
    print(f"{'replay':>6} {'seed':>4} {'last 10%':>8} {'late fall':>9} {'tokens to target':>16} "
          f"{'s to target':>11} {'tokens':>8} {'wall s':>7}")
    for (replay, seed), r in rows.items():
        print(_line(replay, seed, r))
    for replay in ARGS.replay:
        runs = [rows[replay, seed] for seed in ARGS.seeds]
        print(_line(replay, "mean", {key: statistics.mean(r[key] for r in runs) for key in runs[0]}))


def _line(replay: int, seed, r: dict[str, float]) -> str:
    return (f"{replay:>6} {seed:>4} {r['last10']:>8.3f} {r['late_fall']:>9.3f} {r['tokens_to_target']:>16,.0f} "
            f"{r['s_to_target']:>11.1f} {r['tokens']:>8,.0f} {r['wall_s']:>7.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--replay", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--target", type=float, default=0.7)
    parser.add_argument("--smoke", action="store_true", help="3 steps, seed 0: that it runs")
    ARGS = parser.parse_args()
    if ARGS.smoke:
        ARGS.seeds = [0]
    main()
