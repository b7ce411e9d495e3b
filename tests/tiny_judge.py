"""A tiny judge for CPU tests: a real Hugging Face model that answers ``A`` or ``B`` on the tiny task.

The tiny policy's tokenizer and architecture (justrl_min.tiny, narrower), trained for about half a
minute to read a short judge prompt - the question, the response, the gold answer - and answer
``A`` when the response's boxed number is the gold and ``B`` otherwise. It learns the format fully
and the comparison partly (it agreed with the truth on 74% of 300 held-out items, saying A 229
times). The folder carries its own prompt,
``judge_prompt.txt`` (a template in ``justrl_min.eval.judge``'s format), because the tiny model cannot read
the long default one; evaluation passes it like a user passes CompassVerifier's official prompt.
It is a stand-in that exercises the judge's path (prompt, chat template, greedy generation, the
exact-``A`` rule), not a good judge: tests check what it says, not that it is always right.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from justrl_min import tiny
from justrl_min.eval.judge import JudgeItem, build_prompt

# Short on purpose: a training step costs what its tokens cost, and the build must take seconds.
TEMPLATE = "{question}{llm_response}{gold_answer}"
PROMPT_FILE = "judge_prompt.txt"
VERSION = 2  # bump when the model, the template or the training changes, to invalidate caches


def default_cache_dir() -> Path:
    return tiny.cache_root() / f"tiny-judge-v{VERSION}"


def labelled_items(count: int, seed: int) -> list[tuple[JudgeItem, str]]:
    """Tiny-task items, half with the right boxed answer (label A), half off by a little (label B)."""
    rng = random.Random(seed)
    items = []
    for problem in tiny.make_problems(count, seed=seed):
        right = rng.random() < 0.5
        answer = problem.answer if right else tiny.off_by_a_little(problem.answer, rng)
        items.append((JudgeItem(problem.question, problem.answer, tiny.solution_text(answer)), "A" if right else "B"))
    return items


def prepare_tiny_judge(folder: str | Path | None = None, *, steps: int = 400, seed: int = 0, log=print) -> Path:
    """Train the tiny judge once and cache it as a Hugging Face folder (about half a minute on 2 busy cores)."""
    folder = Path(folder) if folder is not None else default_cache_dir()
    return tiny.cached_build(folder, "judge.json", lambda tmp: _train(tmp, steps, seed, log))


def _train(folder: Path, steps: int, seed: int, log) -> None:
    tokenizer = tiny.build_tokenizer()
    model = tiny.build_model(tokenizer, seed, hidden=64, layers=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    rows, label_rows = _encode(tokenizer, labelled_items(4_000, seed=seed + 1))
    log(f"tiny judge: {steps} supervised steps -> {folder}")
    threads = torch.get_num_threads()
    # A model this small gains nothing from threads and loses much on a busy machine (measured on 2
    # shared cores: 2.0 s per step with one thread, 9.6 s with two).
    torch.set_num_threads(1)
    batch_size = 64

    def batch_at(step: int):
        picked = [(step * batch_size + i) % len(rows) for i in range(batch_size)]
        return tiny.pad_batch([rows[i] for i in picked], [label_rows[i] for i in picked], tokenizer.pad_token_id)

    try:
        tiny.supervised_steps(model, optimizer, batch_at, steps, log, "judge")
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / PROMPT_FILE).write_text(TEMPLATE)
    (folder / "judge.json").write_text(json.dumps({"steps": steps, "seed": seed, "version": VERSION}))


def _encode(tokenizer, items: list[tuple[JudgeItem, str]]) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of prompt + verdict + EOS, and labels (-100 on the prompt); the tiny task has a few
    hundred distinct prompts."""
    verdict_ids = {label: tiny.target_ids(tokenizer, label) for label in ("A", "B")}
    return tiny.sft_rows(tokenizer, ((build_prompt(item, TEMPLATE), verdict_ids[label]) for item, label in items), {})
