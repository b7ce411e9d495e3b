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
from typing import ContextManager

import torch

from justrl_min.rollout import HFEngine, RolloutEngine, VLLMEngine, VLLMSettings


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
        if self.kind not in _OPENERS:
            raise ValueError(f"engine kind must be {' | '.join(_OPENERS)}, got {self.kind!r}")

    def open(self, path: str, max_model_len: int) -> ContextManager[RolloutEngine]:
        """The engine on the model at `path` (folder, hub id or `tiny`), sized for `max_model_len` tokens."""
        return _OPENERS[self.kind](self, path, max_model_len)


@contextlib.contextmanager
def _open_hf(spec: EngineSpec, path: str, _max_model_len: int) -> Iterator[RolloutEngine]:
    from justrl_min.model import load_causal_lm, load_tokenizer

    model = load_causal_lm(path, dtype=spec.dtype, device=spec.device, trainable=False)
    model.config.use_cache = True  # loaded for scoring; generation wants its KV cache
    try:
        yield HFEngine(model, load_tokenizer(path), batch_size=spec.hf_batch_size)
    finally:
        del model
        _release_memory()


@contextlib.contextmanager
def _open_vllm(spec: EngineSpec, path: str, max_model_len: int) -> Iterator[RolloutEngine]:
    from justrl_min.model import resolve_model_path

    settings = dataclasses.replace(spec.vllm, max_model_len=max_model_len, enable_sleep_mode=False)
    engine = VLLMEngine(resolve_model_path(path), settings)
    try:
        yield engine
    finally:
        engine.close()
        del engine
        _release_memory()


_OPENERS = {"hf": _open_hf, "vllm": _open_vllm}


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
