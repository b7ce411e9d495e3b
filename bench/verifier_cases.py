"""The verifier table: DeepScaleR's rule grader beside math-verify on the same (gold, response) pairs.

Writes docs/verifier_cases.md; tests/variants/test_deepscaler.py checks that the verdicts pinned here are still
what the two graders say, and that the page is what this script writes.

    python bench/verifier_cases.py                     # print the table (markdown)
    python bench/verifier_cases.py --write docs/verifier_cases.md
    python bench/verifier_cases.py --check             # exit 1 where a grader's verdict changed
    python bench/verifier_cases.py --reference PATH/deepscaler/rewards/math_utils/utils.py
        # runs DeepScaleR's own grade_answer_verl (needs pylatexenc and sympy in this interpreter,
        # nothing of justrl_min's) on the non-hostile cases and compares with the pinned column

`deepscaler` is `justrl_min.variants.deepscaler.grade`; `math_verify` is
`justrl_min.reward.compute_score(response, gold, mode="symbolic") == 1.0`; `reference` is DeepScaleR's
own code (agentica-project/deepscaler at 95ef74f, pylatexenc 2.10, sympy 1.14), None where it was not
run: hostile inputs, on which it can take minutes or gigabytes.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import NamedTuple


class Case(NamedTuple):
    gold: str
    response: str
    note: str
    deepscaler: bool
    math_verify: bool
    reference: bool | None
    shown: str = ""
    """How the table shows the response when it is too long to print (hostile cases)."""


def B(answer: str) -> str:  # noqa: N802 - reads like the LaTeX it builds
    return "\\boxed{" + answer + "}"


CASES = [
    Case("\\frac{1}{2}", B("\\frac{1}{2}"), "identical", deepscaler=True, math_verify=True, reference=True),
    Case("\\frac{1}{2}", B("\\frac12"), "\\frac12 shorthand", deepscaler=True, math_verify=True, reference=True),
    Case("\\frac{1}{2}", B("0.5"), "decimal for a fraction", deepscaler=True, math_verify=True, reference=True),
    Case("1/2", B("0.5"), "a/b gold, decimal answer", deepscaler=True, math_verify=True, reference=True),
    Case("\\frac{1}{2}", B("\\frac{2}{4}"), "unreduced fraction", deepscaler=False, math_verify=True, reference=False),
    Case("1/2", B("\\frac{2}{4}"), "unreduced fraction, a/b gold", deepscaler=False, math_verify=True, reference=False),
    Case("\\dfrac{3}{4}", B("3/4"), "\\dfrac gold, a/b answer", deepscaler=True, math_verify=True, reference=True),
    Case("0.25", B("\\frac14"), "fraction for a decimal gold", deepscaler=True, math_verify=True, reference=True),
    Case("\\frac{3}{2}", B("1.5"), "decimal for a fraction (sympy)", deepscaler=True, math_verify=True, reference=True),
    Case("\\frac{5}{2}", B("2\\frac{1}{2}"), "mixed number", deepscaler=True, math_verify=True, reference=True),
    Case("-\\frac{1}{2}", B("\\frac{-1}{2}"), "sign inside the fraction",
         deepscaler=True, math_verify=True, reference=True),
    Case("\\frac{1}{3}", B("0.333"), "rounded decimal", deepscaler=False, math_verify=False, reference=False),
    Case("10", B("10.0"), "integer written as a decimal", deepscaler=True, math_verify=True, reference=True),
    Case("3", B("3."), "trailing dot", deepscaler=True, math_verify=True, reference=True),
    Case("3", B("2.99999999"), "within DeepScaleR's 1e-7 integer tolerance",
         deepscaler=True, math_verify=False, reference=True),
    Case("0.1", B(".1"), "leading dot", deepscaler=True, math_verify=True, reference=True),
    Case("5", B("05"), "leading zero", deepscaler=True, math_verify=True, reference=True),
    Case("-3", B("- 3"), "space after the minus", deepscaler=True, math_verify=True, reference=True),
    Case("1000", B("1,000"), "thousands comma", deepscaler=True, math_verify=True, reference=True),
    Case("1,000,000", B("1000000"), "thousands commas in the gold", deepscaler=True, math_verify=True, reference=True),
    Case("1000", B("10^3"), "integer gold, power answer", deepscaler=False, math_verify=True, reference=False),
    Case("6", B("3!"), "integer gold, factorial answer", deepscaler=False, math_verify=True, reference=False),
    Case("5", B("x=5"), "short assignment prefix", deepscaler=True, math_verify=True, reference=True),
    Case("x=2", B("2"), "assignment in the gold", deepscaler=True, math_verify=True, reference=True),
    Case("y = 2x + 3", B("2x+3"), "equation gold, expression answer",
         deepscaler=True, math_verify=True, reference=True),
    Case("5", B("5\\text{ cm}"), "unit after \\text{ }", deepscaler=True, math_verify=True, reference=True),
    Case("12", B("12 \\text{ hours}"), "plural unit", deepscaler=True, math_verify=True, reference=True),
    Case("90^\\circ", B("90"), "degrees", deepscaler=True, math_verify=True, reference=True),
    Case("25\\%", B("25"), "percent", deepscaler=True, math_verify=True, reference=True),
    Case("\\$5", B("5"), "dollars", deepscaler=True, math_verify=True, reference=True),
    Case("\\$1.50", B("1.5"), "dollars and cents", deepscaler=True, math_verify=True, reference=True),
    Case("x^2+2x+1", B("(x+1)^2"), "polynomial, factored", deepscaler=True, math_verify=True, reference=True),
    Case("a+b", B("b+a"), "two letters: sympy runs", deepscaler=True, math_verify=True, reference=True),
    Case("a+b+c", B("c+b+a"), "three letters: sympy is not tried", deepscaler=False, math_verify=True, reference=False),
    Case("2\\sqrt{3}", B("\\sqrt{12}"), "surd", deepscaler=True, math_verify=True, reference=True),
    Case("3\\sqrt{2}", B("\\sqrt{18}"), "surd", deepscaler=True, math_verify=True, reference=True),
    Case("\\frac{\\sqrt{3}}{2}", B("\\frac{\\sqrt3}{2}"), "\\sqrt3 shorthand",
         deepscaler=True, math_verify=True, reference=True),
    Case("\\frac{\\sqrt{2}}{2}", B("\\sqrt{2}/2"), "fraction written with a slash",
         deepscaler=True, math_verify=True, reference=True),
    Case("\\frac{1+\\sqrt{5}}{2}", B("\\frac{1+\\sqrt5}{2}"), "golden ratio, shorthand",
         deepscaler=True, math_verify=True, reference=True),
    Case("\\frac{1+\\sqrt{5}}{2}", B("(1+\\sqrt{5})/2"), "golden ratio with a slash: latex2text drops the parentheses",
         deepscaler=False, math_verify=True, reference=False),
    Case("\\sqrt{2}", B("2^{1/2}"), "power for a root", deepscaler=False, math_verify=True, reference=False),
    Case("\\sqrt[3]{2}", B("\\sqrt{2}"), "cube root vs square root: latex2text drops the degree",
         deepscaler=True, math_verify=False, reference=True),
    Case("\\frac{\\pi}{2}", B("\\pi/2"), "pi", deepscaler=True, math_verify=True, reference=True),
    Case("2\\pi", B("\\pi \\cdot 2"), "pi, product", deepscaler=True, math_verify=True, reference=True),
    Case("2\\pi", B("6.283185"), "decimal for pi", deepscaler=False, math_verify=True, reference=False),
    Case("\\pi", B("3.14159"), "rounded pi", deepscaler=False, math_verify=False, reference=False),
    Case("\\frac{100}{3}", B("33.3333"), "rounded decimal", deepscaler=False, math_verify=False, reference=False),
    Case("(1,2)", B("(1, 2)"), "tuple, spaces", deepscaler=True, math_verify=True, reference=True),
    Case("(1,2)", B("[1,2]"), "tuple vs list brackets", deepscaler=False, math_verify=False, reference=False),
    Case("(3, -1)", B("(-1, 3)"), "tuple order", deepscaler=False, math_verify=False, reference=False),
    Case("[0, 1)", B("[0,1)"), "interval", deepscaler=True, math_verify=True, reference=True),
    Case("[0, 1)", B("(0,1]"), "interval, other ends", deepscaler=False, math_verify=False, reference=False),
    Case("(-\\infty, 2)", B("(-\\infty,2)"), "infinite interval", deepscaler=True, math_verify=True, reference=True),
    Case("\\left( 1, 2 \\right)", B("(1,2)"), "\\left( \\right)", deepscaler=True, math_verify=True, reference=True),
    Case("\\{1,2\\}", B("\\{2,1\\}"), "set order", deepscaler=False, math_verify=True, reference=False),
    Case("2, 3", B("3, 2"), "list of solutions, order", deepscaler=False, math_verify=True, reference=False),
    Case("5", B("5, 5"), "repeated answer", deepscaler=False, math_verify=True, reference=False),
    Case("\\text{(B)}", B("B"), "choice letter", deepscaler=True, math_verify=True, reference=True),
    Case("\\text{(A)}", B("a"), "choice letter, lower case", deepscaler=True, math_verify=True, reference=True),
    Case("E", B("e"), "case of a letter", deepscaler=True, math_verify=True, reference=True),
    Case("\\text{Tuesday}", B("Tuesday"), "word in \\text", deepscaler=True, math_verify=True, reference=True),
    Case("\\text{Monday}", B("\\text{Mon}"), "unit words are deleted anywhere: 'day'",
         deepscaler=True, math_verify=False, reference=True),
    Case("12:00", B("12:00"), "time, identical", deepscaler=True, math_verify=True, reference=True),
    Case("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", B("\\begin{pmatrix}1\\\\2\\end{pmatrix}"), "matrix, spaces",
         deepscaler=True, math_verify=True, reference=True),
    Case("4", "\\boxed{3} so actually \\boxed{4}", "last box wins", deepscaler=True, math_verify=True, reference=True),
    Case("4", "\\boxed{4} no wait \\boxed{3}", "last box wins (wrong)",
         deepscaler=False, math_verify=False, reference=False),
    Case("4", "\\fbox{4}", "\\fbox", deepscaler=True, math_verify=True, reference=False),
    Case("4", "\\boxed 4", "\\boxed without braces", deepscaler=True, math_verify=True, reference=False),
    Case("4", "The answer is 4.", "no box", deepscaler=False, math_verify=False, reference=False),
    Case("4", "\\boxed{4", "unbalanced last box", deepscaler=False, math_verify=False, reference=False),
    Case("0", B(""), "empty box", deepscaler=False, math_verify=False, reference=False),
    Case("", B("0"), "empty gold", deepscaler=False, math_verify=False, reference=False),
    Case("\\boxed{7}", B("7"), "boxed gold", deepscaler=True, math_verify=True, reference=True),
    Case("2", B("two"), "number word", deepscaler=False, math_verify=False, reference=False),
    # hostile: DeepScaleR's own code is not run on these (some take minutes or gigabytes there)
    Case("\\sqrt{2}", B("9^{9^{9^{9}}}"), "exponent tower", deepscaler=False, math_verify=False, reference=None),
    Case("\\sqrt{2}", B("9**9**9"), "Python power tower", deepscaler=False, math_verify=False, reference=None),
    Case("\\sqrt{2}", B("(0,)*10**9"), "tuple repetition (gigabytes under eval)",
         deepscaler=False, math_verify=False, reference=None),
    Case("\\sqrt{2}", B("1<<10000000000"), "shift (gigabytes under eval)",
         deepscaler=False, math_verify=False, reference=None),
    Case("\\sqrt{2}", B("'a'*99999999999"), "string repetition", deepscaler=False, math_verify=False, reference=None),
    Case("\\sqrt{2}", B("99999999!"), "huge factorial", deepscaler=False, math_verify=False, reference=None),
    Case("\\sqrt{2}", B("__import__('os').system('true')"), "code",
         deepscaler=False, math_verify=False, reference=None),
    Case("\\sqrt{2}", B("1+" * 50_000 + "1"), "100,000-character sum",
         deepscaler=False, math_verify=False, reference=None, shown="\\boxed{1+1+...+1} (100,001 ones)"),
    Case("1", B("{" * 3_000 + "1" + "}" * 3_000), "3,000 nested braces",
         deepscaler=True, math_verify=False, reference=None, shown="\\boxed{{{...{1}...}}} (3,000 levels)"),
    Case("\\sqrt{2}", B("\\frac{" * 2_000 + "1" + "}{2}" * 2_000), "2,000 nested fractions",
         deepscaler=False, math_verify=False, reference=None, shown="\\boxed{\\frac{\\frac{...1...}{2}}{2}}"),
    Case("5", B("5\x00"), "NUL byte", deepscaler=False, math_verify=True, reference=None, shown="\\boxed{5\\x00}"),
    Case("5", "\\boxed{" * 10_000, "10,000 unclosed boxes",
         deepscaler=False, math_verify=False, reference=None, shown="\\boxed{\\boxed{... (10,000 times, never closed)"),
]


def current_verdicts(case: Case) -> tuple[bool, bool]:
    """(DeepScaleR-style, math-verify) verdicts computed now."""
    from justrl_min.reward import compute_score
    from justrl_min.variants.deepscaler import grade

    return grade(case.response, case.gold), compute_score(case.response, case.gold, mode="symbolic") == 1.0


def _cell(text: str) -> str:
    text = text.replace("|", "\\|").replace("\n", "\\n")
    return f"`{text}`" if text else "(empty)"


def _verdict(value: bool | None) -> str:
    return {True: "correct", False: "wrong", None: "not run"}[value]


def _row(number: int, case: Case) -> str:
    differs = "**differs**" if case.deepscaler != case.math_verify else ""
    cells = (str(number), _cell(case.gold), _cell(case.shown or case.response), _verdict(case.deepscaler),
             _verdict(case.math_verify), differs, _verdict(case.reference), case.note.replace("|", "\\|"))
    return "| " + " | ".join(cells) + " |"


def markdown(cases: list[Case]) -> str:
    header = ("| # | gold | response | DeepScaleR rules (ours) | math-verify (ours) | | DeepScaleR's own code "
              "| note |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
    numbered = list(enumerate(cases, 1))
    differing = [(n, c) for n, c in numbered if c.deepscaler != c.math_verify]
    off_reference = [(n, c) for n, c in numbered if c.reference is not None and c.reference != c.deepscaler]
    return "\n".join([
        "# Verifier cases: DeepScaleR's rules beside math-verify",
        "",
        "Generated by `python bench/verifier_cases.py --write docs/verifier_cases.md`; do not edit by hand.",
        "`tests/variants/test_deepscaler.py` checks that both graders still give these verdicts.",
        "",
        "- **DeepScaleR rules (ours)**: `justrl_min.variants.deepscaler.grade`, the grader of the paper's Table 3 and",
        "  of its second ablation (`reward.mode=deepscaler`, `eval.grader=deepscaler`).",
        "- **math-verify (ours)**: `justrl_min.reward.compute_score(response, gold, mode=\"symbolic\")`, this",
        "  project's default reward.",
        "- **DeepScaleR's own code**: `grade_answer_verl` of agentica-project/deepscaler (pylatexenc 2.10,",
        "  sympy 1.14), run with `--reference`; not run on hostile inputs. Where it differs from ours the",
        "  cause is extraction: ours reads `\\fbox{}` and `\\boxed 4`, DeepScaleR's does not.",
        "",
        f"{len(cases)} cases; the two graders differ on {len(differing)}; ours and DeepScaleR's own code differ "
        f"on {len(off_reference)} ({', '.join(f'#{n}' for n, _ in off_reference) or 'none'}).",
        "",
        "## Where they differ",
        "",
        header,
        *(_row(n, c) for n, c in differing),
        "",
        "## All cases",
        "",
        header,
        *(_row(n, c) for n, c in numbered),
        "",
    ])


def _load_reference(path: str):
    spec = importlib.util.spec_from_file_location("deepscaler_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.grade_answer_verl


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", metavar="PATH", help="write the markdown table to PATH")
    parser.add_argument("--check", action="store_true", help="exit 1 where a grader's verdict changed")
    parser.add_argument("--reference", metavar="UTILS_PY", help="DeepScaleR's math_utils/utils.py to compare with")
    parser.add_argument("--smoke", action="store_true", help="--check on the first 8 cases only (CI)")
    args = parser.parse_args(argv)
    cases = CASES[:8] if args.smoke else CASES
    if args.reference:
        reference = _load_reference(args.reference)
        changed = [(n, c) for n, c in enumerate(CASES, 1)
                   if c.reference is not None and bool(reference(c.response, c.gold)) != c.reference]
        for n, c in changed:
            print(f"#{n} {c.note}: DeepScaleR's code now says {not c.reference}", file=sys.stderr)
        return 1 if changed else 0
    if args.check or args.smoke:
        changed = [(n, c, v) for n, c in enumerate(cases, 1) if (v := current_verdicts(c)) != (c.deepscaler,
                                                                                                c.math_verify)]
        for n, c, (deepscaler, math_verify) in changed:
            print(f"#{n} {c.note}: now deepscaler={deepscaler} math_verify={math_verify}", file=sys.stderr)
        print(f"{len(cases)} cases checked, {len(changed)} verdicts changed")
        return 1 if changed else 0
    text = markdown(CASES)
    if args.write:
        Path(args.write).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    from justrl_min.host_memory import ask_for_huge_pages

    ask_for_huge_pages()  # as the entry points do: before torch's first large allocation
    sys.exit(main())
