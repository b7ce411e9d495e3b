"""Engines on a model folder for inference only (eval.py's policy, the evaluation's judge), opened and closed.

`EngineSpec` says how to build one (which kind, dtype, device, batch and vLLM settings), once;
`spec.open(path, max_model_len)` is a context manager holding the engine for as long as it is needed
and freeing its memory after. eval.py closes the policy's engine before it opens the judge's, and
the trainer opens the judge's for each evaluation only, so two models never hold memory at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from justrl_min.rollout import HFEngine, RolloutEngine
from justrl_min.variants.vllm_engine import VLLMEngine, VLLMSettings


@dataclass(frozen=True)
class EngineSpec:
    kind: str
    """hf (transformers generate) | vllm."""
    dtype: str
    device: str
    """hf only (vLLM places itself)."""
    hf_batch_size: int = 64
    vllm: VLLMSettings = VLLMSettings(enable_sleep_mode=False)
    """max_model_len is set per open; sleep mode is off (an inference engine never yields memory mid-use)."""

    def __post_init__(self) -> None:
        if self.kind not in ("hf", "vllm"):
            raise ValueError(f"engine kind must be hf | vllm, got {self.kind!r}")

    @contextlib.contextmanager
    def open(self, path: str, max_model_len: int) -> Iterator[RolloutEngine]:
        """The engine on the model at `path` (folder, hub id or `tiny`), sized for `max_model_len` tokens."""
        from justrl_min.model import load_causal_lm, load_tokenizer, resolve_model_path

        if self.kind == "hf":
            engine = HFEngine(load_causal_lm(path, dtype=self.dtype, device=self.device, trainable=False),
                              load_tokenizer(path), batch_size=self.hf_batch_size)
            engine.model.config.use_cache = True  # loaded for scoring; generation wants its KV cache
        else:
            settings = dataclasses.replace(self.vllm, max_model_len=max_model_len, enable_sleep_mode=False)
            engine = VLLMEngine(resolve_model_path(path), settings)
        try:
            yield engine
        finally:
            engine.close()
            del engine
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
