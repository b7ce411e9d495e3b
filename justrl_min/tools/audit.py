"""Gold audit: put every gold of a problem file through the verifier, as a reward would see it.

    python -m justrl_min.tools.audit PATH [PATH ...] [--timeout-s 10] [--every K]

PATH is a problem file (any schema `load_problems` reads) or a folder; a folder's `*/test.parquet`
files (the benchmark layout `eval.py --data-dir` reads) are audited one by one, else it is read as
one problem set. Per gold, four judgements, each timed and run under the verifier's deadline:

- ``self``: the response ``\\boxed{gold}`` must score 1 (the gold is reachable at all);
- ``digit``: a 7 inserted after the gold's last digit (``52_8`` -> ``52_87``, ``\\frac{1}{2}`` ->
  ``\\frac{1}{27}``), or appended to a gold without digits, must score 0;
- ``sign``: the gold negated must score 0: ``-(gold)`` for one expression, the first number's sign
  flipped where the gold lists values or is a relation (``x = 1, 2`` -> ``x = -1, 2``);
- ``x10``: the gold times ten, ``10(gold)``, or its first number times ten (``x = 10, 2``).

The sign and x10 variants are skipped where they would not be wrong or mean nothing: a gold without
a number, or whose first number is zero (``-0`` and ``0 * 10`` are 0).

Failures are printed, then a table per file; the exit status is 1 if anything failed or timed out.
Judgements run in this process, one at a time, so each one's time is its own (the gold's parse is
cached after its first judgement, as it is in a training step).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from justrl_min.data import load_problems
from justrl_min.deadline_pool import call_with_deadline
from justrl_min.reward import DEFAULT_TIMEOUT_S, _judge, warm_up

_NUMBER = re.compile(r"-?(?:\d+(?:\.\d+)?|\.\d+)")
_LAST_DIGIT = re.compile(r"\d(?!.*\d)", re.DOTALL)
# Golds that list values, state a relation or name an interval: negating the whole makes no sense.
_NOT_ONE_EXPRESSION = re.compile(r"[,;=<>]|\\(?:le|ge|leq|geq|neq|pm|mp|cup|cap|in)\b|\\[{}]")
VARIANTS = ("digit", "sign", "x10")


def wrong_variants(gold: str) -> dict[str, str]:
    """The systematically wrong answers for ``gold``, by kind (kinds that do not apply are absent)."""
    last_digit = _LAST_DIGIT.search(gold)
    end = last_digit.end() if last_digit else len(gold)
    variants = {"digit": gold[:end] + "7" + gold[end:]}
    first = _NUMBER.search(gold)
    if not first or Decimal(first.group().lstrip("-")) == 0:
        return variants
    if not _NOT_ONE_EXPRESSION.search(gold):
        # Whole: flipping one number inside cos(2t) or x^2 would leave the value unchanged or not negate it.
        return {**variants, "sign": f"-({gold})", "x10": f"10({gold})"}
    number = first.group()
    flipped = number[1:] if number.startswith("-") else "-" + number
    times_ten = Decimal(number) * 10
    tenfold = format(times_ten.quantize(1) if times_ten == times_ten.to_integral() else times_ten.normalize(), "f")
    return {**variants, "sign": gold[: first.start()] + flipped + gold[first.end():],
            "x10": gold[: first.start()] + tenfold + gold[first.end():]}


@dataclass
class Judgement:
    gold: str
    kind: str  # "self" or one of VARIANTS
    answer: str
    score: float
    status: str  # "ok", "timeout" or "error"
    elapsed_s: float

    @property
    def failed(self) -> bool:
        expected = 1.0 if self.kind == "self" else 0.0
        return self.status != "ok" or self.score != expected


@dataclass
class FileAudit:
    name: str
    golds: int = 0
    judgements: list[Judgement] = field(default_factory=list)

    @property
    def failures(self) -> list[Judgement]:
        return [j for j in self.judgements if j.failed]

    def row(self) -> dict[str, object]:
        done = [j for j in self.judgements if j.status == "ok"]
        return {
            "file": self.name,
            "golds": self.golds,
            "self_fail": sum(j.kind == "self" for j in self.failures),
            "variant_fp": sum(j.kind != "self" and j.score == 1.0 for j in done),
            "variants": sum(j.kind != "self" for j in self.judgements),
            "timeouts": sum(j.status == "timeout" for j in self.judgements),
            "errors": sum(j.status == "error" for j in self.judgements),
            "slowest_ms": round(1000 * max((j.elapsed_s for j in self.judgements), default=0.0)),
        }


def audit_golds(name: str, golds: list[str], *, timeout_s: float = DEFAULT_TIMEOUT_S) -> FileAudit:
    """Judge every gold against itself and its wrong variants, each under ``timeout_s``."""
    result = FileAudit(name, golds=len(golds))
    for gold in golds:
        answers = {"self": gold, **wrong_variants(gold)}
        for kind, answer in answers.items():
            started = time.perf_counter()
            score, status, _ = call_with_deadline(_judge, ("\\boxed{" + answer + "}", gold, "symbolic"), timeout_s)
            result.judgements.append(Judgement(gold, kind, answer, score or 0.0, status,
                                               time.perf_counter() - started))
    return result


def problem_files(path: Path) -> list[Path]:
    """The files one PATH stands for: itself, or a benchmark folder's ``*/test.parquet`` files."""
    if path.is_dir():
        return sorted(path.glob("*/test.parquet")) or [path]
    return [path]


def format_table(rows: list[dict[str, object]]) -> str:
    columns = list(rows[0])
    widths = [max(len(column), *(len(str(row[column])) for row in rows)) for column in columns]

    def line(cells) -> str:  # the file name left-aligned, the counts right-aligned
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(columns), *(line(row[c] for c in columns) for row in rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m justrl_min.tools.audit", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="problem files or folders (benchmark layout)")
    parser.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S, help="deadline per judgement")
    parser.add_argument("--every", type=int, default=1, help="audit every K-th gold only (a quick sample)")
    args = parser.parse_args(argv)
    warm_up()  # the first judgements would otherwise pay for priming the LaTeX parser
    audits = []
    for path in args.paths:
        for file in problem_files(path):
            name = file.parent.name if file.name == "test.parquet" else file.name
            golds = [p.answer for p in load_problems(str(file), split="test", strip_dapo_instruction=False)]
            audit = audit_golds(name, golds[:: args.every], timeout_s=args.timeout_s)
            for j in audit.failures:
                print(f"FAIL {name} {j.kind}: gold {j.gold!r} answer {j.answer!r} -> {j.score:g} "
                      f"({j.status}, {1000 * j.elapsed_s:.0f} ms)")
            audits.append(audit)
    rows = [audit.row() for audit in audits]
    total = {key: (sum(r[key] for r in rows) if key != "slowest_ms" else max(r[key] for r in rows))
             for key in rows[0] if key != "file"}
    print(format_table(rows + [{"file": "total", **total}]))
    slowest = max((j for a in audits for j in a.judgements), key=lambda j: j.elapsed_s)
    print(f"slowest judgement: {1000 * slowest.elapsed_s:.0f} ms, {slowest.kind} of gold {slowest.gold!r}")
    return 1 if any(audit.failures for audit in audits) else 0


if __name__ == "__main__":
    sys.exit(main())
