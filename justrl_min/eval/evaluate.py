"""Benchmark evaluation with the JustRL paper's protocol, and the metrics it reports.

Protocol (JustRL paper, arXiv 2512.16649): avg@32 on AIME24, AIME25, AMC23, HMMT25, BRUMO25 and
CMIMC25, avg@4 on MATH-500, Minerva and OlympiadBench; temperature 0.7, top-p 0.9, up to 31,744 new
tokens; the prompt is `"{problem} Please reason step by step, and put your final answer within
\\boxed{}."` (one space, unlike the training suffix's blank line) through the chat template. Responses
are graded by the `VerifierPool` passed in (the training verifier, unless a grader is named), and,
with a judge, every response the grader rejects goes to a model verifier whose exact `A` counts as
correct. The paper's two grading protocols (its table, its Fig. 1 curve) are `protocols.PROTOCOLS`.
Each benchmark samples from its own seed, derived from the run's (`benchmark_seed`).

Metrics per benchmark, each a fraction in [0, 1] averaged over problems:

- `avg@n`: mean correctness of the n samples (the paper's number).
- `pass@k` for k in {1, 4, n} (those <= n): the unbiased estimator 1 - C(n-c, k) / C(n, k) of the
  chance that at least one of k samples is correct, given c correct out of n. pass@1 equals avg@n.
- `maj@n`: majority vote over the extracted answers (equal after `normalize_answer`; samples without
  a box do not vote; ties go to the answer seen first), correct when the voted answer is.
- `grader_avg@n`: avg@n under the grader alone; with a judge, avg@n counts the judge's rescues too,
  and `judge_asked` / `judge_rescued` count the responses sent to it and those it called correct.
- `response_length_mean` (tokens, over all samples) and `truncated_frac` (stopped at max_tokens).

`results["overall"]["avg"]` is the mean of the per-benchmark avg@n, the paper's "Avg" column.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager

from justrl_min.data import DataError, Problem, build_prompt_ids, clean_gold, load_problems, read_hub_rows
from justrl_min.eval.judge import LABELS
from justrl_min.reward import GRADERS, VerifierPool, extract_boxed
from justrl_min.rollout import Sampling

EVAL_SUFFIX = " Please reason step by step, and put your final answer within \\boxed{}."
LOCAL_FILE = "test.parquet"


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    """Column header in the results table, as the paper writes it."""
    hub_id: str
    split: str
    folder: str
    """Folder under a data dir holding `test.parquet` (the JustRL repository's layout)."""
    n: int
    """Samples per problem in the paper's protocol."""
    problem_field: str = "problem"
    answer_field: str = "answer"
    """Column names in the hub copy (the local JustRL files are verl / MathArena schema)."""


# Hub field names: math-ai's copies call the statement `question`, and OlympiadBench keeps its gold
# as a list in `final_answer` (as public loaders of these sets read them; the hub was not reachable
# when this table was written, so a renamed column fails loudly in `_load_renamed_hub`).
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("aime24", "AIME24", "HuggingFaceH4/aime_2024", "train", "AIME24", 32),
    Benchmark("aime25", "AIME25", "MathArena/aime_2025", "train", "AIME25", 32),
    Benchmark("amc23", "AMC23", "math-ai/amc23", "test", "AMC23", 32, problem_field="question"),
    Benchmark("math500", "MATH-500", "HuggingFaceH4/MATH-500", "test", "MATH-500", 4),
    Benchmark("minerva", "Minerva", "math-ai/minervamath", "test", "Minerva", 4, problem_field="question"),
    Benchmark("olympiadbench", "OlympiadBench", "math-ai/olympiadbench", "test", "Olympiad-Bench", 4,
              problem_field="question", answer_field="final_answer"),
    Benchmark("hmmt25", "HMMT25", "MathArena/hmmt_feb_2025", "train", "HMMT25", 32),
    Benchmark("brumo25", "BRUMO25", "MathArena/brumo_2025", "train", "BRUMO25", 32),
    Benchmark("cmimc25", "CMIMC25", "MathArena/cmimc_2025", "train", "CMIMC25", 32),
)}


def resolve_benchmarks(names: str | Sequence[str]) -> list[str]:
    """`"all"`, `"aime24,amc23"` or a list of names -> registry names, in the order given."""
    if isinstance(names, str):
        names = [names]
    wanted = [part.strip().lower() for name in names for part in name.split(",") if part.strip()]
    if not wanted:
        raise ValueError(f"no benchmark named; choose from: all, {', '.join(BENCHMARKS)}")
    if "all" in wanted:
        return list(BENCHMARKS)
    unknown = [name for name in wanted if name not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark {', '.join(map(repr, unknown))}; "
                         f"valid names: all, {', '.join(BENCHMARKS)}")
    return list(dict.fromkeys(wanted))


def load_benchmark(name: str, data_dir: str | Path | None = None, max_problems: int | None = None) -> list[Problem]:
    """A benchmark's problems from `data_dir/<folder>/test.parquet`, or from the hub without one."""
    bench = BENCHMARKS[name]
    if data_dir:
        path = Path(data_dir).expanduser() / bench.folder / LOCAL_FILE
        if not path.is_file():
            raise DataError(f"benchmark {name}: data file not found: {path} (expected "
                            f"<data-dir>/{bench.folder}/{LOCAL_FILE}; omit the data dir to load {bench.hub_id})")
        problems = load_problems(str(path), split="test", strip_dapo_instruction=False)
    elif (bench.problem_field, bench.answer_field) == ("problem", "answer"):
        problems = load_problems(bench.hub_id, split=bench.split, strip_dapo_instruction=False)
    else:
        problems = _load_renamed_hub(bench)
    return problems[:max_problems] if max_problems else problems


def _load_renamed_hub(bench: Benchmark) -> list[Problem]:
    problems = []
    rows = read_hub_rows(bench.hub_id, bench.split, instead=f"a data dir with {bench.folder}/{LOCAL_FILE}")
    for i, row in enumerate(rows):
        if bench.problem_field not in row or bench.answer_field not in row:
            raise DataError(f"{bench.hub_id} row {i}: expected columns {bench.problem_field!r} and "
                            f"{bench.answer_field!r}, found {sorted(row)}")
        gold = clean_gold(row[bench.answer_field])  # also unwraps OlympiadBench's "$3$"
        if not gold:
            raise DataError(f"{bench.hub_id} row {i}: no gold answer")
        problems.append(Problem(str(row.get("id", i)), row[bench.problem_field], gold))
    return problems


# --------------------------------------------------------------------------------------------------
# Metrics (pure)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from c correct of n samples: 1 - C(n-c, k) / C(n, k).

    As a product, 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms the huge binomials.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def pass_ks(n: int) -> list[int]:
    """The k reported for n samples: 1, 4 and n, those not above n."""
    return sorted({k for k in (1, 4, n) if k <= n})


_LATEX_NOISE = re.compile(r"\\left|\\right|\\[,;:! ]|\\displaystyle|\s+")
_LATEX_SYNONYMS = ((r"\dfrac", r"\frac"), (r"\tfrac", r"\frac"), ("^\\circ", ""), ("^{\\circ}", ""))


def normalize_answer(answer: str) -> str:
    """A voting key: the same answer written with different spacing or cosmetic LaTeX maps to one string.

    Only cosmetic differences are removed (spaces, `\\left`/`\\right`, thin spaces, `\\dfrac`, degree
    signs, surrounding `$`, a trailing period); mathematical equivalence is the verifier's job.
    """
    text = answer.strip()
    for _ in range(2):  # "$x$." and "$x.$"
        text = text.removesuffix(".").strip().strip("$").strip()
    for old, new in _LATEX_SYNONYMS:
        text = text.replace(old, new)
    return _LATEX_NOISE.sub("", text)


def majority_vote(answers: Sequence[str | None], scores: Sequence[float]) -> float:
    """maj@n of one problem: the score of the most frequent answer (0 when no sample has one).

    Answers are grouped by `normalize_answer`; samples without an answer (None, or an empty box) do
    not vote; a tie goes to the group seen first. Members of a group are the same answer, so they
    score alike unless the verifier timed out on some: the group counts as correct if any member
    was scored so.
    """
    groups: dict[str, list[float]] = {}  # insertion order = first occurrence
    for answer, score in zip(answers, scores, strict=True):
        key = normalize_answer(answer) if answer is not None else ""
        if key:
            groups.setdefault(key, []).append(score)
    if not groups:
        return 0.0
    winner = max(groups.values(), key=len)  # max keeps the first of equal-length groups
    return float(max(winner) > 0)


def problem_metrics(scores: Sequence[float], answers: Sequence[str | None]) -> dict[str, float]:
    """avg@n, pass@k and maj@n of one problem's n samples (scores 1.0 correct / 0.0 incorrect)."""
    n = len(scores)
    correct = sum(1 for s in scores if s > 0)
    metrics = {f"avg@{n}": correct / n}
    metrics.update({f"pass@{k}": pass_at_k(n, correct, k) for k in pass_ks(n)})
    metrics[f"maj@{n}"] = majority_vote(answers, scores)
    return metrics


def metric_names(n: int) -> list[str]:
    """Keys every benchmark result has for n samples per problem, beyond the counts."""
    return [f"avg@{n}", *(f"pass@{k}" for k in pass_ks(n)), f"maj@{n}", f"grader_avg@{n}", "response_length_mean",
            "truncated_frac", "boxed_frac"]


# --------------------------------------------------------------------------------------------------
# Running an evaluation: generate and grade every benchmark, then (optionally) judge what the grader
# rejected, then aggregate. Separate stages so that the policy's engine can close (or sleep) before
# the judge's opens.


@dataclass(frozen=True)
class BenchmarkRun:
    """One benchmark's samples, generated and graded (`generate_and_grade`); n per problem, contiguous."""
    name: str
    problems: list[Problem]
    n: int
    seed: int | None
    """The benchmark's generation seed (`benchmark_seed`)."""
    texts: list[str]
    tokens: list[int]
    truncated: list[bool]
    grader_scores: list[float]
    answers: list[str | None]
    """Last-box answers (the vote of maj@n), whatever the grader reads."""
    verifier_timeouts: int
    verifier_errors: int
    generate_s: float
    score_s: float


def benchmark_seed(seed: int | None, name: str) -> int | None:
    """A benchmark's own seed, derived from the run's: its samples do not depend on which other
    benchmarks ran, or in what order. The engine derives the per-sample seeds from it (vLLM: one per
    prompt, + the sample index; HF: one per batch of rows), so an evaluation repeats exactly."""
    if seed is None:
        return None
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:4], "little") % 2**31


def generate_and_grade(engine, tokenizer, problem_sets: dict[str, list[Problem]], *, n: int | None,
                       sampling: Sampling, pool, prompt_suffix: str = EVAL_SUFFIX,
                       prompt_example: Sequence[str] = ()) -> list[BenchmarkRun]:
    """Generate n samples per problem (None: each benchmark's paper default) and grade them with `pool`
    (a `reward.VerifierPool`, whose mode is the grader). `prompt_example`: `data.build_prompt_ids`'s."""
    return [_generate_one(engine, tokenizer, name, problems, n or BENCHMARKS[name].n,
                          dataclasses.replace(sampling, seed=benchmark_seed(sampling.seed, name)), pool,
                          prompt_suffix, prompt_example)
            for name, problems in problem_sets.items()]


def _generate_one(engine, tokenizer, name: str, problems: list[Problem], n: int, sampling: Sampling, pool,
                  prompt_suffix: str, prompt_example: Sequence[str]) -> BenchmarkRun:
    started = time.monotonic()
    prompt_ids = [build_prompt_ids(tokenizer, p.problem, prompt_suffix, prompt_example) for p in problems]
    # Generated in prompt-length order, so that a batch of left-padded HF generate pads little
    # (all nine sets at n=2 on 2 CPU cores: 11 min unsorted, 1.3 min sorted); each prompt's n samples
    # come back contiguous.
    order = sorted(range(len(problems)), key=lambda i: len(prompt_ids[i]))
    rollouts = engine.generate([prompt_ids[i] for i in order], n, sampling)
    assert len(rollouts) == n * len(problems), f"{name}: asked for {n * len(problems)} samples, got {len(rollouts)}"
    generated = time.monotonic()
    rank = {problem: r for r, problem in enumerate(order)}
    back = [rank[i] * n + j for i in range(len(problems)) for j in range(n)]  # file order again
    response_ids = [rollouts.response_ids[k] for k in back]
    texts = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    scored = pool.score(texts, [p.answer for p in problems for _ in range(n)])
    return BenchmarkRun(name, problems, n, sampling.seed, texts, [len(r) for r in response_ids],
                        [rollouts.truncated[k] for k in back], scored.scores, [extract_boxed(t) for t in texts],
                        scored.timeouts, scored.errors, generated - started, time.monotonic() - generated)


def finish(runs: list[BenchmarkRun], *, config: dict[str, Any], judge=None,
           out_dir: str | Path | None = None) -> dict[str, Any]:
    """Judge what the grader rejected (`judge`: a `protocols.Judge`, or None), aggregate, and with
    `out_dir` write `results.json` and one `samples.jsonl` row per sample.
    Returns {"config", "benchmarks": {name: metrics}, "overall"}."""
    judged = judge.judge_rejected(runs) if judge is not None else None
    results: dict[str, Any] = {"config": {**config, "judge": judge.path if judge else None}, "benchmarks": {}}
    rows = []
    for run in runs:
        verdicts = judged.verdicts[run.name] if judged else None
        results["benchmarks"][run.name] = _benchmark_metrics(run, verdicts)
        if judged:
            results["benchmarks"][run.name]["judge_s"] = judged.seconds[run.name]
        rows += _sample_rows(run, verdicts)
    results["overall"] = _overall(results["benchmarks"])
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "samples.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


@contextlib.contextmanager
def grader_pool(grader: str | None, pool: VerifierPool) -> Iterator[VerifierPool]:
    """`pool` when it already scores with `grader`'s mode (or no grader is named), else a pool of that
    mode with `pool`'s workers and deadline, closed afterwards."""
    if grader is None or GRADERS[grader] == pool.mode:
        yield pool
        return
    with VerifierPool(workers=pool.num_workers, timeout_s=pool.timeout_s, mode=GRADERS[grader]) as own:
        yield own


def evaluate_benchmarks(engine, tokenizer, names: str | Sequence[str] | None, *, n: int | None = None,
                        sampling: Sampling, data_dir: str | Path | None = None, pool,
                        out_dir: str | Path | None = None, max_problems: int | None = None,
                        problem_sets: dict[str, list[Problem]] | None = None,
                        meta: dict[str, Any] | None = None, grader: str | None = None, judge=None,
                        prompt_suffix: str = EVAL_SUFFIX, prompt_example: Sequence[str] = (),
                        generating: Callable[[], ContextManager[Any]] = contextlib.nullcontext) -> dict[str, Any]:
    """`generate_and_grade` then `finish`, in one call.

    `n` None uses each benchmark's paper default. `pool` is a `reward.VerifierPool`; `grader` (a
    `reward.GRADERS` name) grades with that mode instead, in a pool of its own when `pool`'s mode
    differs; None grades with `pool`. `judge` (`protocols.Judge`) asks a model about every rejected
    response. `problem_sets` (already loaded problems by name) skips loading; with `names` None they
    are the sets evaluated, whatever their names (a synthetic task's held-out split). `meta` (e.g. the
    model's name) is recorded first in `results["config"]`. `generating()` is held around generation
    only, so the judge runs after it: the trainer's `engine.generating` (the policy's engine sleeps),
    or eval.py's opening of the engine, which it yields in place of `engine` (None) and closes.
    """
    names = list(problem_sets or {}) if names is None else resolve_benchmarks(names)
    problem_sets = {name: ((problem_sets or {}).get(name) or load_benchmark(name, data_dir, max_problems))
                    [:max_problems or None] for name in names}
    with generating() as opened, grader_pool(grader, pool) as graded_by:
        runs = generate_and_grade(opened or engine, tokenizer, problem_sets, n=n, sampling=sampling, pool=graded_by,
                                  prompt_suffix=prompt_suffix, prompt_example=prompt_example)
        mode = graded_by.mode
        del opened  # an engine opened here is freed with its closing, before the judge's opens
    config = {**(meta or {}), "n": n, "temperature": sampling.temperature, "top_p": sampling.top_p,
              "max_tokens": sampling.max_tokens, "seed": sampling.seed, "max_problems": max_problems,
              "prompt_suffix": prompt_suffix, "prompt_example": list(prompt_example), "grader": grader,
              "verifier_mode": mode,
              "data": str(data_dir) if data_dir else "hub"}
    return finish(runs, config=config, judge=judge, out_dir=out_dir)


def _final_scores(run: BenchmarkRun, verdicts: list | None) -> list[float]:
    """Correct when the grader accepts, or (with a judge) the judge answers exactly `A`."""
    if verdicts is None:
        return list(run.grader_scores)
    return [1.0 if score > 0 or (v is not None and v.correct) else 0.0 for score, v in zip(run.grader_scores, verdicts)]


def _benchmark_metrics(run: BenchmarkRun, verdicts: list | None) -> dict[str, Any]:
    n, scores = run.n, _final_scores(run, verdicts)
    per_problem = [problem_metrics(scores[i * n:(i + 1) * n], run.answers[i * n:(i + 1) * n])
                   for i in range(len(run.problems))]
    metrics: dict[str, Any] = {"n": n, "problems": len(run.problems), "samples": len(run.texts), "seed": run.seed}
    metrics.update({key: sum(m[key] for m in per_problem) / len(per_problem) for key in per_problem[0]})
    metrics[f"grader_avg@{n}"] = sum(1 for s in run.grader_scores if s > 0) / len(run.grader_scores)
    if verdicts is not None:
        asked = [v for v in verdicts if v is not None]
        metrics["judge_asked"] = len(asked)
        metrics["judge_rescued"] = sum(v.correct for v in asked)
        metrics["judge_labels"] = {label: sum(v.label == label for v in asked) for label in (*LABELS, "")}
    metrics["response_length_mean"] = sum(run.tokens) / len(run.tokens)
    metrics["truncated_frac"] = sum(run.truncated) / len(run.tokens)
    metrics["boxed_frac"] = sum(answer is not None for answer in run.answers) / len(run.answers)
    metrics.update({"verifier_timeouts": run.verifier_timeouts, "verifier_errors": run.verifier_errors,
                    "generate_s": run.generate_s, "score_s": run.score_s})
    return metrics


def _sample_rows(run: BenchmarkRun, verdicts: list | None) -> list[dict[str, Any]]:
    scores = _final_scores(run, verdicts)
    rows = []
    for s, text in enumerate(run.texts):
        problem = run.problems[s // run.n]
        row = {"benchmark": run.name, "problem_id": problem.uid, "sample": s % run.n, "response": text,
               "answer": run.answers[s], "gold": problem.answer, "score": scores[s],
               "grader_score": run.grader_scores[s], "tokens": run.tokens[s], "truncated": run.truncated[s]}
        if verdicts is not None:
            row["judge"] = verdicts[s].output if verdicts[s] is not None else None
        rows.append(row)
    return rows


def _overall(benchmarks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The paper's Avg (mean of per-benchmark avg@n) and sample-weighted length / truncation."""
    if not benchmarks:
        return {}
    samples = sum(m["samples"] for m in benchmarks.values())
    return {
        "avg": sum(m[f"avg@{m['n']}"] for m in benchmarks.values()) / len(benchmarks),
        "grader_avg": sum(m[f"grader_avg@{m['n']}"] for m in benchmarks.values()) / len(benchmarks),
        **({"judge_rescued": sum(m["judge_rescued"] for m in benchmarks.values())}
           if all("judge_rescued" in m for m in benchmarks.values()) else {}),
        "benchmarks": len(benchmarks),
        "problems": sum(m["problems"] for m in benchmarks.values()),
        "samples": samples,
        "response_length_mean": sum(m["response_length_mean"] * m["samples"] for m in benchmarks.values()) / samples,
        "truncated_frac": sum(m["truncated_frac"] * m["samples"] for m in benchmarks.values()) / samples,
        "boxed_frac": sum(m["boxed_frac"] * m["samples"] for m in benchmarks.values()) / samples,
    }


def flat_metrics(results: dict[str, Any]) -> dict[str, float]:
    """Namespaced scalars for the trainer's logger: `eval/<benchmark>/avg@n`, `.../pass@k`, `.../maj@n`,
    `.../grader_avg@n` (the grader alone), `.../response_length_mean`, `.../truncated_frac`, `.../boxed_frac`
    (responses with a `\\boxed{}` answer),
    `.../judge_rescued` (with a judge), and `eval/overall/avg`."""
    flat = {}
    for name, m in results["benchmarks"].items():
        for key in metric_names(m["n"]) + [key for key in ("judge_rescued",) if key in m]:
            flat[f"eval/{name}/{key}"] = float(m[key])
    if results.get("overall"):
        flat["eval/overall/avg"] = float(results["overall"]["avg"])
    return flat


def format_table(results: dict[str, Any], label: str | None = None) -> str:
    """The paper's layout: one column per benchmark plus Avg; rows avg@n (the paper's number; with a
    judge also the grader's alone and the responses the judge rescued, whose Avg is a mean), maj@n,
    pass@n, mean length and truncation. Percentages with two decimals, as a Markdown table."""
    benches = results["benchmarks"]
    header = [label or "", *(BENCHMARKS[name].title if name in BENCHMARKS else name for name in benches), "Avg"]

    def row(title: str, key_of, scale: float = 100.0, fmt: str = "{:.2f}") -> list[str]:
        values = [m[key_of(m)] * scale for m in benches.values()]
        return [title, *(fmt.format(v) for v in values), fmt.format(sum(values) / len(values))]

    judged = all("judge_rescued" in m for m in benches.values())
    rows = [
        ["n", *(str(m["n"]) for m in benches.values()), ""],
        row("avg@n", lambda m: f"avg@{m['n']}"),
        *([row("grader avg@n", lambda m: f"grader_avg@{m['n']}"),
           row("judge rescued", lambda _m: "judge_rescued", scale=1.0, fmt="{:.0f}")] if judged else []),
        row("maj@n", lambda m: f"maj@{m['n']}"),
        row("pass@n", lambda m: f"pass@{m['n']}"),
        row("length", lambda _m: "response_length_mean", scale=1.0, fmt="{:.0f}"),
        row("trunc %", lambda _m: "truncated_frac"),
        row("boxed %", lambda _m: "boxed_frac"),
    ]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]

    def line(cells: list[str]) -> str:  # first column left-aligned, numbers right-aligned
        pairs = enumerate(zip(cells, widths, strict=True))
        padded = [cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in pairs]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 2) if c == 0 else "-" * (w + 1) + ":" for c, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def longest_prompt(problem_sets: dict[str, list[Problem]], tokenizer, suffix: str = EVAL_SUFFIX,
                   example: Sequence[str] = ()) -> int:
    """Token count of the longest eval prompt (sizes a vLLM engine's context)."""
    return max((len(build_prompt_ids(tokenizer, p.problem, suffix, example))
                for problems in problem_sets.values() for p in problems), default=0)
