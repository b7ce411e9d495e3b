"""Where one step's update time goes: cProfile of the old-log-prob pass and the policy update.

Runs the tiny recipe for `--steps` steps (default 2, shape of bench/step_time_vs_trl.py: 32 prompts
x 8 samples, one optimizer update per step) and profiles `prepare_batch` + `update_policy` of the
last step only, so start-up, the warm start and the first step's one-off costs stay out. Prints
the step's time split and the top entries by own time (tottime) and by cumulative time.

    python bench/profile_update.py [--steps 2] [--top 5] [--recipe recipes/tiny_cpu.yaml] [key=value ...]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from justrl_min import trainer  # noqa: E402
from justrl_min.config import load_recipe  # noqa: E402
from justrl_min.tracking import read_metrics  # noqa: E402

SMOKE = ["--steps", "1", "--top", "3", "train.prompts_per_step=4", "train.mini_batch_prompts=4"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--recipe", default=str(ROOT / "recipes/tiny_cpu.yaml"),
                        help="its sizes are replaced by the tiny shape's unless overridden")
    parser.add_argument("overrides", nargs="*", help="extra key=value recipe overrides")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, seconds: the check CI runs (tests/tools/test_bench_smoke.py)")
    args = parser.parse_args(argv)
    if args.smoke:
        args = parser.parse_args([*SMOKE, *(sys.argv[1:] if argv is None else argv)])

    profiler = cProfile.Profile()
    owners = {"prepare_batch": (trainer, "prepare_batch"), "update_policy": (trainer.PolicyUpdate, "__call__")}
    calls = dict.fromkeys(owners, 0)

    def profiled(name):
        original = getattr(*owners[name])

        def run(*a, **kw):
            calls[name] += 1
            if calls[name] < args.steps:
                return original(*a, **kw)
            profiler.enable()
            try:
                return original(*a, **kw)
            finally:
                profiler.disable()
        return run

    for name, (owner, attribute) in owners.items():
        setattr(owner, attribute, profiled(name))
    with tempfile.TemporaryDirectory() as out:
        overrides = [f"train.steps={args.steps}", "train.prompts_per_step=32", "train.mini_batch_prompts=32",
                     f"run.output_dir={out}", "run.name=profile", "log.curves_at_end=false", "log.tensorboard=false",
                     "log.samples_per_step=0", f"checkpoint.every_steps={args.steps + 1}", *args.overrides]
        run_dir = trainer.train(load_recipe(args.recipe, overrides))
        last = read_metrics(run_dir)[-1]
    print("last step: " + "  ".join(f"{k.removeprefix('time/')} {last[k]:.3f}"
                                    for k in ("time/step_s", "time/rollout_s", "time/reward_s", "time/old_logp_s",
                                              "time/update_s", "time/sync_s")))
    for key in ("tottime", "cumulative"):
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats(key).print_stats(args.top)
        body = text.getvalue()
        print(f"--- prepare_batch + update_policy of the last step, top {args.top} by {key}")
        print(body[body.index("   ncalls"):].rstrip())


if __name__ == "__main__":
    from justrl_min.host_memory import ask_for_huge_pages

    ask_for_huge_pages()  # as the entry points do: before torch's first large allocation
    main()
