"""The model verifier ("judge") of JustRL's Table 3 pipeline: its prompt, its verdicts, no engine.

JustRL grades each evaluation response with DeepScaleR's rule grader and sends the responses the
rule rejects to CompassVerifier-3B (open-compass/CompassVerifier, arXiv 2508.03686). The judge
reads the question, the gold answer and the *full* response, and answers with one label:
``A`` correct, ``B`` incorrect, ``C`` invalid (cut off, repetitive, a refusal). It decodes greedily,
at most ``JUDGE_MAX_NEW_TOKENS`` new tokens, through its own chat template; a response counts as
correct only when the judge's output, stripped of surrounding white space, is exactly ``A``.

``DEFAULT_TEMPLATE`` is this project's own prompt with the same structure and labels as
CompassVerifier's (criteria, the three labels, then the question, gold and response in delimited
blocks). It is not CompassVerifier's official wording, which the model was trained on: a user
with the real CompassVerifier should pass its official prompt as a file (``load_template(path)``;
the config key ``eval.judge_prompt``). A template is a ``str.format`` string with the fields
``{question}``, ``{gold_answer}`` and ``{llm_response}`` (CompassVerifier's names, so its prompt
drops in as it is); literal braces are doubled (``\\boxed{{}}``).

The engine is plugged in by the caller: ``judge`` takes ``generate(prompts) -> outputs``, one output
text per user-message text, and expects it to apply the judge's chat template and decode greedily
within ``JUDGE_MAX_NEW_TOKENS``. ``engine_generate`` is such a callable on a rollout engine (HF or
vLLM, ``justrl_min.rollout``); the evaluation opens one on the judge model (``justrl_min.eval.evaluate``).
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

JUDGE_MAX_NEW_TOKENS = 2048
CORRECT_LABEL = "A"
LABELS = ("A", "B", "C")
TEMPLATE_FIELDS = frozenset(("question", "gold_answer", "llm_response"))

DEFAULT_TEMPLATE = """You are grading a student's answer to a math problem against the reference answer.

Rules:
1. The reference answer is correct and the problem is well posed. Do not solve the problem again;
   only decide whether the student's final answer agrees with the reference answer.
2. Judge the final answer only. Mistakes in the reasoning do not matter.
3. The same value may be written in different forms (a fraction or a decimal, an expanded or a
   factored expression, with or without units). Count it as agreeing when it means the same thing.
4. When the reference answer has several parts, every part must agree.
5. If the final answer is inside \\boxed{{}}, judge what is inside the box.
6. If the response is invalid (it is cut off before it finishes, it repeats itself without end, or
   it declines to answer), choose C.

Labels:
A: CORRECT
B: INCORRECT
C: INVALID
Reply with the single letter A, B or C and nothing else.

[Problem]
{question}
[End of problem]

[Reference answer]
{gold_answer}
[End of reference answer]

[Student response]
{llm_response}
[End of student response]

Your label:"""


@dataclass(frozen=True)
class JudgeItem:
    question: str
    gold: str
    response: str
    """The full response, reasoning included (the judge must see a cut-off or looping one)."""


@dataclass(frozen=True)
class Verdict:
    correct: bool
    """True only when the judge's output, stripped, is exactly ``A``."""
    label: str
    """A, B or C when the stripped output is one of them, else empty."""
    output: str


def check_template(template: str, source: str = "judge prompt") -> str:
    """``template`` itself, after checking it has exactly the fields the judge fills; errors name ``source``."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:  # a lone "{" or "}": literal braces must be doubled
        raise ValueError(f"{source}: not a str.format template ({e}); write literal braces as {{{{ }}}}") from None
    if any(not name or name.isdigit() for name in fields):
        raise ValueError(f"{source}: has a positional field such as {{}}; write literal braces as {{{{ }}}}")
    missing, unknown = TEMPLATE_FIELDS - fields, fields - TEMPLATE_FIELDS
    if missing or unknown:
        raise ValueError(f"{source}: a judge prompt needs the fields {{question}}, {{gold_answer}} and "
                         f"{{llm_response}}; missing {sorted(missing)}, unknown {sorted(unknown)}")
    return template


def load_template(path: str | Path | None) -> str:
    """The template in the file at ``path`` (checked), or ``DEFAULT_TEMPLATE`` when ``path`` is empty."""
    if not path:
        return DEFAULT_TEMPLATE
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"judge prompt not found: {path}")
    return check_template(path.read_text(), source=str(path))


def build_prompt(item: JudgeItem, template: str = DEFAULT_TEMPLATE) -> str:
    """The judge's user message for one response (the chat template is the generator's job)."""
    return template.format(question=item.question, gold_answer=item.gold, llm_response=item.response)


def parse_verdict(output: str) -> Verdict:
    stripped = output.strip()
    return Verdict(correct=stripped == CORRECT_LABEL, label=stripped if stripped in LABELS else "", output=output)


def judge(items: Sequence[JudgeItem], generate: Callable[[list[str]], list[str]],
          template: str = DEFAULT_TEMPLATE) -> list[Verdict]:
    """The judge's verdict on each item, in order: one ``generate`` call over all the prompts."""
    if not items:
        return []
    outputs = generate([build_prompt(item, template) for item in items])
    if len(outputs) != len(items):
        raise ValueError(f"judge generate() returned {len(outputs)} outputs for {len(items)} prompts")
    return [parse_verdict(output) for output in outputs]


def chat_prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of ``prompt`` as one user turn through the judge's chat template, ready for generation."""
    from justrl_min.data import build_prompt_ids

    return build_prompt_ids(tokenizer, prompt, "")


def longest_prompt(items: Sequence[JudgeItem], tokenizer, template: str = DEFAULT_TEMPLATE) -> int:
    """Tokens of the longest judge prompt (sizes the judge engine's context: this + the new tokens)."""
    return max((len(chat_prompt_ids(tokenizer, build_prompt(item, template))) for item in items), default=0)


def engine_generate(engine, tokenizer, *, seed: int = 0,
                    max_new_tokens: int = JUDGE_MAX_NEW_TOKENS) -> Callable[[list[str]], list[str]]:
    """A ``generate`` for ``judge`` on a rollout engine (``justrl_min.rollout``, HF or vLLM): each prompt
    through the judge's chat template, one greedy sample of at most ``max_new_tokens``, decoded
    without special tokens."""
    from justrl_min.rollout import Sampling

    greedy = Sampling(temperature=0.0, top_p=1.0, max_tokens=max_new_tokens, seed=seed)

    def generate(prompts: list[str]) -> list[str]:
        prompt_ids = [chat_prompt_ids(tokenizer, p) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(prompt_ids[i]))  # HF batches pad little
        rollouts = engine.generate([prompt_ids[i] for i in order], 1, greedy)
        texts = tokenizer.batch_decode(rollouts.response_ids, skip_special_tokens=True)
        return [text for _, text in sorted(zip(order, texts, strict=True))]

    return generate
