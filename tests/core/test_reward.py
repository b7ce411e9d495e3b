"""The verifier as a table of strings, hostile inputs with a wall-clock bound, and the pool's deadlines.

Expected values are the mathematically right answer. Where the verifier is knowingly wrong the
case is an ``xfail(strict=True)`` with the reason, so fixing it later flips the test.
"""

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from justrl_min import deadline_pool, reward
from justrl_min.reward import (
    BatchScore,
    VerifierPool,
    compute_score,
    extract_boxed,
    score_batch,
)


def known_limitation(reason):
    return pytest.mark.xfail(strict=True, reason=reason)


# A realistic chain of thought: prose, inline LaTeX and plenty of numbers (42 among them) before the box.
LONG_COT = (
    "Let me think step by step. We have $x^2 - 5x + 6 = 0$, so $x = 2$ or $x = 3$; "
    "maybe the answer is 42? No: checking $\\frac{42}{2} = 21$ and $\\sqrt{289} = 17$ again. "
) * 150


# --------------------------------------------------------------------------- extract_boxed

@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("no box here, the answer is 42", None),
        ("\\boxed{42}", "42"),
        ("first \\boxed{1}, then \\boxed{2}", "2"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces are set braces, not groups
        ("\\boxed{a\\}b}", "a\\}b"),
        ("\\boxed{\\begin{pmatrix}1\\\\2\\end{pmatrix}}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
        ("\\fbox{7}", "7"),
        ("\\boxed{1} then \\fbox{2}", "2"),
        ("\\fbox{1} then \\boxed{2}", "2"),
        ("\\boxed 5", "5"),
        ("$\\boxed 12$.", "12"),
        ("\\boxed {42}", "42"),
        ("\\boxed{}", ""),
        ("\\boxed{\\boxed{4}}", "4"),
        ("\\boxed{3} and \\fboxsep=2pt", "3"),  # \fboxsep is another macro
        ("\\boxed{42", None),  # cut off mid-box
        ("\\boxed{1} and later \\boxed{2", None),  # the last box is unbalanced: no answer
        ("ends with \\boxed", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_extract_boxed_on_a_long_response_reads_only_the_last_box():
    assert extract_boxed(LONG_COT + "\\boxed{17}") == "17"


# --------------------------------------------------------------------------- compute_score, symbolic

# A Minerva gold; against itself with a digit appended, sympy's solve used to run past the deadline.
MINERVA_EQUATION = "m l \\ddot{\\theta}(t)-m g \\sin \\theta(t)=f(t) \\cos \\theta(t)"

SYMBOLIC_CASES = [
    # fractions, decimals, radicals, pi
    ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("\\boxed{0.5}", "\\frac{1}{2}", 1.0),
    ("\\boxed{\\dfrac{3}{4}}", "\\frac34", 1.0),
    ("\\boxed{1/2}", "\\frac{1}{2}", 1.0),
    ("\\boxed{\\frac{2}{4}}", "\\frac{1}{2}", 1.0),
    ("\\boxed{1.50}", "1.5", 1.0),
    ("\\boxed{0.33}", "\\frac{1}{3}", 0.0),
    ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}", 1.0),
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", 1.0),
    ("\\boxed{\\sqrt{3}}", "\\sqrt{2}", 0.0),
    ("\\boxed{2\\pi}", "2\\pi", 1.0),
    ("\\boxed{3.14}", "\\pi", 0.0),
    ("\\boxed{\\frac{\\pi}{2}}", "pi/2", 1.0),  # plain-expression gold
    ("\\boxed{1024}", "2**10", 1.0),
    ("\\boxed{-3}", "-3", 1.0),
    ("\\boxed{3}", "-3", 0.0),
    # algebraic equivalence
    ("\\boxed{(x+1)^2}", "x^2+2x+1", 1.0),
    ("\\boxed{x^2+1}", "x^2+2x+1", 0.0),
    ("\\boxed{2a+2b}", "2(a+b)", 1.0),
    # equations
    ("\\boxed{x=5}", "5", 1.0),
    ("\\boxed{5}", "x=5", 1.0),
    ("\\boxed{x=4}", "5", 0.0),
    ("\\boxed{y=2x+3}", "y=2x+3", 1.0),
    # sets, tuples, intervals, matrices
    ("\\boxed{\\{1,2,3\\}}", "\\{3,2,1\\}", 1.0),
    ("\\boxed{\\{1,2\\}}", "\\{1,2,3\\}", 0.0),
    ("\\boxed{(3,-1)}", "(3, -1)", 1.0),
    ("\\boxed{(2,1)}", "(1,2)", 0.0),  # an ordered pair, order matters
    ("\\boxed{[0,1)}", "[0,1)", 1.0),
    ("\\boxed{[0,1]}", "[0,1)", 0.0),
    ("\\boxed{(-\\infty, 2)}", "x<2", 1.0),
    ("\\boxed{(-\\infty,-1)\\cup(1,\\infty)}", "(-\\infty,-1)\\cup(1,\\infty)", 1.0),
    ("\\boxed{\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", 1.0),
    ("\\boxed{\\begin{pmatrix}1&2\\\\3&5\\end{pmatrix}}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", 0.0),
    # units, degrees, percent, text, multiple choice
    ("\\boxed{10 \\text{ cm}}", "10", 1.0),
    ("\\boxed{\\$5}", "5", 1.0),
    ("\\boxed{90^\\circ}", "90", 1.0),
    ("\\boxed{45^{\\circ}}", "90", 0.0),
    ("\\boxed{25\\%}", "25", 1.0),
    ("\\boxed{\\text{Monday}}", "\\text{Monday}", 1.0),
    ("\\boxed{\\text{Tuesday}}", "\\text{Monday}", 0.0),
    ("\\boxed{\\text{(B)}}", "B", 1.0),
    ("\\boxed{\\textbf{(D)}}", "D", 1.0),
    ("\\boxed{B}", "C", 0.0),
    # thousands separators
    ("\\boxed{1,000}", "1000", 1.0),
    ("\\boxed{1\\,000}", "1000", 1.0),
    ("\\boxed{1{,}000{,}000}", "1000000", 1.0),
    ("\\boxed{1000}", "1,000", 1.0),
    ("\\boxed{007}", "7", 1.0),
    # several boxes: the last one wins
    ("First guess \\boxed{41}. Rechecking the arithmetic... \\boxed{42}", "42", 1.0),
    ("\\boxed{42} hmm, no, actually \\boxed{41}", "42", 0.0),
    # a long chain of thought that mentions the gold before a different final box
    (LONG_COT + "Therefore the answer is \\boxed{17}.", "17", 1.0),
    (LONG_COT + "Therefore the answer is \\boxed{17}.", "42", 0.0),
    # <think> blocks: only the last box counts, wherever it is
    ("<think>maybe \\boxed{41}</think>The answer is \\boxed{42}.", "42", 1.0),
    ("<think>I get \\boxed{42}</think>Final answer: \\boxed{41}", "42", 0.0),
    ("<think>long reasoning... so \\boxed{42}", "42", 1.0),  # unterminated think: its last box counts
    ("<think>so \\boxed{42} ... but let me recheck \\boxed{4", "42", 0.0),  # truncated inside the last box
    # hedging is never rewarded
    ("\\boxed{41, 42, 43}", "42", 0.0),
    ("\\boxed{42 \\text{ or } 43}", "42", 0.0),
    ("\\boxed{42 or 43}", "42", 0.0),
    ("\\boxed{42 \\text{ (or 43)}}", "42", 0.0),
    ("\\boxed{42 \\lor 43}", "42", 0.0),
    ("\\boxed{x = 42 \\text{ or } x = 43}", "42", 0.0),
    ("\\boxed{x=4, x=5}", "x=5", 0.0),
    ("\\boxed{\\{41, 42\\}}", "42", 0.0),
    ("\\boxed{[40, 45]}", "42", 0.0),
    ("\\boxed{(41, 43)}", "42", 0.0),
    ("\\boxed{2 \\pm \\sqrt{3}}", "2+\\sqrt{3}", 0.0),
    ("\\boxed{x}", "42", 0.0),
    ("\\boxed{n}", "5", 0.0),
    # ...unless the gold is itself that kind of object
    ("\\boxed{2 \\pm \\sqrt{3}}", "2 \\pm \\sqrt{3}", 1.0),
    ("\\boxed{\\{5, 4\\}}", "4, 5", 1.0),
    ("\\boxed{-2, 2}", "x^2 = 4", 1.0),
    # empty box, no box, and the accepted box spellings
    ("\\boxed{}", "42", 0.0),
    ("\\boxed{ }", "42", 0.0),
    ("The answer is 42.", "42", 0.0),
    ("\\boxed{42}", "\\boxed{42}", 1.0),  # a gold stored boxed is its content
    ("\\fbox{42}", "42", 1.0),
    ("so the answer is \\boxed 42", "42", 1.0),
    ("$\\boxed{\\frac{1}{2}}$.", "1/2", 1.0),
    ("\\boxed{42.}", "42", 1.0),
    ("\\boxed{\\mathbf{42}}", "42", 1.0),
    # numbers in a base: digits and base must both agree (math-verify drops the subscript: 52_87 was 52)
    ("\\boxed{52_87}", "52_8", 0.0),
    ("\\boxed{52_9}", "52_8", 0.0),
    ("\\boxed{1101_2}", "1011_2", 0.0),
    ("\\boxed{42}", "52_8", 0.0),  # the right value in base 10 is not what the question asked for
    ("\\boxed{52_{8}}", "52_8", 1.0),
    ("\\boxed{52}", "52_8", 1.0),  # no subscript: read in the gold's base
    ("\\boxed{4210_5}", "4210_{5}", 1.0),
    ("\\boxed{\\text{A3}_{16}}", "A3_{16}", 1.0),
    ("\\boxed{42_{10}}", "42", 1.0),
    # small numbers keep 6 significant digits (math-verify rounds to 6 decimal places)
    ("\\boxed{.00006727}", ".0000672", 0.0),
    ("\\boxed{0.00000012}", "0.00000013", 0.0),
    ("\\boxed{(0.0000672, 1)}", "(0.00006727, 1)", 0.0),
    ("\\boxed{0.0333}", "\\frac{1}{30}", 0.0),
    ("\\boxed{10^{-400}}", "10^{-401}", 0.0),  # math-verify: (a - b).evalf(chop=True) == 0
    ("\\boxed{2^{-40}}", "2^{-41}", 0.0),
    ("\\boxed{1.5 \\times 10^{-300}}", "1.6 \\times 10^{-300}", 0.0),
    ("\\boxed{15 \\times 10^{-301}}", "1.5 \\times 10^{-300}", 1.0),
    ("\\boxed{0.0000672}", ".0000672", 1.0),
    ("\\boxed{6.72 \\times 10^{-5}}", "0.0000672", 1.0),
    ("\\boxed{0.0333333}", "\\frac{1}{30}", 1.0),
    # a leading 0 group is not digit grouping
    ("\\boxed{0,111}", "111", 0.0),
    ("\\boxed{0{,}500}", "500", 0.0),
    ("\\boxed{-0,250}", "-250", 0.0),
    ("\\boxed{1,111}", "1111", 1.0),
    # a gold assigning several values to one variable accepts those values, and only them
    ("\\boxed{1, 2}", "x = 1, 2", 1.0),
    ("\\boxed{4,-8,-10}", "a=4,\\,-8,\\,-10", 1.0),
    ("\\boxed{x = 2, 1}", "x=1,2", 1.0),
    ("\\boxed{1}", "x = 1, 2", 0.0),
    ("\\boxed{1, 3}", "x=1,2", 0.0),
    # upright constants and operator names (math-verify drops \mathrm{...} at the end as a unit)
    ("\\boxed{1-\\frac{1}{e}}", "1-\\frac{1}{\\mathrm{e}}", 1.0),
    ("\\boxed{1-\\frac{1}{\\mathrm{e}}}", "1-e^{-1}", 1.0),
    ("\\boxed{{\\rm e}^2}", "e^{2}", 1.0),
    ("\\boxed{\\mathrm{e}^{2}}", "e^3", 0.0),
    ("\\boxed{2\\mathrm{i}}", "2i", 1.0),
    ("\\boxed{\\pi\\mathrm{i}}", "i\\pi", 1.0),
    ("\\boxed{3 - 4\\mathrm{i}}", "3+4i", 0.0),
    ("\\boxed{\\frac{\\mathrm{d}y}{\\mathrm{d}x}}", "\\frac{dy}{dx}", 1.0),
    ("\\boxed{\\operatorname{sin} x}", "\\sin x", 1.0),
    ("\\boxed{\\operatorname{ln} 2}", "\\ln 2", 1.0),
    ("\\boxed{\\operatorname{sin} x}", "\\cos x", 0.0),
    # an answer written exactly like the gold matches, even where both parse to an undefined value
    ("\\boxed{12:00}", "12:00", 1.0),
    ("\\boxed{\\frac{1}{0}}", "\\frac{1}{0}", 1.0),
    ("\\boxed{1:0}", "12:00", 0.0),
    ("\\boxed{12:30}", "12:00", 0.0),
    # equations in functions: rearranged sides match, without sympy's solve
    ("\\boxed{f(t) \\cos \\theta(t) = m l \\ddot{\\theta}(t)-m g \\sin \\theta(t)}", MINERVA_EQUATION, 1.0),
    ("\\boxed{m l \\ddot{\\theta}(t)-m g \\sin \\theta(t)-f(t) \\cos \\theta(t)=0}", MINERVA_EQUATION, 1.0),
    ("\\boxed{" + MINERVA_EQUATION + "7}", MINERVA_EQUATION, 0.0),
    ("\\boxed{2y = 4x + 2}", "y = 2x + 1", 1.0),  # several unknowns: rearranged, never solved
    ("\\boxed{3x + 2y = 7}", "6x + 4y = 14", 1.0),
    ("\\boxed{2 < x}", "x > 2", 1.0),
    ("\\boxed{x^2 = 4}", "x^2 - 4 = 0", 1.0),
    ("\\boxed{y = 2x + 2}", "y = 2x + 1", 0.0),
    ("\\boxed{x + y = 7}", "x + y < 7", 0.0),
    ("\\boxed{x^{27}+3x+2=0}", "x^2+3x+2=0", 0.0),  # solve() on this ran past 10 s
    ("\\boxed{N=n7}", "N=n", 0.0),  # an OlympiadBench gold; math-verify reads N=n as n=n, no unknown left
    ("\\boxed{y = \\sin x}", "y=\\sin(x)", 1.0),
    ("\\boxed{y = \\cos x}", "y=\\sin(x)", 0.0),
    # known limitations: the right answer is on the left, the verifier disagrees
    pytest.param("\\boxed{\\sin 60^\\circ}", "\\frac{\\sqrt{3}}{2}", 1.0,
                 marks=known_limitation("math-verify reads 60^\\circ inside sin as 60 radians")),
    pytest.param("\\boxed{42 \\text{ (in base 10)}}", "42", 1.0,
                 marks=known_limitation("digits inside \\text{} next to digits outside it are treated as a hedge")),
    pytest.param("\\boxed{" + "(" * 10 + "42" + ")" * 10 + "}", "42", 1.0,
                 marks=known_limitation("bracket nesting past MAX_BRACKET_DEPTH is compared as text only")),
    pytest.param("\\boxed{10^{10^{10}} - 10^{10^{10}}}", "0", 1.0,
                 marks=known_limitation("numbers past MAX_RESULT_DIGITS are never evaluated")),
]


@pytest.mark.parametrize(("response", "gold", "expected"), SYMBOLIC_CASES)
def test_compute_score_symbolic(response, gold, expected):
    assert compute_score(response, gold) == expected


def test_the_table_is_large_enough():
    assert len(SYMBOLIC_CASES) >= 120


# --------------------------------------------------------------------------- compute_score, exact


@pytest.mark.parametrize(
    ("response", "gold", "expected"),
    [
        ("\\boxed{42}", "42", 1.0),
        ("\\boxed{ 4 2 }", "42", 1.0),  # whitespace is deleted on both sides, nothing else changes
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", 1.0),
        ("\\boxed{\\frac12}", "\\frac{1}{2}", 0.0),
        ("\\boxed{0.5}", "\\frac{1}{2}", 0.0),
        ("\\boxed{1,000}", "1000", 0.0),
        ("\\boxed{42}", "\\boxed{42}", 1.0),
        ("\\boxed{41} no wait \\boxed{42}", "42", 1.0),
        ("\\boxed{42} no wait \\boxed{41}", "42", 0.0),
        ("\\boxed{}", "", 0.0),
        ("The answer is 42", "42", 0.0),
    ],
)
def test_compute_score_exact(response, gold, expected):
    assert compute_score(response, gold, mode="exact") == expected


# --------------------------------------------------------------------------- compute_score, unboxed

# math-verify's own answer search (verl's validation): priorities "final answer is" / a box, then
# "answer:", then the rightmost plain LaTeX or number; equal priorities go to the rightmost match.
UNBOXED_CASES = [
    ("The answer is 42.", "42", 1.0),                      # no box needed
    ("So we get 41, then 42", "42", 1.0),                  # the rightmost number
    ("So we get 42, then 41", "42", 0.0),
    ("the answer is $\\frac{3}{4}$", "0.75", 1.0),
    ("x = 1/2", "\\frac{1}{2}", 1.0),                     # a plain expression
    ("Answer: 1,000", "1000", 1.0),                        # thousands separator
    ("the value is $(1, 2)$", "(1,2)", 1.0),
    ("<think>maybe 5</think> Final answer: \\boxed{7}", "7", 1.0),
    ("\\boxed{8} and then $7$", "8", 1.0),                 # a box outranks later plain LaTeX
    ("The final answer is $7$. Check: \\boxed{8}", "7", 0.0),  # same priority: the rightmost (the box)
    ("\\boxed{41, 42, 43}", "42", 0.0),                    # a set is not one of its members
    ("\\boxed{2", "2", 0.0),                               # an unclosed box, nothing else to read
    ("no answer here", "5", 0.0),
    ("", "5", 0.0),
]


@pytest.mark.parametrize(("response", "gold", "expected"), UNBOXED_CASES)
def test_compute_score_unboxed(response, gold, expected):
    assert compute_score(response, gold, mode="unboxed") == expected


def test_the_unboxed_mode_reads_answers_the_boxed_modes_do_not():
    assert [compute_score("The answer is 42.", "42", mode=mode) for mode in ("symbolic", "exact", "unboxed")] == \
        [0.0, 0.0, 1.0]


def test_unboxed_pool_sends_whole_responses_and_keeps_the_deadline():
    responses = ["The answer is 42.", "So 42 it is, no: 41", "\\boxed{42}", "", "x" * 50_000 + " 42"]
    with VerifierPool(workers=1, timeout_s=5.0, mode="unboxed") as pool:
        result = pool.score(responses, ["42"] * len(responses))
    assert result.scores == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert result.judged == 4 and result.timeouts == 0  # the empty response needs no worker


def test_unknown_mode_is_a_programming_error():
    with pytest.raises(ValueError, match="mode"):
        compute_score("\\boxed{1}", "1", mode="fuzzy")


def test_compute_score_works_off_the_main_thread():
    # The classic failure: signal-based timeouts raise in threads and every reward becomes 0.
    with ThreadPoolExecutor(max_workers=2) as executor:
        scores = list(executor.map(compute_score, ["\\boxed{\\frac{1}{2}}", "\\boxed{3}"], ["0.5", "4"]))
    assert scores == [1.0, 0.0]


def test_compute_score_reports_errors_instead_of_raising(caplog):
    assert compute_score(None, "42") == 0.0  # type: ignore[arg-type]
    assert "verifier error" in caplog.text


# --------------------------------------------------------------------------- hostile inputs, through the pool

HOSTILE_TIMEOUT_S = 2.0

HOSTILE_CASES = [
    ("unbalanced box", "so the answer is \\boxed{42", "42", 0.0),
    ("unbalanced inside", "\\boxed{\\frac{1}{2}", "\\frac{1}{2}", 0.0),
    ("only opening braces", "\\boxed{" + "{" * 60_000, "42", 0.0),
    ("exponent tower", "\\boxed{9^{9^{9^{9}}}}", "42", 0.0),
    ("exponent tower equal to its gold", "\\boxed{9^{9^{9^{9}}}}", "9^{9^{9^{9}}}", 1.0),
    ("power with a huge exponent", "\\boxed{2^{10^{10}}}", "1024", 0.0),
    ("factorial of a factorial", "\\boxed{(10!)!}", "3628800", 0.0),
    ("giant factorial equal to its gold", "\\boxed{100000!}", "100000!", 1.0),
    ("symbolic power that expand would explode", "\\boxed{(x+1)^{10^{10}}}", "x", 0.0),
    ("giant binomial", "\\boxed{\\binom{10^{10}}{10^{5}}}", "1", 0.0),
    ("gamma of a huge number", "\\boxed{\\Gamma(10^{10})}", "1", 0.0),
    ("300 nested parentheses", "\\boxed{" + "(" * 300 + "1+1" + ")" * 300 + "}", "3", 0.0),
    ("40 nested braces", "\\boxed{" + "{" * 40 + "7" + "}" * 40 + "}", "8", 0.0),
    ("5,000-digit literal", "\\boxed{" + "9" * 5_000 + "}", "42", 0.0),
    ("control characters in the reasoning", "\x00\x07\x1b[31m thinking \x0c\x7f... \\boxed{42}", "42", 1.0),
    ("control characters as the answer", "\\boxed{\x1b[0m}", "42", 0.0),
    ("unknown macro", "\\boxed{\\foo{42}}", "42", 0.0),
    ("unknown bare macro", "\\boxed{\\weirdmacro}", "42", 0.0),
    ("60k-character response", LONG_COT[:60_000] + "\\boxed{42}", "42", 1.0),
    ("60k characters, no box", "x" * 60_000, "42", 0.0),
    ("5,000 boxes", "\\boxed{1} " * 5_000 + "\\boxed{42}", "42", 1.0),
    ("polynomial equation of degree 27", "\\boxed{x^{27}+3x+2=0}", "x^2+3x+2=0", 0.0),
    ("equation in functions, digit appended", "\\boxed{" + MINERVA_EQUATION + "7}", MINERVA_EQUATION, 0.0),
]


@pytest.fixture(scope="module")
def symbolic_pool():
    """One real pool for the tests that only score (worker start-up is the expensive part)."""
    with VerifierPool(workers=2, timeout_s=HOSTILE_TIMEOUT_S) as pool:
        pool.score(["\\boxed{1}"] * 2, ["1"] * 2)  # wait for the workers to start
        yield pool


@pytest.mark.parametrize(("name", "response", "gold", "expected"), HOSTILE_CASES, ids=[c[0] for c in HOSTILE_CASES])
def test_hostile_input_is_scored_within_the_deadline(symbolic_pool, name, response, gold, expected):
    started = time.monotonic()
    result = symbolic_pool.score([response], [gold])
    elapsed = time.monotonic() - started
    assert elapsed < HOSTILE_TIMEOUT_S + 1.0, f"{name} took {elapsed:.1f} s"
    assert result.scores == [expected]
    assert result.errors == 0


# --------------------------------------------------------------------------- the pool


def _scripted_score(response: str, gold: str) -> float:
    """Test stand-in for the verifier, run in the workers (picklable: top level of this module).

    Golds act as scripts: HANG_IN_C blocks SIGALRM and sleeps, like C code the worker's own alarm
    cannot interrupt, so only the parent's kill stops it; SLEEP is interruptible by that alarm; DIE
    kills its own worker; SLOW takes 0.2 s. Anything else is scored by compute_score.
    """
    if gold == "HANG_IN_C":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(60)
    if gold == "SLEEP":
        time.sleep(60)
    if gold == "DIE":
        os.kill(os.getpid(), signal.SIGKILL)
    if gold == "SLOW":
        time.sleep(0.2)
        return 1.0
    return compute_score(response, gold, timeout_s=None)


def _is_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def test_pool_keeps_input_order(symbolic_pool):
    responses = [f"\\boxed{{{i}}}" for i in range(40)]
    golds = [str(i) if i % 3 else str(i + 1) for i in range(40)]
    result = symbolic_pool.score(responses, golds)  # 40 items in chunks of 5 over two workers
    assert isinstance(result, BatchScore)
    assert result.scores == [0.0 if i % 3 == 0 else 1.0 for i in range(40)]
    assert (result.timeouts, result.errors, result.examples) == (0, 0, [])


def test_pool_judges_each_distinct_answer_once_and_fans_the_verdict_out(symbolic_pool):
    # Two problems, four samples each; a cut-off response has no box and never reaches a worker.
    responses = [LONG_COT + "\\boxed{\\frac{1}{2}}", "\\boxed{\\frac{1}{2}}", "\\boxed{0.5}", "\\boxed{\\frac{1}{2",
                 "\\boxed{42}", "draft \\boxed{7} then \\boxed{42}", "\\boxed{43}", "\\boxed{42}"]
    golds = ["\\frac{1}{2}"] * 4 + ["\\boxed{42}", "42", "42", "42"]  # a boxed gold is the same gold
    result = symbolic_pool.score(responses, golds)
    assert result.scores == [1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    assert result.judged == 4  # (\frac{1}{2}, \frac{1}{2}), (0.5, \frac{1}{2}), (42, 42), (43, 42)
    assert (result.timeouts, result.errors) == (0, 0)


def test_a_failed_verdict_counts_once_per_response_it_decides():
    jobs = [reward._Job("x", "1", [0, 2, 3]), reward._Job("y", "1", [1])]
    outcomes = [deadline_pool.Outcome(None, "timeout", "killed worker pid 1 past the deadline", 11.0),
                deadline_pool.Outcome(1.0, "ok", "", 0.1)]
    result = reward._tally(["\\boxed{x}", "\\boxed{y}", "\\boxed{x}", "\\boxed{x}"], ["1"] * 4, jobs, outcomes)
    assert (result.scores, result.timeouts, result.errors, result.judged) == ([0.0, 1.0, 0.0, 0.0], 3, 0, 2)
    assert result.examples[0].startswith("item 0 (and 2 identical answers) timeout after 11.0 s")


def test_pool_rejects_a_response_that_is_not_text(symbolic_pool):
    with pytest.raises(TypeError, match="item 1: .* got NoneType and str"):
        symbolic_pool.score(["\\boxed{1}", None], ["1", "1"])


def test_pool_kills_a_worker_stuck_past_the_deadline_and_replaces_it():
    timeout_s = 1.0
    responses = ["\\boxed{1}"] * 6
    golds = ["1", "1", "HANG_IN_C", "1", "1", "1"]
    with VerifierPool(workers=1, timeout_s=timeout_s, chunk_size=6, score_fn=_scripted_score) as pool:
        pool.score(["\\boxed{1}"], ["1"])
        (stuck_pid,) = pool.worker_pids()
        started = time.monotonic()
        result = pool.score(responses, golds)
        elapsed = time.monotonic() - started
        assert result.scores == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0]  # the rest of the chunk was re-queued
        assert (result.timeouts, result.errors) == (1, 0)
        assert "item 2 timeout" in result.examples[0]
        assert result.slowest_s < timeout_s + 1.0
        assert not _is_running(stuck_pid)
        assert pool.worker_pids() != [stuck_pid]
        assert pool.score(["\\boxed{7}"], ["7"]).scores == [1.0]  # the replacement works
    # Killing costs the deadline plus one worker start-up (spawn), not more.
    assert elapsed < timeout_s + 10.0


def test_pool_worker_alarm_stops_interruptible_work_without_a_kill(monkeypatch):
    monkeypatch.setattr(deadline_pool, "HARD_DEADLINE_GRACE_S", 5.0)  # a loaded machine must not turn this into a kill
    with VerifierPool(workers=1, timeout_s=0.5, score_fn=_scripted_score) as pool:
        pool.score(["\\boxed{1}"], ["1"])
        pids = pool.worker_pids()
        result = pool.score(["\\boxed{1}", "\\boxed{1}", "\\boxed{2}"], ["1", "SLEEP", "2"])
        assert result.scores == [1.0, 0.0, 1.0]
        assert (result.timeouts, result.errors) == (1, 0)
        assert pool.worker_pids() == pids


def test_pool_counts_a_crashed_worker_as_an_error_and_finishes_the_batch():
    golds = ["1", "DIE", "1", "1", "1"]
    with VerifierPool(workers=1, timeout_s=5.0, chunk_size=5, score_fn=_scripted_score) as pool:
        result = pool.score(["\\boxed{1}"] * 5, golds)
    assert result.scores == [1.0, 0.0, 1.0, 1.0, 1.0]
    assert (result.timeouts, result.errors) == (0, 1)
    assert "item 1 error" in result.examples[0]


def test_pool_survives_a_worker_killed_from_outside_mid_batch():
    with VerifierPool(workers=2, timeout_s=5.0, chunk_size=8, score_fn=_scripted_score) as pool:
        pool.score(["\\boxed{1}"] * 2, ["1"] * 2)
        victim = pool.worker_pids()[0]
        killer = threading.Timer(0.5, os.kill, (victim, signal.SIGKILL))
        killer.start()
        result = pool.score(["busy"] * 16, ["SLOW"] * 16)  # 8 x 0.2 s per worker: the kill lands mid-chunk
        killer.join()
        assert result.errors == 1  # the item the victim was working on
        assert sum(result.scores) == 15.0
        assert victim not in pool.worker_pids()
        assert not _is_running(victim)


def test_close_leaves_no_child_processes_and_is_idempotent():
    pool = VerifierPool(workers=2, timeout_s=5.0, score_fn=_scripted_score)
    pool.score(["\\boxed{1}"], ["1"])
    pids = pool.worker_pids()
    pool.close()
    pool.close()
    assert not any(_is_running(pid) for pid in pids)  # reaped: not even zombies
    assert not [child for child in multiprocessing.active_children() if child.pid in pids]
    with pytest.raises(RuntimeError, match="closed"):
        pool.score(["\\boxed{1}"], ["1"])


def test_pool_rejects_mismatched_lengths():
    with VerifierPool(workers=1, timeout_s=5.0, score_fn=_scripted_score) as pool:
        with pytest.raises(ValueError, match="ground truths"):
            pool.score(["\\boxed{1}"], [])
        assert pool.score([], []).scores == []


def test_score_batch_is_a_one_shot_pool_that_keeps_order():
    responses = ["\\boxed{\\frac{1}{2}}", "\\boxed{41, 42, 43}", "no box", "\\boxed{x=5}"]
    assert score_batch(responses, ["0.5", "42", "42", "5"], workers=2, timeout_s=5.0) == [1.0, 0.0, 0.0, 1.0]
    assert score_batch(["\\boxed{0.5}"], ["\\frac{1}{2}"], mode="exact", workers=1) == [0.0]


UNGUARDED_SCRIPT = """
from justrl_min.reward import score_batch
print(score_batch(["\\\\boxed{1}"], ["1"], workers=1, timeout_s=5.0))
"""


def test_a_script_without_the_main_guard_gets_an_error_naming_it(tmp_path):
    # "spawn" workers re-import the main script; unguarded, each would create a pool of its own.
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED_SCRIPT)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith("RuntimeError: verifier workers cannot start: ")
    assert str(script) in last_line and 'if __name__ == "__main__":' in last_line
    assert "keep failing" not in done.stderr
    guarded = tmp_path / "guarded.py"
    guarded_body = "".join("    " + line + "\n" for line in UNGUARDED_SCRIPT.split("\n"))
    guarded.write_text('if __name__ == "__main__":\n' + guarded_body)
    done = subprocess.run([sys.executable, str(guarded)], capture_output=True, text=True, env=env, timeout=120)
    assert (done.returncode, done.stdout) == (0, "[1.0]\n"), done.stderr
