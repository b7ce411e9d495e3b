"""The embedded default: a tiny causal LM, its tokenizer and a synthetic math task, all local.

Everything here is a real Hugging Face object (a `Qwen2ForCausalLM` of ~0.5M parameters and a
byte-level `PreTrainedTokenizerFast` with a chat template), saved to a folder and loaded back
with `from_pretrained`, so the CPU demo exercises exactly the code a 1.5B model goes through.

The task: "What is 3+4?" with gold "7". A randomly initialised model never writes a `\\boxed{}`
answer, so RL would see no reward at all. `prepare_warm_start` gives it a deterministic warm start:
a short supervised pass on *imperfect* worked solutions in which the boxed answer is right only
`SFT_CORRECT_FRACTION` of the time (otherwise off by a small amount). The model learns the format and
a blurred notion of addition (about 20-30% of its samples are right); the RL run then has to
sharpen it using the verifier's reward alone.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SFT_CORRECT_FRACTION = 0.3
WARM_START_VERSION = 2  # bump when the model, task or SFT recipe changes, to invalidate caches
VOCAB_SIZE = 320  # 256 bytes + specials, with room for the ones AutoTokenizer adds on reload


@dataclass(frozen=True)
class TinyProblem:
    question: str
    answer: str
    source: str = "tiny_add"


def build_tokenizer():
    """A byte-level BPE tokenizer with no merges (one token per byte) plus chat specials.

    Byte-level like Qwen2's own tokenizer, so `AutoTokenizer` (which rebuilds a `Qwen2Tokenizer`
    for a qwen2 model folder) reproduces exactly these ids after a save / load round trip.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(byte_chars)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core)
    tokenizer.add_special_tokens({"pad_token": "<pad>", "eos_token": "<|end|>",
                                  "additional_special_tokens": ["<|user|>", "<|assistant|>", "<|system|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _config(tokenizer, hidden: int, layers: int, **extra):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=VOCAB_SIZE, hidden_size=hidden, intermediate_size=4 * hidden,
                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=512, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, **extra)


def build_model(tokenizer, seed: int = 0, *, hidden: int = 128, layers: int = 2, tie_embeddings: bool = True):
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(_config(tokenizer, hidden, layers, tie_word_embeddings=tie_embeddings))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def _save(folder: str | Path, model, tokenizer) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)


# --------------------------------------------------------------------------------------------------
# The synthetic task


def _operands(count: int, seed: int, max_operand: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randint(0, max_operand), rng.randint(0, max_operand)) for _ in range(count)]


def make_problems(count: int, seed: int = 0, max_operand: int = 9) -> list[TinyProblem]:
    return [TinyProblem(f"What is {a}+{b}?", str(a + b)) for a, b in _operands(count, seed, max_operand)]


def make_mixed_problems(count: int, seed: int = 0, max_operand: int = 9) -> list[TinyProblem]:
    """`data.train: tiny_mixed`, two sources alternating: tiny_add ("What is 3+4?", gold 7) and
    tiny_estimate ("Roughly, what is 3+4?", gold 7), the second meant to be graded by `within_one`.
    The warm start never saw the second phrasing; it answers it as addition anyway (measured on the
    cached warm start: 17% exact, 46% within one, against 26% and 56% on tiny_add)."""
    return [TinyProblem(question=f"Roughly, what is {a}+{b}?" if i % 2 else f"What is {a}+{b}?", answer=str(a + b),
                        source="tiny_estimate" if i % 2 else "tiny_add")
            for i, (a, b) in enumerate(_operands(count, seed, max_operand))]


def _train_only(task):
    def problems(count: int, seed: int = 0, split: str = "train") -> list[TinyProblem]:
        if split != "train":
            raise ValueError(f"split {split!r}: this task has only `train` (the warm start saw all its sums)")
        return task(count, seed=seed)
    return problems


TASKS = {"tiny": _train_only(make_problems), "tiny_mixed": _train_only(make_mixed_problems)}
"""`data.train` names of the tiny model's tasks -> fn(count, seed, split) -> problems."""


def within_one(response: str, gold: str) -> float:
    """tiny_estimate's grader (`reward.by_source`): 1.0 when the last boxed answer is an integer at
    most 1 away from the gold, else 0.0."""
    from justrl_min.reward import extract_boxed

    answer = extract_boxed(response)
    try:
        return float(answer is not None and abs(int(answer.strip()) - int(gold)) <= 1)
    except ValueError:
        return 0.0


def solution_text(answer: str) -> str:
    return f"\\boxed{{{answer}}}"


def off_by_a_little(answer: str, rng: random.Random) -> str:
    return str(int(answer) + rng.choice([-10, -2, -1, 1, 2, 10]))


def imperfect_answer(problem: TinyProblem, rng: random.Random) -> str:
    return problem.answer if rng.random() < SFT_CORRECT_FRACTION else off_by_a_little(problem.answer, rng)


# --------------------------------------------------------------------------------------------------
# Warm start


def cache_root() -> Path:
    return Path(os.environ.get("JUSTRL_CACHE") or Path.home() / ".cache" / "justrl_min")


def default_cache_dir() -> Path:
    return cache_root() / f"tiny-warm-v{WARM_START_VERSION}"


def prepare_warm_start(folder: str | Path | None = None, *, steps: int = 800, seed: int = 0,
                       log=print) -> Path:
    """Train the tiny model on imperfect solutions once and cache it as a Hugging Face folder.

    Deterministic (fixed seeds) and idempotent: a complete folder (marked by `warm_start.json`) is
    returned as is. About 1-2 minutes on 2 CPU cores. Processes that ask at the same time (ranks
    under torchrun) wait on a file lock: one trains, the others load its result.
    """
    folder = Path(folder) if folder is not None else default_cache_dir()
    return cached_build(folder, "warm_start.json", lambda tmp: _train_warm_start(tmp, steps, seed, log))


def cached_build(folder: Path, marker: str, build) -> Path:
    """``folder``, built once by ``build(tmp_folder)`` (which writes ``marker`` last) and renamed into
    place; processes that ask at the same time wait on a file lock and reuse the result."""
    import fcntl

    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / marker).is_file():
            tmp = folder.with_name(folder.name + ".tmp")
            if tmp.exists():
                shutil.rmtree(tmp)
            build(tmp)
            if folder.exists():
                shutil.rmtree(folder)
            tmp.rename(folder)
    return folder


def _train_warm_start(folder: Path, steps: int, seed: int, log) -> None:
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed)
    rng = random.Random(seed)
    problems = make_problems(20_000, seed=seed + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    batch_size = 64
    prompt_cache: dict[str, list[int]] = {}
    log(f"tiny warm start: {steps} supervised steps on imperfect solutions -> {folder}")

    def batch_at(step: int):
        batch = [problems[(step * batch_size + i) % len(problems)] for i in range(batch_size)]
        # prompt + imperfect solution + EOS
        examples = ((p.question, target_ids(tokenizer, solution_text(imperfect_answer(p, rng)))) for p in batch)
        return pad_batch(*sft_rows(tokenizer, examples, prompt_cache), tokenizer.pad_token_id)

    supervised_steps(model, optimizer, batch_at, steps, log, "sft")
    _save(folder, model, tokenizer)
    (folder / "warm_start.json").write_text(json.dumps({"steps": steps, "seed": seed,
                                                         "version": WARM_START_VERSION}))


def supervised_steps(model, optimizer, batch_at, steps: int, log, name: str) -> None:
    """``steps`` optimizer steps on ``batch_at(step) -> (input_ids, labels)``, logging every 100."""
    model.train()
    for step in range(steps):
        input_ids, labels = batch_at(step)
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == steps - 1:
            log(f"  {name} step {step:4d}  loss {loss.item():.4f}")


def prompt_token_ids(tokenizer, question: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                         add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def target_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def sft_rows(tokenizer, examples, prompt_cache: dict[str, list[int]]) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of each (prompt text, target ids) as the chat template's prompt + the target, and
    labels (-100 on the prompt); each distinct prompt is rendered once (`prompt_cache` keeps them)."""
    rows, label_rows = [], []
    for prompt, target in examples:
        if prompt not in prompt_cache:
            prompt_cache[prompt] = prompt_token_ids(tokenizer, prompt)
        rows.append(prompt_cache[prompt] + target)
        label_rows.append([-100] * len(prompt_cache[prompt]) + target)
    return rows, label_rows


def pad_batch(rows: list[list[int]], label_rows: list[list[int]], pad_id: int):
    """(input_ids, labels) right-padded to the longest row; padding is ignored by the loss (-100)."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), -100)
    for i, (row, label_row) in enumerate(zip(rows, label_rows)):
        input_ids[i, :len(row)] = torch.tensor(row)
        labels[i, :len(row)] = torch.tensor(label_row)
    return input_ids, labels
