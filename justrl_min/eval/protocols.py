"""The JustRL paper's two evaluation protocols, the grader that scores each, and the judge stage.

The paper's numbers come from two pipelines that differ by several points (thunlp/JustRL issue 6:
AIME24 58.59 on the Fig. 1 curve at step 4,860, 54.06 under the table's pipeline):

- `justrl-table` (Table 3, built on POLARIS): the eval prompt (`evaluate.EVAL_SUFFIX`); DeepScaleR's
  rule grader (`reward.mode=deepscaler`); every response it rejects goes, in full, to a model
  verifier (CompassVerifier-3B in the paper; `--judge PATH`), greedy, at most 2,048 new tokens,
  whose output must be exactly `A`. Up to 31,744 new tokens per response.
- `justrl-val` (Fig. 1): verl's in-training validation, math-verify searching the whole response for
  its answer with no box required (`reward.mode=unboxed`); the training prompt
  (`config.BOXED_SUFFIX`); no judge; responses as long as training's, 15,360 tokens (verl
  validates with the rollout's response length).

A protocol fixes the grading (grader, judge or none, prompt); naming a different grader, or a judge
for a protocol without one, is an error. Sampling (n, temperature, top-p, max tokens) keeps its own
flags, whose defaults are the paper's; a protocol only changes the max-tokens default, and an explicit
value wins (smoke runs need short responses), recorded in results.json like every setting.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from justrl_min.config import BOXED_SUFFIX
from justrl_min.eval.evaluate import EVAL_SUFFIX, BenchmarkRun
from justrl_min.eval.inference import EngineSpec
from justrl_min.eval.judge import JUDGE_MAX_NEW_TOKENS, JudgeItem, Verdict, engine_generate, judge, load_template
from justrl_min.eval.judge import longest_prompt as longest_judge_prompt
from justrl_min.reward import GRADERS

DEFAULT_GRADER = "math-verify"
DEFAULT_MAX_TOKENS = 31744


@dataclass(frozen=True)
class Protocol:
    grader: str
    judged: bool
    """A judge model must be named (`--judge`): the protocol asks one about every rejected response."""
    prompt_suffix: str
    max_tokens: int


PROTOCOLS = {
    "justrl-table": Protocol("deepscaler", True, EVAL_SUFFIX, 31744),
    "justrl-val": Protocol("math-verify-unboxed", False, BOXED_SUFFIX, 15360),
}


@dataclass(frozen=True)
class Grading:
    """What an evaluation grades with, resolved from a protocol and explicit choices."""
    protocol: str | None
    grader: str
    judge: str | None
    judge_prompt: str | None
    prompt_suffix: str
    max_tokens: int


def resolve(protocol: str | None = None, *, grader: str | None = None, judge: str | None = None,
            judge_prompt: str | None = None, max_tokens: int | None = None) -> Grading:
    """A protocol's grading with the explicit choices (None: not given) applied; ValueError, naming
    the flag, for a choice the protocol contradicts."""
    if grader is not None and grader not in GRADERS:
        raise ValueError(f"--grader {grader!r}: choose from {', '.join(GRADERS)}")
    if judge_prompt and not judge:
        raise ValueError("--judge-prompt needs --judge (the model the prompt is for)")
    if protocol is None:
        return Grading(None, grader or DEFAULT_GRADER, judge or None, judge_prompt or None, EVAL_SUFFIX,
                       max_tokens or DEFAULT_MAX_TOKENS)
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol {protocol!r}: choose from {', '.join(PROTOCOLS)}")
    chosen = PROTOCOLS[protocol]
    if grader is not None and grader != chosen.grader:
        raise ValueError(f"--grader {grader} conflicts with --protocol {protocol}, which grades with "
                         f"{chosen.grader}; drop one of them")
    if chosen.judged and not judge:
        raise ValueError(f"--protocol {protocol} needs --judge PATH: the model verifier asked about every "
                         "response the grader rejects (the paper: CompassVerifier-3B, with its official "
                         "prompt as --judge-prompt FILE)")
    if judge and not chosen.judged:
        raise ValueError(f"--judge conflicts with --protocol {protocol}, which has no judge; drop one of them")
    return Grading(protocol, chosen.grader, judge or None, judge_prompt or None, chosen.prompt_suffix,
                   max_tokens or chosen.max_tokens)


@dataclass(frozen=True)
class Judged:
    verdicts: dict[str, list[Verdict | None]]
    """Per benchmark, one entry per sample: the judge's verdict, or None where the grader accepted."""
    seconds: dict[str, float]


@dataclass(frozen=True)
class Judge:
    """A model verifier on an engine of the generation's kind, opened only while it judges."""
    path: str
    template: str
    """From `judge.load_template`: without a file, `judge.DEFAULT_TEMPLATE` (not CompassVerifier's official wording)."""
    engine: EngineSpec
    seed: int = 0

    @classmethod
    def for_training(cls, cfg, device) -> Judge:
        """`eval.judge` with `eval.judge_prompt`, on an engine of `rollout.engine`'s kind (a
        `config.Config`; `device` is the trainer's). Opened per evaluation: between evaluations
        the trainer has the memory."""
        import torch

        from justrl_min.variants.vllm_engine import VLLMSettings

        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        spec = EngineSpec(cfg.rollout.engine, cfg.model.compute_dtype or cfg.model.dtype, str(device),
                          cfg.rollout.hf_batch_size, VLLMSettings.from_config(cfg, distributed))
        return cls(cfg.eval.judge, load_template(cfg.eval.judge_prompt), spec, cfg.run.seed)

    def judge_rejected(self, runs: list[BenchmarkRun]) -> Judged:
        """Ask about every response the grader rejected, all benchmarks in one engine session; each
        distinct (question, gold, response) once (greedy decoding gives it one verdict)."""
        from justrl_min.model import load_tokenizer

        asked: dict[JudgeItem, list[tuple[str, int]]] = {}
        for run in runs:
            for s, (text, score) in enumerate(zip(run.texts, run.grader_scores, strict=True)):
                if score <= 0:
                    problem = run.problems[s // run.n]
                    asked.setdefault(JudgeItem(problem.problem, problem.answer, text), []).append((run.name, s))
        verdicts: dict[str, list[Verdict | None]] = {run.name: [None] * len(run.texts) for run in runs}
        started = time.monotonic()
        if asked:
            tokenizer = load_tokenizer(self.path)
            items = list(asked)
            # The judge's own context bounds its verdict's length: vLLM refuses a longer max_model_len,
            # and stops a response at the one it has (a verdict is a few tokens; the tiny judge has 512).
            context = longest_judge_prompt(items, tokenizer, self.template) + JUDGE_MAX_NEW_TOKENS
            context = min(context, _context_length(self.path) or context)
            with self.engine.open(self.path, context) as engine:
                answers = judge(items, engine_generate(engine, tokenizer, seed=self.seed), self.template)
            for item, verdict in zip(items, answers, strict=True):
                for name, s in asked[item]:
                    verdicts[name][s] = verdict
        elapsed = time.monotonic() - started
        # Time is shared by sample count: the engine session judges every benchmark at once.
        asked_per_run = {run.name: sum(v is not None for v in verdicts[run.name]) for run in runs}
        total = sum(asked_per_run.values()) or 1
        return Judged(verdicts, {name: elapsed * count / total for name, count in asked_per_run.items()})


def _context_length(path: str) -> int | None:
    """The positions the model at `path` was built for (`max_position_embeddings`), if its config says."""
    from transformers import AutoConfig

    from justrl_min.model import resolve_model_path

    return getattr(AutoConfig.from_pretrained(resolve_model_path(path)), "max_position_embeddings", None)
