"""The update and the rollout at the real model's width: the stand-in of DeepSeek-R1-Distill-Qwen-1.5B
(hidden 1536, vocabulary 151,936, a few layers, random weights) under `recipes/deepseek_1p5b.yaml`'s
update settings, on synthetic prompts and responses of a fixed shape.

For each shape (PROMPTSxNxRESPONSE_TOKENS, prompts of --prompt-tokens) and each variant (recipe
overrides and `env:NAME=VALUE` settings of the process's environment, e.g. `--variant before
train.adamw=default model.compute_dtype=float32`), it prints per
phase: wall time, tokens per second, achieved model FLOP/s of the update and of the old-log-prob pass
as a share of this machine's measured matmul peak in the dtype the variant computes in (float32 or
bfloat16), and the optimizer's time per step (of the second update: the first pays one-off costs; the
loss and gradient norm printed are the first update's, equal across variants). Every variant runs on the
same tensors, one after the other, each in a fresh process started as the trainer would start (the preload of
justrl_min/tools/cpu_preload.py for the variant's rollout.engine; the allocator is process-wide):
compare them side by side, not across invocations. The default variants: `glibc`, an HF-engine run's
update without the preload (CPU runs with HF generate before 2026-12-05), `tcmalloc`, the same now,
and `vllm-pre`, a vLLM-CPU run's (tcmalloc and libiomp5, as before).

    python bench/real_width.py                          # 2 layers; 4x2x32 and 16x4x32 (8x the tokens)
    python bench/real_width.py --profile 12             # plus the update's top torch ops by self time
    python bench/real_width.py --rollout hf             # plus HF generation, per variant and shape
    python bench/real_width.py --model models/smollm2-135m-instruct   # plus that model at make demo-real's shape
    python bench/real_width.py --smoke                  # narrow variant, tiny shape (CI)

`--model FOLDER` adds a real model (SmolLM2-135M-Instruct, from `make demo-real`'s fetch) under
`recipes/smollm2_cpu.yaml`'s update settings at that demo's shape (8 prompts x 8 samples, 112-token prompts,
responses of 24 tokens: its mean over the run), after the stand-in's shapes.

Model FLOPs as `justrl_min.tools.calibrate.model_flops` counts them: 2 per matmul weight per token forward
and 4 backward, the LM head over response tokens only, each distinct prompt once where the scorer shares
it (train.share_prompts), no checkpoint recompute: the usual "model FLOPs utilisation" convention.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from rehearsal import build_standin  # noqa: E402  (bench/, the script's own folder)

from justrl_min import dist  # noqa: E402
from justrl_min.config import load_recipe  # noqa: E402
from justrl_min.host_memory import huge_pages_status  # noqa: E402
from justrl_min.model import (  # noqa: E402
    load_causal_lm,
    load_tokenizer,
)
from justrl_min.optim import build_adamw  # noqa: E402
from justrl_min.options import rollout_engine  # noqa: E402
from justrl_min.rollout import Rollouts, Sampling  # noqa: E402
from justrl_min.tools.calibrate import model_flops, synthetic_rollouts  # noqa: E402
from justrl_min.tools.cpu_preload import SWITCH, restart_with_preload  # noqa: E402
from justrl_min.tools.estimate import ModelShape, measure_cpu  # noqa: E402
from justrl_min.trainer import PolicyUpdate, Scoring, fast_compute_dtype, prepare_batch  # noqa: E402

RECIPE = ROOT / "recipes" / "deepseek_1p5b.yaml"
REAL_MODEL_RECIPE = ROOT / "recipes" / "smollm2_cpu.yaml"
REAL_MODEL_SHAPE, REAL_MODEL_PROMPT_TOKENS = "8x8x24", 112
DEFAULT_VARIANTS = [["glibc", "rollout.engine=hf", f"env:{SWITCH}=0"], ["tcmalloc", "rollout.engine=hf"],
                    ["vllm-pre", "rollout.engine=vllm"]]


def parse_shape(text: str) -> tuple[int, int, int]:
    prompts, n, tokens = (int(x) for x in text.lower().split("x"))
    return prompts, n, tokens


class Timed:
    """Wraps a callable attribute of an object and adds up its wall time."""

    def __init__(self, owner, name: str):
        self.seconds, self.calls, self.inner = 0.0, 0, getattr(owner, name)
        setattr(owner, name, self)

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


def bench_variant(standin: Path, overrides: list[str], rollouts: Rollouts, profile_top: int,
                  recipe: Path = RECIPE) -> dict[str, float]:
    cfg = load_recipe(recipe, [f"model.path={standin}", "run.device=cpu", *overrides])
    info, device = dist.DistInfo(), torch.device("cpu")
    cfg = fast_compute_dtype(cfg, device, info)
    t = cfg.train
    tokenizer = load_tokenizer(str(standin))
    policy = load_causal_lm(str(standin), dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation,
                            device=device, gradient_checkpointing=cfg.model.gradient_checkpointing)
    scoring = Scoring.from_config(cfg, device, info, tokenizer.pad_token_id)
    microbatches, compute_dtype = scoring.microbatches, scoring.compute_dtype
    scorer = scoring.scorer(policy)
    optimizer, adamw = build_adamw(scorer.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay,
                                   implementation=t.adamw)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    update = PolicyUpdate.from_config(cfg, scorer, optimizer, scheduler, microbatches)
    optimizer_step = Timed(optimizer, "step")
    fresh = update.fresh_rows(len(rollouts))

    batch = dataclasses.replace(prepare_batch(rollouts, microbatches, scorer, fresh_rows=fresh),
                                advantages=torch.randn(len(rollouts), generator=torch.Generator().manual_seed(1),
                                                       dtype=torch.float64))
    # The first update pays one-off costs (kernel set-up, first-touch of the optimizer state); a run
    # pays them once, so the old-log-prob pass and the second update, on the same batch from the moved
    # weights, are the ones timed. The pass covers every row, even where the recipe's update scores its
    # first mini-batch itself (a run then skips it for those rows).
    stats, _ = update(batch)
    optimizer_step.seconds = optimizer_step.calls = 0
    start = time.perf_counter()
    prepare_batch(rollouts, microbatches, scorer)
    old_logp_s = time.perf_counter() - start
    _, first_micro = next(microbatches(rollouts.prompt_ids, rollouts.response_ids, list(range(len(rollouts)))))
    shared = scorer.shares_prompts(first_micro)
    profiler = (torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if profile_top
                else None)
    start = time.perf_counter()
    with profiler or contextlib.nullcontext():
        update(batch)
    update_s = time.perf_counter() - start
    rows = list(range(len(rollouts)))
    update_flops = model_flops(policy, rollouts, rows, passes=3, shared_prompts=shared)
    old_logp_flops = model_flops(policy, rollouts, rows, passes=1, shared_prompts=shared)
    tokens = sum(len(p) + len(r) for p, r in zip(rollouts.prompt_ids, rollouts.response_ids))
    result = {"host_memory": huge_pages_status(), "adamw": adamw,
              "compute": str(compute_dtype).removeprefix("torch."), "shared": shared, "old_logp_s": old_logp_s,
              "update_s": update_s, "optimizer_s": optimizer_step.seconds / max(1, optimizer_step.calls),
              "optimizer_steps": optimizer_step.calls, "update_tokens_per_s": tokens / update_s,
              "update_gflops": update_flops / update_s / 1e9,
              "old_logp_gflops": old_logp_flops / old_logp_s / 1e9,
              "loss": stats.loss, "grad_norm": stats.grad_norm}
    if profiler:
        result["profile"] = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=profile_top)
    return result


def bench_rollout(standin: Path, overrides: list[str], rollouts: Rollouts, engine_name: str) -> dict[str, float]:
    cfg = load_recipe(RECIPE, [f"model.path={standin}", "run.device=cpu", f"rollout.engine={engine_name}",
                               *overrides])
    cfg = fast_compute_dtype(cfg, torch.device("cpu"), dist.DistInfo())
    tokenizer = load_tokenizer(str(standin))
    load = functools.partial(load_causal_lm, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation,
                             device=torch.device("cpu"))
    policy = load(str(standin))
    start = time.perf_counter()
    engine = rollout_engine(cfg, policy, tokenizer, contextlib.nullcontext, False, log=lambda _: None)
    start_s = time.perf_counter() - start
    n = sum(1 for p in rollouts.prompt_ids if p is rollouts.prompt_ids[0])
    prompts = rollouts.prompt_ids[::n]
    tokens = len(rollouts.response_ids[0])
    sampling = Sampling(cfg.rollout.temperature, cfg.rollout.top_p, tokens, seed=0)
    start = time.perf_counter()
    with engine.generating():
        out = engine.generate(prompts, n, sampling)
    generate_s = time.perf_counter() - start
    engine.close()
    generated = sum(len(r) for r in out.response_ids)
    return {"engine": type(engine).__name__, "engine_start_s": start_s, "generate_s": generate_s,
            "generated_tokens": generated, "tokens_per_s": generated / generate_s}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--shapes", nargs="+", default=["4x2x32", "16x4x32"],
                        help="PROMPTSxNxRESPONSE_TOKENS per shape")
    parser.add_argument("--prompt-tokens", type=int, default=160)
    parser.add_argument("--variant", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"),
                        help="a named set of recipe overrides; repeat for several (default: glibc = an HF-engine "
                             "run without the preload, as CPU runs with HF generate trained before 2026-12-05; "
                             "tcmalloc = the same run now; vllm-pre = a vLLM-CPU run's update: tcmalloc and "
                             "libiomp5 preloaded)")
    parser.add_argument("--profile", type=int, default=0, metavar="TOP", help="print the update's top ops")
    parser.add_argument("--rollout", choices=["none", "hf", "vllm"], default="none")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "justrl-real-width")
    parser.add_argument("--model", type=Path, help="a real model's folder (SmolLM2-135M-Instruct), benched at "
                        f"{REAL_MODEL_SHAPE} under {REAL_MODEL_RECIPE.name} after the stand-in's shapes")
    parser.add_argument("--smoke", action="store_true", help="the narrow variant, one tiny shape (CI)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one variant's measurement, as JSON
    args = parser.parse_args(argv)
    if args.child:
        job = json.loads(args.child)
        # Under the allocator the trainer would run with (justrl_min.tools.cpu_preload).
        restart_with_preload(load_recipe(job["recipe"], job["overrides"]).rollout.engine, ["--child", args.child])
        folder = Path(job["model"])
        shape = ModelShape.from_config(json.loads((folder / "config.json").read_text()))
        rollouts = synthetic_rollouts(*job["shape"], job["prompt_tokens"], job["response_tokens"],
                                      min(shape.vocab, 151_643))
        result = bench_variant(folder, job["overrides"], rollouts, job["profile"], Path(job["recipe"]))
        if job["rollout"] != "none":
            result.update(bench_rollout(folder, job["overrides"], rollouts, job["rollout"]))
        print("RESULT " + json.dumps(result))
        return
    variants = args.variant or DEFAULT_VARIANTS
    if args.smoke:
        args.layers, args.shapes, args.prompt_tokens = 1, ["2x2x4"], 8
    args.out.mkdir(parents=True, exist_ok=True)
    standin, _ = build_standin(args.out, args.layers, narrow=args.smoke)
    shape = ModelShape.from_config(json.loads((standin / "config.json").read_text()))
    fp32_peak, bandwidth = measure_cpu("float32")
    bf16_peak, _ = measure_cpu("bfloat16")
    print(f"stand-in: {shape.params / 1e6:.0f}M parameters, {args.layers} layer(s), hidden {shape.hidden}, "
          f"vocabulary {shape.vocab:,}; {torch.get_num_threads()} threads; measured matmul peak "
          f"{fp32_peak * 1e3:.0f} GFLOP/s fp32, {bf16_peak * 1e3:.0f} bf16; memory {bandwidth * 1e3:.1f} GB/s")
    # A share of the peak of the dtype the variant computes in (bf16 runs on AMX at ~5x fp32's).
    peaks = {"float32": fp32_peak * 1e3, "bfloat16": bf16_peak * 1e3}
    for text in args.shapes:
        prompts, _, _ = parse_shape(text)
        bench_shape(f"stand-in {text}", standin, RECIPE, text, args.prompt_tokens, max(1, prompts // 4), variants,
                    args, peaks)
    if args.model:
        prompts, _, _ = parse_shape(REAL_MODEL_SHAPE)
        bench_shape(f"{args.model.name} {REAL_MODEL_SHAPE}", args.model.resolve(), REAL_MODEL_RECIPE,
                    REAL_MODEL_SHAPE, REAL_MODEL_PROMPT_TOKENS, prompts, variants, args, peaks)


def bench_shape(label: str, folder: Path, recipe: Path, text: str, prompt_tokens: int, mini_batch_prompts: int,
                variants: list[list[str]], args: argparse.Namespace, peaks: dict[str, float]) -> None:
    """Every variant on one model and shape, each in a fresh process; prints a table."""
    prompts, n, response_tokens = parse_shape(text)
    sizes = [f"train.prompts_per_step={prompts}", f"train.mini_batch_prompts={mini_batch_prompts}", f"rollout.n={n}",
             f"rollout.max_response_length={response_tokens}"]
    tokens = prompts * n * (prompt_tokens + response_tokens)
    print(f"\n{label}: {prompts * n} responses, ~{tokens:,} tokens ({prompts * n * response_tokens:,} trained), "
          f"{prompts // mini_batch_prompts} mini-batches, {recipe.name}")
    print(f"{'variant':<10} {'adamw':<8} {'compute':<9} {'old-logp s':>10} {'update s':>9} {'optim s/step':>12} "
          f"{'tok/s':>7} {'GFLOP/s':>8} {'% peak':>7} {'old-logp GFLOP/s':>16} {'% peak':>7} {'loss':>10} "
          f"{'grad norm':>10}")
    for name, *overrides in variants:
        job = {"shape": [prompts, n], "prompt_tokens": prompt_tokens, "response_tokens": response_tokens,
               "model": str(folder), "recipe": str(recipe), "profile": args.profile, "rollout": args.rollout,
               "overrides": sizes + [o for o in overrides if not o.startswith("env:")]}
        environment = dict(os.environ, **dict(o.removeprefix("env:").split("=", 1) for o in overrides
                                              if o.startswith("env:")))
        child = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True,
                               text=True, cwd=ROOT, env=environment)
        lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
        if child.returncode or not lines:
            raise SystemExit(f"variant {name} failed:\n{child.stdout[-3000:]}{child.stderr[-3000:]}")
        r = json.loads(lines[-1].removeprefix("RESULT "))
        print(f"{name:<10} {r['adamw']:<8} {r['compute']:<9} {r['old_logp_s']:>10.2f} {r['update_s']:>9.2f} "
              f"{r['optimizer_s']:>12.3f} {r['update_tokens_per_s']:>7.0f} {r['update_gflops']:>8.1f} "
              f"{r['update_gflops'] / peaks.get(r['compute'], math.nan):>7.0%} {r['old_logp_gflops']:>16.1f} "
              f"{r['old_logp_gflops'] / peaks.get(r['compute'], math.nan):>7.0%} {r['loss']:>10.6f} "
              f"{r['grad_norm']:>10.6f}"
              f"{'  (prompts shared)' if r['shared'] else ''}", flush=True)
        if "generate_s" in r:
            print(f"{'':<10} rollout ({args.rollout}, {r['engine']}): engine start {r['engine_start_s']:.1f} s, "
                  f"{r['generated_tokens']} tokens in {r['generate_s']:.2f} s = {r['tokens_per_s']:.1f} tokens/s")
        if "profile" in r:
            print(r["profile"])


if __name__ == "__main__":
    from justrl_min.host_memory import ask_for_huge_pages

    ask_for_huge_pages()  # as the entry points do: before torch's first large allocation
    main()
