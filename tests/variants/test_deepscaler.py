"""DeepScaleR's rule grader: its rules one by one, hostile strings, and the pinned verifier table."""

import pickle
import time
from pathlib import Path

import pytest

from bench.verifier_cases import CASES, current_verdicts, markdown
from justrl_min.variants.deepscaler import grade, grade_answer, hendrycks_normalize, prm800k_normalize

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("raw, normalized", [
    ("\\text{Tuesday}", "Tuesday"),                 # a whole \text{} is unwrapped
    ("\\dfrac{1}{2}", "\\frac{1}{2}"),
    ("\\frac12", "\\frac{1}{2}"),
    ("\\frac1{72}", "\\frac{1}{72}"),
    ("\\frac{72}1", "\\frac{72}1"),                # only the first argument is braced
    ("\\sqrt3", "\\sqrt{3}"),
    ("0.5", "\\frac{1}{2}"),
    ("3/4", "\\frac{3}{4}"),
    ("03/4", "03/4"),                               # not plainly written integers
    ("x = 5", "5"),                                 # a short left-hand side goes
    ("abc = 5", "abc=5"),                           # a long one stays
    ("5 \\text{ cm}", "5"),                         # unit after "\text{ "
    ("5 \\text{ cm} \\text{ m}", "5 \\text{ cm} \\text{ m}"),  # two units: left as it was
    ("90^\\circ", "90"),
    ("\\left( 1, 2 \\right)", "(1,2)"),
    (".5", "\\frac{1}{2}"),                         # ".5" -> "0.5" -> 1/2
    ("\\$5", "5"),
    ("25\\%", "25"),
    ("2\\sqrt", "2\\sqrt"),                         # trailing \sqrt: left as it was
])
def test_hendrycks_normalization(raw, normalized):
    assert hendrycks_normalize(raw) == normalized


@pytest.mark.parametrize("raw, normalized", [
    ("\\frac{1}{2}", "1/2"),
    ("\\frac{1+\\sqrt{5}}{2}", "1+sqrt(5)/2"),     # latex2text writes a/b without parentheses
    ("\\sqrt[3]{2}", "sqrt(2)"),                    # ... and drops a root's degree
    ("3\\frac{1}{2}", "3+1/2"),                     # mixed number
    ("2\\pi", "2pi"),
    ("\\$1,000", "1000"),
    ("10.0", "10"),
    ("2 \\text{ or } 3", "2,3"),
    ("3 million", "3*10^6"),
    ("12 hours", "12"),
    ("\\text{Monday}", "mon"),                      # unit words go wherever they are
    ("\\{1,2\\}", "1,2"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "[1;2]"),
    ("E", "e"),
])
def test_prm800k_normalization(raw, normalized):
    assert prm800k_normalize(raw) == normalized


@pytest.mark.parametrize("answer, gold, correct", [
    ("\\frac{2}{4}", "\\frac{1}{2}", False),         # fractions must match as written
    ("1.5", "\\frac{3}{2}", True),                   # a decimal is not a fraction: sympy decides
    ("10^3", "1000", False),                        # integer gold needs an integer answer
    ("1000.0", "1000", True),
    ("(x+1)^2", "x^2+2x+1", True),                  # sympy, one letter
    ("b+a", "a+b", True),                           # two letters
    ("c+b+a", "a+b+c", False),                      # three letters: no sympy
    ("[1,2]", "(1,2)", False),                      # tuples keep their brackets
    ("(2,1)", "(1,2)", False),                      # ... and their order
    ("(1,\\frac{4}{2})", "(1,2)", False),           # element by element: integer 2 wants integer text
    ("(1,0.5)", "(1,\\frac{1}{2})", True),
    ("\\sqrt{12}", "2\\sqrt{3}", True),
    ("2^{1/2}", "\\sqrt{2}", False),                # "^(" style powers are not evaluated
])
def test_grade_answer_rules(answer, gold, correct):
    assert grade_answer(answer, gold) is correct


def test_grade_reads_the_last_box_and_unboxes_the_gold():
    assert grade("first \\boxed{3}, then \\boxed{4}", "\\boxed{4}")
    assert not grade("\\boxed{4} no, \\boxed{3}", "4")
    assert not grade("4", "4")                      # no box
    assert not grade("\\boxed{4", "4")              # unbalanced last box
    assert not grade("\\boxed{4}", "")              # empty gold
    assert grade("\\boxed{4}", "\\fbox{4}")          # golds are unboxed by reward.unbox_gold, as everywhere
    # An unbalanced gold box stays the gold's text (reward.unbox_gold, the data loader's rule too);
    # Hendrycks normalisation then reads it as 4.
    assert grade("\\boxed{4}", "\\boxed{4")


@pytest.mark.parametrize("answer", [
    "9^{9^{9^{9}}}", "9**9**9", "(0,)*10**9", "[0]*10**9", "1<<10000000000", "'a'*99999999999",
    "99999999!", "(9)!" * 3, "__import__('os').system('true')", "1+" * 50_000 + "1",
    "{" * 3_000 + "x" + "}" * 3_000, "\\frac{" * 2_000 + "1" + "}{2}" * 2_000, "\\sqrt{" * 3_000,
    "\x00\x01\x7f", "\\begin{pmatrix}" * 500, "\\", "}{" * 1_000,
])
def test_hostile_answers_are_rejected_quickly(answer):
    started = time.monotonic()
    assert grade("\\boxed{" + answer + "}", "\\frac{\\sqrt{3}}{2}") is False
    assert time.monotonic() - started < 2.0


def test_grade_is_picklable_for_the_verifier_pool():
    assert pickle.loads(pickle.dumps(grade)) is grade
    assert pickle.loads(pickle.dumps(grade_answer)) is grade_answer


@pytest.mark.parametrize("number, case", list(enumerate(CASES, 1)), ids=[f"{n}:{c.note}" for n, c in
                                                                        enumerate(CASES, 1)])
def test_verifier_table_verdicts_are_pinned(number, case):
    deepscaler, math_verify = current_verdicts(case)
    assert (deepscaler, math_verify) == (case.deepscaler, case.math_verify), f"case #{number}"


def test_verifier_table_page_is_up_to_date():
    assert (ROOT / "docs" / "verifier_cases.md").read_text() == markdown(CASES), \
        "regenerate: python bench/verifier_cases.py --write docs/verifier_cases.md"


def test_verifier_table_shows_disagreements_both_ways():
    assert any(c.deepscaler and not c.math_verify for c in CASES)
    assert any(c.math_verify and not c.deepscaler for c in CASES)


def test_reward_mode_deepscaler_scores_through_compute_score_and_the_pool():
    from justrl_min.reward import compute_score, score_batch

    # DeepScaleR: an unreduced fraction must match as written; math-verify accepts it.
    assert compute_score("so \\boxed{\\frac{2}{4}}", "\\frac{1}{2}", mode="deepscaler") == 0.0
    assert compute_score("so \\boxed{\\frac{2}{4}}", "\\frac{1}{2}", mode="symbolic") == 1.0
    assert compute_score("\\boxed{0.5}", "\\boxed{1/2}", mode="deepscaler") == 1.0
    # under the deadline pool, in worker processes: 2.99999999 is within its integer tolerance of 3
    assert score_batch(["\\boxed{3}", "\\boxed{2.99999999}", "no box"], ["3", "3", "3"], mode="deepscaler",
                       workers=1, timeout_s=5.0) == [1.0, 1.0, 0.0]
