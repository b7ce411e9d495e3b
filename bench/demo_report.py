"""What a training run did and where its time went, from its run folder: the table of `make demo-real`.

Per run: the verifier's accuracy over the first and the last 10% of steps, entropy and response length
at both ends, the truncated share, the mean step time split by phase (rollout, old log-probs, update,
weight sync), the rollout's response tokens per second, and the update's rate of useful model math
against this machine's bf16 matmul peak (measured here, 2048 x 2048 products). Useful model math is
6 FLOPs per matmul parameter per token computed once: each distinct prompt of a step once (the trainer
runs a prompt once for its group), every response token, the LM head on response tokens only. With
`<run>-eval/first` and `<run>-eval/final` beside a run (what `make demo-real` writes), the held-out
evaluation before and after too.

    python bench/demo_report.py runs/demo-real-s0 runs/demo-real-s1 runs/demo-real-s2
    python bench/demo_report.py --smoke       # a 2-step tiny run, reported
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

try:
    from justrl_min.config import load_recipe
except ModuleNotFoundError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from justrl_min.config import load_recipe
from justrl_min.model import resolve_model_path
from justrl_min.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def bf16_peak_gflops(size: int = 2048, repeats: int = 20) -> float:
    a = torch.randn(size, size, dtype=torch.bfloat16)
    torch.mm(a, a)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, a)
    return repeats * 2 * size ** 3 / (time.perf_counter() - started) / 1e9


def matmul_parameters(model_config: dict) -> tuple[float, float]:
    """(backbone, LM head) matmul parameters of a Llama / Qwen2-style decoder."""
    hidden, layers = model_config["hidden_size"], model_config["num_hidden_layers"]
    heads = model_config["num_attention_heads"]
    head_dim = model_config.get("head_dim") or hidden // heads
    kv = model_config.get("num_key_value_heads", heads) * head_dim
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv
    mlp = 3 * hidden * model_config["intermediate_size"]
    return layers * (attention + mlp), hidden * model_config["vocab_size"]


def report(run: Path, peak: float) -> dict[str, float]:
    cfg = load_recipe(run / "config.yaml")
    rows = [m for m in read_metrics(run) if "train/accuracy" in m]
    tail = max(1, len(rows) // 10)
    model_folder = Path(resolve_model_path(cfg.model.path))
    backbone, head = matmul_parameters(json.loads((model_folder / "config.json").read_text()))
    responses = cfg.train.prompts_per_step * cfg.rollout.n

    def mean(key: str, part: list[dict] = rows) -> float:
        return statistics.mean(m[key] for m in part)

    gflops, tokens_per_s = [], []
    for m in rows:
        response_tokens = m["train/response_length_mean"] * responses
        computed = m["throughput/tokens_per_s"] * m["time/step_s"]          # every row's prompt + response
        prompt_length = (computed - response_tokens) / responses
        useful = 6 * (backbone * (cfg.train.prompts_per_step * prompt_length + response_tokens)
                      + head * response_tokens)
        gflops.append(useful / m["time/update_s"] / 1e9)
        tokens_per_s.append(response_tokens / m["time/rollout_s"])
    out = {"steps": len(rows), "acc_first": mean("train/accuracy", rows[:tail]),
           "acc_last": mean("train/accuracy", rows[-tail:]), "entropy_first": mean("train/entropy", rows[:tail]),
           "entropy_last": mean("train/entropy", rows[-tail:]),
           "length_first": mean("train/response_length_mean", rows[:tail]),
           "length_last": mean("train/response_length_mean", rows[-tail:]),
           "truncated_first": mean("train/truncated_frac", rows[:tail]),
           "truncated_last": mean("train/truncated_frac", rows[-tail:]),
           **{f"{phase}_s": mean(f"time/{phase}_s") for phase in ("step", "rollout", "old_logp", "update", "sync")},
           "steps_min": sum(m["time/step_s"] for m in rows) / 60, "rollout_tok_s": statistics.mean(tokens_per_s),
           "update_gflops": statistics.mean(gflops), "update_share": statistics.mean(gflops) / peak}
    for when in ("first", "final"):
        results = run.parent / f"{run.name}-eval" / when / "results.json"
        if results.is_file():
            [bench] = json.loads(results.read_text())["benchmarks"].values()
            out.update({f"{when}_{key.split('@')[0]}": bench[key] for key in (f"avg@{bench['n']}",
                                                                           f"pass@{bench['n']}", "boxed_frac")
                        if key in bench})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--smoke", action="store_true", help="report on a 2-step tiny run (CI)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            from justrl_min import trainer

            args.runs = [trainer.train(load_recipe(ROOT / "recipes/tiny_cpu.yaml", [
                f"run.output_dir={tmp}", "run.name=smoke", "train.steps=2", "train.prompts_per_step=4",
                "train.mini_batch_prompts=4", "log.curves_at_end=false", "log.tensorboard=false"]))]
        if not args.runs:
            parser.error("name at least one run folder")
        peak = bf16_peak_gflops()
        print(f"bf16 matmul peak here: {peak:,.0f} GFLOP/s")
        for run in args.runs:
            r = report(run, peak)
            print(f"{run}: {r['steps']} steps; accuracy {r['acc_first']:.3f} over the first 10% -> {r['acc_last']:.3f} "
                  f"over the last; entropy {r['entropy_first']:.3f} -> {r['entropy_last']:.3f} nats/token; length "
                  f"{r['length_first']:.1f} -> {r['length_last']:.1f} tokens; truncated {r['truncated_first']:.3f} -> "
                  f"{r['truncated_last']:.3f}")
            print(f"  step {r['step_s']:.1f} s (rollout {r['rollout_s']:.1f}, old log-probs {r['old_logp_s']:.2f}, "
                  f"update {r['update_s']:.1f}, sync {r['sync_s']:.2f}), {r['steps_min']:.1f} min of steps; rollout "
                  f"{r['rollout_tok_s']:.0f} response tokens/s; update {r['update_gflops']:.0f} GFLOP/s of useful "
                  f"model math = {r['update_share']:.0%} of the bf16 peak")
            if "first_avg" in r and "final_avg" in r:
                print(f"  held-out: avg {r['first_avg']:.3f} -> {r['final_avg']:.3f}, pass {r['first_pass']:.3f} -> "
                      f"{r['final_pass']:.3f}, boxed {r.get('first_boxed_frac', float('nan')):.3f} -> "
                      f"{r.get('final_boxed_frac', float('nan')):.3f}")


if __name__ == "__main__":
    main()
