"""Step time of this trainer and of TRL's GRPOTrainer on the same model, prompts and batch shape.

Both sides: the tiny recipe's warm-started model (float32, CPU), the tiny addition prompts through
the tokenizer's chat template, 32 prompts x 8 samples, 16 new tokens at temperature 1, one
optimizer update per step (one mini-batch of all 32 prompts), no reference model (beta / kl 0),
token-mean loss with clip 0.2 / 0.28, lr 1e-3, the same symbolic verifier reached through a
`VerifierPool` started before the first step. The warm start, model loading and the pool are
outside the timed steps on both sides.

What is timed, per step, after `--warmup` untimed steps:
  this trainer  `time/step_s` of metrics.jsonl: sample + score + update + weight sync + step
                metrics (logging and checkpoints come after it). With one mini-batch per step there
                is no separate old-log-prob pass: the update's own forward gives them, as in TRL.
  TRL           `on_step_begin` -> `on_step_end` of a TrainerCallback: generation + reward +
                old log-probs (when needed) + loss + backward + optimizer step.

TRL is not a project dependency; the script prints a notice and times only this trainer when
`trl` is not importable. To run both, install trl beside this project's requirements in a
separate venv (torch and transformers pinned to this project's versions) and run the script with
that venv's python.

The machine's speed drifts (a shared 2-core VM measured here varied by +-10% between runs), so
`--rounds R` alternates the two trainers R times in one process and also gives the ratio of the
medians over all rounds' steps.

    python bench/step_time_vs_trl.py [--steps 6] [--warmup 1] [--rounds 1] [--packing auto]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from justrl_min.config import load_recipe  # noqa: E402
from justrl_min.reward import VerifierPool  # noqa: E402
from justrl_min.tracking import read_metrics  # noqa: E402

PROMPTS, SAMPLES, NEW_TOKENS = 32, 8, 16


def shape_overrides(steps: int, out: str, packing: str) -> list[str]:
    return [f"train.steps={steps}", f"train.prompts_per_step={PROMPTS}", f"train.mini_batch_prompts={PROMPTS}",
            f"rollout.n={SAMPLES}", f"rollout.max_response_length={NEW_TOKENS}", f"train.packing={packing}",
            f"run.output_dir={out}", "run.name=bench", "run.resume=false", "log.curves_at_end=false",
            "log.tensorboard=false", "log.samples_per_step=0", f"checkpoint.every_steps={steps + 1}"]


def time_this_trainer(steps: int, warmup: int, packing: str) -> list[float]:
    from justrl_min.trainer import train

    with tempfile.TemporaryDirectory() as out:
        cfg = load_recipe(str(ROOT / "recipes/tiny_cpu.yaml"), shape_overrides(warmup + steps, out, packing))
        run_dir = train(cfg)
        rows = read_metrics(run_dir)
    return [row["time/step_s"] for row in rows[warmup:]]


def time_trl(steps: int, warmup: int) -> list[float]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from justrl_min.data import load_problems
    from justrl_min.tiny import prepare_warm_start

    cfg = load_recipe(str(ROOT / "recipes/tiny_cpu.yaml"))
    path = str(prepare_warm_start())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32", attn_implementation="sdpa")
    problems = load_problems("tiny", seed=cfg.run.seed)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p.problem}], "answer": p.answer}
                                 for p in problems])

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.started, self.seconds = 0.0, []

        def on_step_begin(self, *_, **__):
            self.started = time.monotonic()

        def on_step_end(self, *_, **__):
            self.seconds.append(time.monotonic() - self.started)

    with tempfile.TemporaryDirectory() as out, VerifierPool(timeout_s=cfg.reward.timeout_s,
                                                          mode=cfg.reward.mode) as pool:
        def verifier_reward(completions, answer, **_):
            scores = pool.score([c[0]["content"] for c in completions], answer).scores
            return [cfg.reward.correct if s > 0 else cfg.reward.incorrect for s in scores]

        args = GRPOConfig(
            output_dir=out, use_cpu=True, seed=cfg.run.seed, max_steps=warmup + steps,
            per_device_train_batch_size=PROMPTS * SAMPLES, num_generations=SAMPLES, gradient_accumulation_steps=1,
            steps_per_generation=1, num_iterations=1, max_completion_length=NEW_TOKENS,
            temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, learning_rate=cfg.train.lr,
            lr_scheduler_type="constant", warmup_steps=0, weight_decay=cfg.train.weight_decay,
            max_grad_norm=cfg.train.grad_clip, beta=0.0, epsilon=cfg.algorithm.clip_low,
            epsilon_high=cfg.algorithm.clip_high, loss_type="dapo", scale_rewards="group",
            logging_steps=1, report_to="none", save_strategy="no", log_completions=False,
            dataloader_num_workers=0, bf16=False)
        timer = StepTimer()
        trainer = GRPOTrainer(model=model, reward_funcs=verifier_reward, args=args, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[timer])
        trainer.train()
    return timer.seconds[warmup:]


def describe(seconds: list[float]) -> str:
    return (f"median {statistics.median(seconds):.3f} s  (min {min(seconds):.3f}, max {max(seconds):.3f}, "
            f"{len(seconds)} steps)")


SMOKE = ["--steps", "1", "--warmup", "0", "--rounds", "1"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per trainer")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=1, help="alternate the two trainers this many times")
    parser.add_argument("--packing", default="auto", choices=("auto", "packed", "padded"))
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, seconds: the check CI runs (tests/tools/test_bench_smoke.py)")
    args = parser.parse_args(argv)
    if args.smoke:
        args = parser.parse_args([*SMOKE, *(sys.argv[1:] if argv is None else argv)])

    print(f"{PROMPTS} prompts x {SAMPLES} samples, {NEW_TOKENS} new tokens, one optimizer update per step; "
          f"{args.warmup} warm-up + {args.steps} timed steps, {args.rounds} round(s)")
    try:
        import trl
    except ImportError:
        trl = None
        print("TRL: not installed here (`import trl` failed); skipped. See the docstring to run both.")
    all_ours, all_theirs = [], []
    for round_ in range(1, args.rounds + 1):
        ours = time_this_trainer(args.steps, args.warmup, args.packing)
        all_ours += ours
        print(f"round {round_} justrl-min (train.packing={args.packing}): {describe(ours)}")
        if trl is None:
            continue
        theirs = time_trl(args.steps, args.warmup)
        all_theirs += theirs
        print(f"round {round_} TRL {trl.__version__} GRPOTrainer: {describe(theirs)}")
        print(f"round {round_} ratio of median step times, justrl-min / TRL: "
              f"{statistics.median(ours) / statistics.median(theirs):.2f}x")
    if trl is not None and args.rounds > 1:
        print(f"all rounds: justrl-min {describe(all_ours)}; TRL {describe(all_theirs)}; ratio of medians "
              f"{statistics.median(all_ours) / statistics.median(all_theirs):.2f}x")


if __name__ == "__main__":
    from justrl_min.host_memory import ask_for_huge_pages

    ask_for_huge_pages()  # as the entry points do: before torch's first large allocation
    main()
