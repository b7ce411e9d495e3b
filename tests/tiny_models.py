"""Random tiny models as Hugging Face folders, for fast tests: the embedded tiny model's shape and
tokenizer (justrl_min.tiny), without its warm start."""

from pathlib import Path

import torch

from justrl_min import tiny


def save_random_model(folder: str | Path, seed: int = 0, **model_kwargs) -> Path:
    """A randomly initialised tiny causal LM + tokenizer."""
    tokenizer = tiny.build_tokenizer()
    return tiny._save(folder, tiny.build_model(tokenizer, seed, **model_kwargs), tokenizer)


def save_reward_model(folder: str | Path, seed: int = 0, *, hidden: int = 32, layers: int = 1) -> Path:
    """A randomly initialised one-label `Qwen2ForSequenceClassification` + the tiny tokenizer: the
    `reward.model` of tests (its scores are arbitrary but deterministic)."""
    from transformers import Qwen2ForSequenceClassification

    tokenizer = tiny.build_tokenizer()
    torch.manual_seed(seed)
    model = Qwen2ForSequenceClassification(tiny._config(tokenizer, hidden, layers, num_labels=1))
    return tiny._save(folder, model, tokenizer)
