"""Problem sets: loading, schema adapters, prompt building and a seeded, resumable sampler.

Sources: `tiny`, `tiny_mixed` or `times_tables` (the synthetic tasks, `SYNTHETIC_TASKS`), a hub id
(`datasets.load_dataset`), or a local parquet / jsonl / json file or a folder of them. Schemas, detected per row set:

- verl (DAPO-Math-17k, the JustRL benchmark files): `prompt` = chat messages, gold in
  `reward_model.ground_truth` (sometimes stored as `\\boxed{204}`, unwrapped to `204`).
- MathArena: `problem`, `answer`.   - MATH: `problem`, `answer` (or a boxed answer in `solution`).
- math-ai's hub copies: `question`, `answer` (OlympiadBench: a list in `final_answer`).

`data/prepare.py` writes every set in one schema (`id`, `problem`, `answer`, `source`), read here as MATH.

DAPO-Math-17k wraps each problem in its own "Answer: $Answer" instruction, which contradicts the
boxed suffix; `strip_dapo_instruction` removes it so the prompt is problem + suffix as in JustRL.
"""

from __future__ import annotations

import importlib
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from justrl_min.reward import extract_boxed, unbox_gold

LOCAL_SUFFIXES = (".parquet", ".jsonl", ".json")
MANIFEST = "manifest.json"
"""What `data/prepare.py` writes beside each file; not a problem file, so folders skip it."""
DAPO_PREFIX = re.compile(
    r"^\s*Solve the following math problem step by step\. The last line of your response should be "
    r"of the form Answer: \$Answer \(without quotes\) where \$Answer is the answer to the problem\.\s*",
)
DAPO_SUFFIX = re.compile(r"\s*Remember to put your answer on its own line after \"Answer:\"\.?\s*$")


class DataError(ValueError):
    """A data source or row that cannot be used, with the file / row named."""


SYNTHETIC_TASKS = {"tiny": "justrl_min.tiny", "tiny_mixed": "justrl_min.tiny", "times_tables": "justrl_min.arithmetic"}
"""`data.train` names generated locally -> the module whose TASKS make them (imported when named)."""


@dataclass(frozen=True)
class Problem:
    uid: str
    problem: str
    """The problem statement (or the full user message for chat-formatted rows)."""
    answer: str
    """The gold answer, unwrapped from `\\boxed{}`."""
    source: str = ""
    """Where the row comes from (its `data_source` or `source` column; a tiny task's name): what
    `reward.by_source` picks a grader by and per-source metrics are named after. Empty if unknown."""


def load_problems(source: str, *, split: str = "train", strip_dapo_instruction: bool = True,
                  dedup: bool = False, tiny_problems: int = 2000, seed: int = 0,
                  revision: str | None = None) -> list[Problem]:
    """All problems of a source, in file order. Rows without a gold answer are errors.

    ``revision`` pins a hub dataset to a commit (ignored for local files)."""
    if source in SYNTHETIC_TASKS:
        task = importlib.import_module(SYNTHETIC_TASKS[source]).TASKS[source]
        try:
            generated = task(tiny_problems, seed=seed, split=split)
        except ValueError as e:
            raise DataError(f"data.train={source}: {e}") from None
        return [Problem(f"{source}-{i}", p.question, p.answer, p.source) for i, p in enumerate(generated)]
    rows, origin = _read_rows(source, split, revision)
    problems = [_to_problem(row, f"{origin} row {i}", i, strip_dapo_instruction) for i, row in enumerate(rows)]
    if not problems:
        raise DataError(f"{origin}: no rows")
    return dedup_problems(problems) if dedup else problems


def dedup_problems(problems: list[Problem]) -> list[Problem]:
    """The first row of each distinct problem text, in order (DAPO-Math-17k repeats each ~100 times)."""
    seen: set[str] = set()
    return [p for p in problems if not (p.problem in seen or seen.add(p.problem))]


def _read_rows(source: str, split: str, revision: str | None = None) -> tuple[list[dict[str, Any]], str]:
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.suffix in LOCAL_SUFFIXES and f.name != MANIFEST)
        matching = [f for f in files if split in f.stem] or files
        if not matching:
            raise DataError(f"{path}: no .parquet/.jsonl/.json files in this folder")
        return [row for f in matching for row in _read_file(f)], str(path)
    if path.suffix in LOCAL_SUFFIXES or path.exists() or source.startswith((".", "/", "~")):
        if not path.is_file():
            raise DataError(f"data file not found: {path}")
        return _read_file(path), str(path)
    return read_hub_rows(source, split, revision), source


def _read_file(path: Path) -> list[dict[str, Any]]:
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        if path.suffix == ".jsonl":
            rows = []
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path} line {n}: not valid JSON: {e}") from None
            return rows
        data = json.loads(path.read_text())
    except DataError:
        raise
    except Exception as e:  # pyarrow / json raise many types; all mean "unreadable file"
        raise DataError(f"{path}: cannot read: {e}") from None
    if isinstance(data, dict):  # {"data": [...]} or column-oriented {"problem": [...], ...}
        if len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))
        elif all(isinstance(v, list) for v in data.values()):
            data = [dict(zip(data, values)) for values in zip(*data.values())]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of rows")
    return data


def read_hub_rows(hub_id: str, split: str, revision: str | None = None,
                  instead: str = "a local parquet/jsonl file or folder") -> list[dict[str, Any]]:
    """A hub dataset's rows; DataError naming the id, and `instead` as the way round, if it cannot load."""
    import datasets

    try:
        pinned = {"revision": revision} if revision else {}
        return list(datasets.load_dataset(hub_id, split=split, **pinned))
    except Exception as e:  # network, auth, missing split: all fatal, all need the id named
        raise DataError(f"cannot load hub dataset {hub_id!r} split {split!r}: {e}. Pass {instead} instead.") from None


def _to_problem(row: dict[str, Any], where: str, index: int, strip_dapo: bool) -> Problem:
    if "prompt" in row and "reward_model" in row:  # verl
        problem = _user_message(row["prompt"], where)
        reward_model = row["reward_model"] or {}
        gold = reward_model.get("ground_truth") if isinstance(reward_model, dict) else None
        extra = row.get("extra_info") or {}
        uid = str(extra.get("index", index)) if isinstance(extra, dict) else str(index)
    elif "problem" in row or "question" in row:  # MathArena, MATH, math-ai
        problem = row["problem"] if "problem" in row else row["question"]
        gold = row.get("answer", row.get("final_answer"))
        if gold in (None, "") and row.get("solution"):
            gold = extract_boxed(row["solution"])
        uid = str(row.get("problem_idx", row.get("unique_id", row.get("id", index))))
    else:
        raise DataError(f"{where}: unknown schema with columns {sorted(row)}; expected verl "
                        f"(prompt, reward_model.ground_truth) or problem/answer")
    gold = clean_gold(gold)
    origin = row.get("data_source", row.get("source"))
    if not gold:
        raise DataError(f"{where}: no gold answer")
    if not isinstance(problem, str) or not problem.strip():
        raise DataError(f"{where}: empty problem")
    if strip_dapo:
        problem = strip_dapo_wrapper(problem)
    return Problem(uid=uid, problem=problem, answer=gold, source=str(origin) if origin is not None else "")


def _user_message(prompt: Any, where: str) -> str:
    if isinstance(prompt, str):
        return prompt
    try:
        return next(m["content"] for m in prompt if m.get("role") == "user")
    except (StopIteration, TypeError, AttributeError):
        raise DataError(f"{where}: `prompt` has no user message") from None


def clean_gold(gold: Any) -> str:
    """A gold answer as a plain string: numbers stringified (27.0 as 27), `\\boxed{x}` and `$x$` unwrapped to `x`."""
    if gold is None:
        return ""
    if isinstance(gold, (list, tuple)):
        gold = gold[0] if len(gold) == 1 else ", ".join(map(clean_gold, gold))
    if isinstance(gold, float) and gold.is_integer():
        gold = int(gold)
    text = unbox_gold(str(gold).strip()).strip()
    if len(text) > 2 and text[0] == text[-1] == "$" and "$" not in text[1:-1]:  # OlympiadBench writes "$3$"
        text = text[1:-1].strip()
    return text


def strip_dapo_wrapper(problem: str) -> str:
    return DAPO_SUFFIX.sub("", DAPO_PREFIX.sub("", problem)).strip()


# --------------------------------------------------------------------------------------------------
# Prompts


def build_prompt_ids(tokenizer, problem: str, suffix: str, example: Sequence[str] = ()) -> list[int]:
    """Token ids of the chat-formatted user turn `problem + suffix`, ready for generation. `example`,
    empty or (question, answer), is one solved problem shown before it: a user turn asking the question
    with the same suffix and the assistant's turn answering it."""
    shown = [{"role": "user", "content": example[0] + suffix}, {"role": "assistant", "content": example[1]}] \
        if example else []
    messages = [*shown, {"role": "user", "content": problem + suffix}]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        text = "\n".join(m["content"] for m in messages)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class PromptSet:
    problems: list[Problem]
    prompt_ids: list[list[int]]
    dropped_too_long: int


def tokenize_problems(problems: list[Problem], tokenizer, suffix: str, max_prompt_length: int,
                      example: Sequence[str] = ()) -> PromptSet:
    """Tokenize every prompt; prompts over `max_prompt_length` tokens are dropped and counted."""
    ids = [build_prompt_ids(tokenizer, p.problem, suffix, example) for p in problems]
    kept = [i for i, prompt_ids in enumerate(ids) if len(prompt_ids) <= max_prompt_length]
    if not kept:
        raise DataError(f"every prompt is longer than data.max_prompt_length={max_prompt_length}")
    return PromptSet([problems[i] for i in kept], [ids[i] for i in kept], len(problems) - len(kept))


class EpochSampler:
    """Seeded shuffling without replacement, epoch after epoch; its state is two integers."""

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        order = list(range(self.size))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def next_batch(self, count: int) -> list[int]:
        batch = []
        while len(batch) < count:
            if self.position == self.size:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation()
            take = min(count - len(batch), self.size - self.position)
            batch += self._order[self.position:self.position + take]
            self.position += take
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "size": self.size, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["size"] != self.size or state["seed"] != self.seed:
            raise DataError(f"checkpoint sampler was built for {state['size']} problems with seed "
                            f"{state['seed']}, this run has {self.size} with seed {self.seed}")
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._permutation()
