"""The estimator's measured figures: the recipe's own update, old-log-prob pass, prefill and decode
step (HF generate itself for rollout.engine=hf), timed on this device at the recipe's shapes
(`justrl estimate RECIPE --calibrate`).

A model-FLOP utilisation assumed for every model and machine was 4-5x off on CPU (docs/rehearsal.md):
small matrices, casts, attention and elementwise work cost more than FLOPs say. Timing the trainer's
own code on a synthetic mini-batch (random tokens, the workload's mean lengths, whole groups sharing
their prompt, as sampled) takes seconds to a minute and includes all of that.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass

import torch

from justrl_min import dist
from justrl_min.config import Config
from justrl_min.model import DTYPES, load_causal_lm, load_tokenizer, trainable_parameters
from justrl_min.optim import build_adamw
from justrl_min.rollout import HFEngine, Rollouts, Sampling
from justrl_min.trainer import PolicyUpdate, Scoring, prepare_batch


@dataclass(frozen=True)
class Calibration:
    """Seconds measured on one device for one rank's share of the work (the fastest of a few repeats)."""
    rows: int
    """Responses in one rank's mini-batch, as timed."""
    minibatch_update_s: float
    """Forward, backward and optimizer step of that mini-batch."""
    minibatch_forward_s: float
    """Its no-grad pass: old log-probs, or the reference's."""
    prefill_s: float
    """The rank's prompts of one step through the compute-dtype model, filling a KV cache."""
    decode_step_s: float
    """One token for each of the rank's responses on that cache (a forward, no sampling)."""
    device: str
    minibatch_flops: float = 0.0
    """Model FLOPs of the timed update (`model_flops`)."""
    decode_timed_with: str = "the model's forward"
    """What the decode step was timed with: HF generate itself for rollout.engine=hf (its sampling loop
    costs more per token than a forward), else the bare forward with a KV cache."""


def synthetic_rollouts(prompts: int, n: int, prompt_tokens: int, response_tokens: int, vocab: int,
                       spread: float = 0.25) -> Rollouts:
    """Random token ids below `vocab`; n responses per prompt sharing its prompt (one list, as sampled),
    responses all of full length; prompt lengths spread over +-`spread` so micro-batches see ragged rows."""
    g = torch.Generator().manual_seed(0)
    prompt_ids, response_ids = [], []
    for p in range(prompts):
        length = max(1, int(prompt_tokens * (1 - spread + 2 * spread * p / max(1, prompts - 1))))
        prompt = torch.randint(0, vocab, (length,), generator=g).tolist()
        for _ in range(n):
            prompt_ids.append(prompt)
            response_ids.append(torch.randint(0, vocab, (response_tokens,), generator=g).tolist())
    return Rollouts(prompt_ids, response_ids, None, [True] * len(response_ids))


def model_flops(causal_lm: torch.nn.Module, rollouts: Rollouts, rows: list[int], passes: int,
                shared_prompts: bool) -> float:
    """Model FLOPs of `rows`: 2 per matmul weight per token in a forward (`passes` = 1), 3x that with the
    backward (`passes` = 3); the decoder over prompt and response tokens (each distinct prompt once where
    the scorer shares it), the LM head over response tokens only, as the trainer scores them; no
    attention scores and no checkpoint recompute: the usual model-FLOPs-utilisation convention."""
    decoder = sum(p.numel() for p in causal_lm.get_decoder().layers.parameters() if p.dim() == 2)
    head = causal_lm.get_output_embeddings().weight.numel()
    prompts = ({id(rollouts.prompt_ids[i]): len(rollouts.prompt_ids[i]) for i in rows} if shared_prompts
               else {i: len(rollouts.prompt_ids[i]) for i in rows})
    responses = sum(len(rollouts.response_ids[i]) for i in rows)
    return passes * 2 * (decoder * (sum(prompts.values()) + responses) + head * responses)


def _fastest(call, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def calibrate(cfg: Config, prompt_tokens: int, response_tokens: int, device: torch.device, ranks: int = 1,
              repeats: int = 2) -> Calibration:
    """Time the trainer's update and no-grad pass on one rank's mini-batch, then the prompts' prefill
    and a decode step of the rank's responses at mid-response context. `cfg` as the trainer would run
    it (`trainer.fast_compute_dtype` applied)."""
    m, t = cfg.model, cfg.train
    tokenizer = load_tokenizer(m.path, m.trust_remote_code)
    policy = load_causal_lm(m.path, dtype=m.dtype, attn_implementation=m.attn_implementation,
                            trust_remote_code=m.trust_remote_code, device=device,
                            gradient_checkpointing=m.gradient_checkpointing)
    vocab = min(len(tokenizer), policy.config.vocab_size)
    mini = synthetic_rollouts(max(1, t.mini_batch_prompts // ranks), cfg.rollout.n, prompt_tokens, response_tokens,
                              vocab)
    update_s, forward_s, shared = _training_times(cfg, policy, Scoring.from_config(cfg, device, dist.DistInfo(),
                                                                                   tokenizer.pad_token_id),
                                                  mini, repeats)
    flops = model_flops(policy, mini, list(range(len(mini))), 3, shared)
    step = synthetic_rollouts(max(1, t.prompts_per_step // ranks), cfg.rollout.n, prompt_tokens, 1, vocab, spread=0)
    decoder = copy.deepcopy(policy).to(DTYPES[m.compute_dtype or m.dtype]).eval()
    del policy  # the trainer's weights and optimizer state go before the decoding copy runs
    if cfg.rollout.engine == "hf":
        engine = HFEngine(decoder, tokenizer, batch_size=cfg.rollout.hf_batch_size)
        prefill_s, decode_step_s = _hf_generate_times(engine, step, cfg, min(response_tokens, 16), repeats)
    else:
        prefill_s, decode_step_s = _decode_times(decoder, step, response_tokens // 2, device, repeats)
    return Calibration(len(mini), update_s, forward_s, prefill_s, decode_step_s, str(device), flops,
                       "HF generate" if cfg.rollout.engine == "hf" else "the model's forward")


def _training_times(cfg: Config, policy: torch.nn.Module, scoring: Scoring, mini: Rollouts,
                    repeats: int) -> tuple[float, float, bool]:
    """(update, no-grad pass, whether the scorer shared the prompts) of `mini`, after one warm-up
    update: a run pays kernel set-up and the optimizer state's first touch once."""
    t = cfg.train
    scorer = scoring.scorer(policy)
    optimizer, _ = build_adamw(trainable_parameters(scorer), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay,
                               implementation=t.adamw)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    update = PolicyUpdate.from_config(cfg, scorer, optimizer, scheduler, scoring.microbatches,
                                      first_minibatch_scores_itself=False)
    batch = prepare_batch(mini, scoring.microbatches, scorer)
    batch = dataclasses.replace(batch, advantages=torch.randn(len(mini), generator=torch.Generator().manual_seed(1),
                                                              dtype=torch.float64))
    update(batch)
    _, first = next(scoring.microbatches(mini.prompt_ids, mini.response_ids, list(range(len(mini)))))
    return (_fastest(lambda: update(batch), repeats),
            _fastest(lambda: prepare_batch(mini, scoring.microbatches, scorer), repeats), scorer.shares_prompts(first))


@torch.no_grad()
def _decode_times(model: torch.nn.Module, step: Rollouts, context: int, device: torch.device,
                  repeats: int) -> tuple[float, float]:
    """(prefill of the distinct prompts, one decode step of every response after `context` generated tokens)."""
    distinct = list({id(p): p for p in step.prompt_ids}.values())
    prompts = torch.tensor(distinct, device=device)
    prefill_s = _fastest(lambda: model(input_ids=prompts, use_cache=True), repeats)
    rows = torch.tensor(step.prompt_ids, device=device)
    rows = torch.cat([rows, rows[:, -1:].expand(-1, context)], 1)   # the prompt and `context` generated tokens
    cache = model(input_ids=rows, use_cache=True).past_key_values
    token = rows[:, -1:]
    position = torch.full_like(token, rows.shape[1])

    def decode_step() -> None:
        model(input_ids=token, position_ids=position, past_key_values=cache, use_cache=True)
        cache.crop(-1)  # back to the same context for the next repeat
    return prefill_s, _fastest(decode_step, max(3, repeats))


def _hf_generate_times(engine: HFEngine, step: Rollouts, cfg: Config, tokens: int,
                       repeats: int) -> tuple[float, float]:
    """(one-token generate: the prefill, and each further token's cost) of the rank's prompts x n, with
    HF generate itself; a response that stops early is counted by the length it reached."""
    prompts = list({id(p): p for p in step.prompt_ids}.values())
    n = len(step.prompt_ids) // len(prompts)

    def generate(length: int) -> Rollouts:
        return engine.generate(prompts, n, Sampling(cfg.rollout.temperature, cfg.rollout.top_p, length, seed=0))
    prefill_s = _fastest(lambda: generate(1), repeats)
    longest = max(len(r) for r in generate(tokens).response_ids)
    return prefill_s, max(_fastest(lambda: generate(tokens), repeats) - prefill_s, 0.0) / max(longest - 1, 1)


def main(argv: list[str] | None = None) -> None:
    """`python -m justrl_min.tools.calibrate RECIPE [key=value ...] --prompt-tokens P --response-tokens R`:
    the calibration as one JSON line, measured in a process set up as the trainer's would be."""
    import argparse
    import json
    import sys

    from justrl_min.config import load_recipe
    from justrl_min.tools.cpu_preload import restart_with_preload
    from justrl_min.trainer import fast_compute_dtype, resolve_device

    parser = argparse.ArgumentParser(description=main.__doc__.split("\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--prompt-tokens", type=int, required=True)
    parser.add_argument("--response-tokens", type=int, required=True)
    parser.add_argument("--ranks", type=int, default=1)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    cfg = load_recipe(args.recipe, args.overrides)
    restart_with_preload(cfg.rollout.engine, argv)  # the allocator the trainer runs under
    device = resolve_device(cfg)
    cfg = fast_compute_dtype(cfg, device, dist.DistInfo())
    print(json.dumps(dataclasses.asdict(calibrate(cfg, args.prompt_tokens, args.response_tokens, device,
                                                  args.ranks))))


if __name__ == "__main__":
    main()
