"""LoRA against full fine-tuning on the same model: trainable parameters, AdamW state, step time.

For each model, one optimizer step of the trainer's update core (log-probs through `TokenScorer`,
backward of their mean, AdamW step) on the same fixed batch, with every parameter trainable (full)
and with `model.lora` adapters (peft, all-linear, `--rank`). Reported:

trainable    parameters the optimizer steps
adam_MB      bytes of AdamW's state after a step (exp_avg, exp_avg_sq, step), in MB
step_s       median wall time of forward + backward + optimizer step over `--repeats` after a warm-up
sync_s       median wall time to produce the engine's weights (full: the tensors as they are; LoRA:
             merged W + scaling B A under the base names, `LoraFineTuning.engine_weights`)

Models: the tiny recipe's (`tiny`), the DeepSeek-R1-Distill-Qwen-1.5B stand-in's narrow test variant
(real 151,936-row vocabulary and untied head, 128 wide, `--layers` layers: the vocabulary dominates),
and with `--full-width` the stand-in at its real width (1536, 8960) with `--layers` layers (about
10 GB in float32 with AdamW; optional). Random weights: timing does not depend on them. float32 on
CPU (this CPU runs bf16 matmuls hundreds of times slower).

    python bench/lora.py [--rank 16] [--layers 2] [--repeats 3] [--full-width] [--smoke]
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
from justrl_min import dist, standin
from justrl_min.config import LoraConfig
from justrl_min.lora import LoraFineTuning
from justrl_min.model import FullFineTuning, TokenScorer, build_microbatch, trainable_parameters

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
    optimizer = torch.optim.AdamW(params, lr=1e-5)

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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--layers", type=int, default=2, help="decoder layers of the stand-in models")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sequences", type=int, default=8)
    p.add_argument("--full-width", action="store_true", help="also the stand-in at its real width (~10 GB)")
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
        print(f"{name:26s} lora/full: AdamW state x{lora['adam_MB'] / full['adam_MB']:.4f}, "
              f"step time x{lora['step_s'] / full['step_s']:.2f}, sync time x{lora['sync_s'] / full['sync_s']:.2f}")


if __name__ == "__main__":
    main()
