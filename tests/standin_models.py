"""Stand-in model folders for tests, built once per session (or once per `JUSTRL_CACHE`).

- `narrow_standin`: `justrl_min.tools.standin`'s narrow test variant of DeepSeek-R1-Distill-Qwen-1.5B, one
  layer: the real tokenizer, chat template, special tokens and 151,936-row vocabulary, a 128-wide body
  (the faithful 1536-wide shape is ~0.56B parameters even at one layer; too slow to train in tests).
- `rig_constant_next_token`: a copy whose next-token distribution is the same known one at every
  position, whatever the context, so tests can rely on what a random model only does by chance:
  EOS often (P_EOS), ids of the 271-row gap often (P_GAP), and exact log-probs to compare with.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from pathlib import Path

import torch

from justrl_min.tools import standin

ROOT = Path(__file__).resolve().parents[1]
NAME = "deepseek-r1-distill-qwen-1.5b"
TOKENS = 151_665
"""len(tokenizer); embedding rows TOKENS .. VOCAB_ROWS - 1 have no token (the gap)."""
GAP = range(TOKENS, standin.VOCAB_ROWS)
EOS = 151_643
P_EOS = 0.15
P_GAP = 0.35
"""Total probability of the gap's 271 ids, shared equally; the rest is spread over every real token."""


def _version() -> str:
    sources = b"".join((ROOT / p).read_bytes() for p in ("justrl_min/tools/standin.py", "tests/standin_models.py"))
    return hashlib.sha256(sources).hexdigest()[:12]


def cache_root(tmp_path_factory) -> Path:
    cache = os.environ.get("JUSTRL_CACHE")
    return Path(cache) / "standin" if cache else tmp_path_factory.mktemp("standin")


def _once(folder: Path, build) -> Path:
    """Build into a temporary sibling and rename, so an interrupted build is never reused."""
    if not (folder / "standin.json").is_file():
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        build(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return folder


def narrow_standin(root: Path) -> Path:
    return _once(root / f"narrow-l1-{_version()}",
                 lambda out: standin.write_standin(NAME, out, layers=1, seed=0, narrow=True))


def target_logits() -> torch.Tensor:
    """(VOCAB_ROWS,) log-probabilities: P_EOS on EOS, P_GAP over the gap, the rest over the other tokens."""
    logits = torch.full((standin.VOCAB_ROWS,), math.log((1 - P_EOS - P_GAP) / (TOKENS - 1)), dtype=torch.float64)
    logits[EOS] = math.log(P_EOS)
    logits[GAP.start:] = math.log(P_GAP / len(GAP))
    return logits


def rig_constant_next_token(source: Path, root: Path) -> Path:
    def build(out: Path) -> None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        with torch.no_grad():
            # Every token embedded alike: attention then averages identical values, so every position
            # of every sequence ends in the same hidden state h, and the head maps h to the target.
            embed = model.model.embed_tokens.weight
            embed.copy_(embed[:1].expand_as(embed))
            h = model.model(input_ids=torch.zeros(1, 1, dtype=torch.long)).last_hidden_state[0, -1].double()
            model.lm_head.weight.copy_(torch.outer(target_logits(), h / h.dot(h)).float())
        model.save_pretrained(out)
        for f in source.iterdir():
            if f.name not in ("model.safetensors", "config.json"):
                shutil.copy(f, out / f.name)
        shutil.copy(source / "config.json", out / "config.json")  # the stand-in's own, not transformers'

    return _once(root / f"rigged-{_version()}", build)
