"""Prompt and gold-answer lengths in DeepSeek-R1-Distill-Qwen-1.5B's tokens; writes docs/prompt_lengths.md.

    python data/prompt_lengths.py --benchmarks ../shared/benchmarks --out docs/prompt_lengths.md
    python data/prompt_lengths.py --dapo /copies/dapo-math-17k.parquet     # a real DAPO-Math-17k copy

Prompts are built as the trainer builds them: `justrl_min.data.load_problems` (schema adapters, gold
cleanup, the recipe's `strip_dapo_instruction`), then `build_prompt_ids` with the recipe's suffix
through the chat template, so a length here is what `data.max_prompt_length` compares. The
tokenizer is the stand-in's (`justrl_min.tools.standin`, built in memory, no weights); the evaluator's
own suffix (`evaluate.EVAL_SUFFIX`) is reported beside the recipe's. Gold lengths are the cleaned
gold's tokens without special tokens.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from justrl_min.config import load_recipe  # noqa: E402
from justrl_min.data import Problem, build_prompt_ids, load_problems  # noqa: E402
from justrl_min.eval.evaluate import BENCHMARKS, EVAL_SUFFIX  # noqa: E402
from justrl_min.tools import standin  # noqa: E402

RECIPE = ROOT / "recipes/deepseek_1p5b.yaml"
DAPO_SAMPLE = ROOT / "tests/data/dapo_schema_sample.jsonl"


@dataclass(frozen=True)
class Lengths:
    name: str
    problems: int
    prompt_median: float
    prompt_max: int
    over_limit: int
    eval_prompt_max: int
    gold_median: float
    gold_max: int


def measure(name: str, problems: list[Problem], tokenizer, suffix: str, limit: int) -> Lengths:
    prompts = [len(build_prompt_ids(tokenizer, p.problem, suffix)) for p in problems]
    golds = [len(tokenizer(p.answer, add_special_tokens=False)["input_ids"]) for p in problems]
    return Lengths(name, len(problems), statistics.median(prompts), max(prompts), sum(n > limit for n in prompts),
                   max(len(build_prompt_ids(tokenizer, p.problem, EVAL_SUFFIX)) for p in problems),
                   statistics.median(golds), max(golds))


def sources(benchmarks: Path | None, dapo: Path) -> dict[str, Path]:
    found = {}
    for b in BENCHMARKS.values():
        if benchmarks is not None and (benchmarks / b.folder / "test.parquet").is_file():
            found[b.title] = benchmarks / b.folder / "test.parquet"
    found[f"DAPO schema: {dapo.name}"] = dapo
    return found


def report(benchmarks: Path | None, dapo: Path, tokenizer=None) -> str:
    cfg = load_recipe(RECIPE)
    tokenizer = tokenizer or standin.build_tokenizer(standin.STANDINS["deepseek-r1-distill-qwen-1.5b"])
    limit = cfg.data.max_prompt_length
    rows = [measure(name, load_problems(str(path), strip_dapo_instruction=cfg.data.strip_dapo_instruction),
                    tokenizer, cfg.data.prompt_suffix, limit)
            for name, path in sources(benchmarks, dapo).items()]
    header = ["set", "problems", "prompt median", "prompt max", f"> {limit:,}", "max, eval suffix",
              "gold median", "gold max"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for r in rows:
        lines.append(f"| {r.name} | {r.problems} | {r.prompt_median:g} | {r.prompt_max} | {r.over_limit} | "
                     f"{r.eval_prompt_max} | {r.gold_median:g} | {r.gold_max} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmarks", type=Path, default=None,
                        help="folder of <Benchmark>/test.parquet (the JustRL repository's data/ layout)")
    parser.add_argument("--dapo", type=Path, default=DAPO_SAMPLE, help="a file in DAPO-Math-17k's (verl) schema")
    parser.add_argument("--out", type=Path, default=None, help="write the table here (default: print it)")
    args = parser.parse_args(argv)
    table = report(args.benchmarks, args.dapo)
    if args.out is None:
        print(table, end="")
        return
    text = args.out.read_text() if args.out.is_file() else ""
    begin, end = "<!-- table: data/prompt_lengths.py -->\n", "<!-- end table -->\n"
    if begin in text and end in text:  # keep the prose around the generated table
        text = text[:text.index(begin) + len(begin)] + table + text[text.index(end):]
    else:
        text = begin + table + end
    args.out.write_text(text)


if __name__ == "__main__":
    main()
