"""The verifier: last-box answer extraction, scoring against the gold, and a pool with hard deadlines.

The reward is the only teacher, so it must be right and it must never stall a training step.
One step scores ~2,048 responses of up to ~60k characters; this module is built around that.

Choices
-------
* **Last box only.** The answer is the content of the LAST ``\\boxed{...}`` / ``\\fbox{...}`` (also the
  ``\\boxed 5`` form) in the whole response; earlier boxes are drafts. ``<think>`` tags are not
  special: a response cut off inside an unterminated ``<think>`` block is scored on the last box it
  wrote (JustRL's rule; truncation is tracked separately by the trainer). If the last box is cut off
  mid-braces the response has no answer and scores 0 - an earlier box does not stand in for it.
* **symbolic** (default): gold and answer are each parsed ONCE with math-verify, restricted to the
  box (no fallback regexes that would fish a bare number out of prose or a hedge), and compared
  with ``verify(gold, answer)``, gold first. One candidate per side, so "any of several parses
  matches" cannot happen. If either side does not parse, the two are compared as text.
  Before parsing: C0 control characters are dropped, surrounding ``$`` and a trailing ``.`` are
  stripped, and digit groups written ``1\\,000`` / ``1{,}000`` / ``1~000`` / ``1 000`` become ``1000``.
  Two plain integers are compared as integers: math-verify would agree, and its pure-Python LaTeX
  parser costs ~10 ms per new string (DAPO's golds are all integers).
  Where math-verify is wrong the wrapper steps in (each place names the behaviour):
  an answer written exactly like the gold matches (even ``12:00``, which parses to an undefined
  value); a base-n number (``52_8``) must match digits and base; numbers must agree to 6
  significant digits as well as to math-verify's 6 decimal places (``.00006727`` is not
  ``.0000672``, nor ``10^{-400}`` ``10^{-401}``); upright ``\\mathrm{e}``, ``\\mathrm{i}``,
  ``\\mathrm{d}`` and ``\\operatorname{sin}``-style names read as their italic forms; two
  (in)equations match when one is a rearrangement of the other, and are ``solve``d only when that
  is cheap (one unknown, a polynomial of low degree).
* **unboxed**: math-verify as verl's in-training validation calls it (JustRL's Fig. 1 protocol): no
  box needed. The parent sends the whole response; math-verify's ``parse`` picks the answer with its
  own priorities (``final answer is ...``, then a box, then ``answer: ...``, then the rightmost plain
  ``$...$`` LaTeX or bare number anywhere), and the gold is parsed as ``\\boxed{gold}``. None of the
  symbolic mode's guards apply (hedges, precision, hostile input beyond the deadline): this mode
  reproduces a protocol, it is not a training reward.
* **exact**: JustRL's strict match. The last box's content must equal the gold (a gold stored as
  ``\\boxed{x}`` is ``x``) after deleting all whitespace (LaTeX math ignores it) and nothing else:
  ``\\frac12`` is not ``\\frac{1}{2}``, ``1,000`` is not ``1000``.
* **No reward for hedging.** An answer naming several values (``41, 42, 43``, ``42 \\text{ or } 43``,
  ``2 \\pm \\sqrt 3``), an interval or union, or a tuple is incorrect unless the gold is itself a set,
  tuple, interval, (non-assignment) relation or an assignment of several values (``x = 1, 2``);
  math-verify then compares like with like. An answer that says "or" (``\\lor``, ``\\vee``) when
  the gold does not, or that hides digits inside ``\\text{}`` next to digits outside it
  (``42 \\text{ (or 43)}``, whose text the LaTeX normaliser would silently drop), is incorrect. A
  bare variable is not a number.
* **Hostile input** is rejected before sympy evaluates anything: answers over
  ``MAX_ANSWER_CHARS``; bracket nesting deeper than ``MAX_BRACKET_DEPTH`` (the LaTeX parser is
  exponential in it); and, after the (lazy) parse but before any evaluation, expressions whose
  integers would exceed ``MAX_RESULT_DIGITS`` digits (exponent towers ``9^{9^{9^{9}}}``, giant
  factorials, huge binomials). A rejected answer can still match a gold written identically.

Deadline design
---------------
math-verify's own timeouts use ``SIGALRM``, which works only in a process's main thread (in a
thread it raises) and cannot interrupt C code such as a big-integer power. So:

1. ``compute_score`` arms its own ``ITIMER_REAL`` deadline (``timeout_s``) around the whole
   parse + verify when called in the main thread, and turns math-verify's timeouts off so the two
   alarms do not fight. The timeout exception derives from ``BaseException`` so sympy's and
   math-verify's ``except Exception`` cannot swallow it. Off the main thread there is no in-process
   deadline (the pre-filters still apply): use ``VerifierPool`` there.
2. ``VerifierPool`` is the hard guarantee: it runs the verdicts in a ``deadline_pool.DeadlinePool``,
   whose "spawn" workers run them in their main thread (so 1. holds inside them). The parent
   SIGKILLs a worker still busy ``timeout_s + deadline_pool.HARD_DEADLINE_GRACE_S`` after it began
   an item; the item scores 0 and counts as a timeout, and a fresh worker takes over the rest of the
   chunk. A worker that dies (crash, external SIGKILL) costs its item, counted as an error.
3. The parent does the linear-time part itself (finding the last box) and sends only distinct
   (answer, gold) pairs: a step's ~35 MB of responses never cross a pipe, and the samples of a
   problem that end in the same answer are judged once. Only parsing and ``verify`` - the part
   that can hang - runs under the deadline, in a worker.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any

from justrl_min.deadline_pool import DeadlinePool, Outcome, call_with_deadline
from justrl_min.errors import ConfigError, load_callable

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
MAX_ANSWER_CHARS = 1_000  # a 4x4 matrix of fractions is ~300 characters
MAX_BRACKET_DEPTH = 8  # bare ( [ { nesting; parse time is ~0.5 s at 8 and ~40 s at 16
MAX_RESULT_DIGITS = 4_000  # Python refuses to print ints over 4,300 digits; sympy sometimes must
_MAX_EXAMPLES = 2


# --------------------------------------------------------------------------- extraction

_BOX_MACROS = ("\\boxed", "\\fbox")
_BRACE_OR_ESCAPE = re.compile(r"\\[\s\S]|[{}]")  # `\{`, `\}` and `\\` are not group braces
_BARE_BOX_TOKEN = re.compile(r"[^\s$\\{}]+")


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` or ``\\fbox{...}`` in ``text``, braces balanced.

    ``\\boxed 5`` (no braces) yields the run of characters up to the next space, ``$`` or ``\\``.
    ``None`` if there is no box or the last one is unbalanced (e.g. cut off by the length limit).
    """
    macro_end = _last_box_macro(text)
    if macro_end is None:
        return None
    argument_start = macro_end
    while argument_start < len(text) and text[argument_start].isspace():
        argument_start += 1
    if argument_start < len(text) and text[argument_start] == "{":
        return _read_braced_group(text, argument_start)
    token = _BARE_BOX_TOKEN.match(text, argument_start)
    return token.group() if token else None  # `\boxed` at the very end has no argument


def _last_box_macro(text: str) -> int | None:
    """Index just past the last ``\\boxed`` / ``\\fbox`` that is the whole macro name (not ``\\fboxsep``)."""
    best = None
    for macro in _BOX_MACROS:
        end = len(text)
        while (found := text.rfind(macro, 0, end)) >= 0:
            after = found + len(macro)
            if after >= len(text) or not text[after].isalpha():
                if best is None or after > best:
                    best = after
                break
            end = found
    return best


def _read_braced_group(text: str, open_index: int) -> str | None:
    """Content between ``text[open_index] == '{'`` and its matching ``}``; None if never closed."""
    depth = 0
    for match in _BRACE_OR_ESCAPE.finditer(text, open_index):
        token = match.group()
        if token == "{":
            depth += 1
        elif token == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : match.start()]
    return None


# --------------------------------------------------------------------------- normalisation

_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_DIGIT_GROUP_SEPARATOR = r"(?:\\,|\\!|\\ |\{,\}|~|,| |\u2009|\u202f)"
# A first group of 0 is not grouping: "0,111" is a list (or a decimal comma), never 111.
_NUMBER_WITH_SEPARATORS = re.compile(
    rf"(-?[1-9]\d{{0,2}})((?:{_DIGIT_GROUP_SEPARATOR}\d{{3}})+)(\.\d+)?"
)
_SEPARATOR = re.compile(_DIGIT_GROUP_SEPARATOR)


_PLAIN_INTEGER = re.compile(r"-?\d+")
# math-verify turns \mathrm{...} into \text{...} and then drops a trailing \text{} group as a unit, so
# 2\mathrm{i} parses as 2, and \frac{1}{\mathrm{e}} does not parse at all. Upright e, i, d are the
# constants (and differential) written in italics elsewhere.
_UPRIGHT_CONSTANT = re.compile(r"\\(?:mathrm|mathup|operatorname)\s*\{\s*([eid])\s*\}|\{\s*\\rm\s+([eid])\s*\}")
# math-verify parses \operatorname{name} only for a few names (gcd, lcm, floor, ...): \operatorname{sin} x
# does not parse. These names have LaTeX macros of their own that it does parse.
_OPERATOR_NAME = re.compile(
    r"\\operatorname\s*\{\s*(sin|cos|tan|cot|sec|csc|arcsin|arccos|arctan|sinh|cosh|tanh|ln|log|exp|max|min)\s*\}"
)
_PYTHON_POWER = re.compile(r"\*\*")
_BARE_PI = re.compile(r"(?<![\\A-Za-z])pi\b")


def unbox_gold(ground_truth: str) -> str:
    """A gold stored as ``\\boxed{204}`` (or ``\\fbox``) is ``204``; an unbalanced box is left as it is.
    The one rule for every reader of golds: the data loader, the verifier, DeepScaleR's grader."""
    boxed = extract_boxed(ground_truth) if "\\boxed" in ground_truth or "\\fbox" in ground_truth else None
    return boxed if boxed is not None else ground_truth


def _plain_gold_to_latex(gold: str) -> str:
    """A plain-expression gold (``2**10``, ``pi/2``) gets LaTeX's ``^`` and ``\\pi``. Golds only:
    a model's answer is judged as the LaTeX it wrote."""
    return _BARE_PI.sub(r"\\pi", _PYTHON_POWER.sub("^", gold))


def _italic_constant(match: re.Match) -> str:
    """The letter of an upright constant, spaced off a macro name before it (``\\pi\\mathrm{i}`` is not ``\\pii``)."""
    after_letter = match.start() > 0 and match.string[match.start() - 1].isalpha()
    return (" " if after_letter else "") + (match.group(1) or match.group(2))


def _clean_latex(latex: str) -> str:
    """Invisible and cosmetic differences that the LaTeX parser would otherwise trip over."""
    latex = _CONTROL_CHARS.sub("", latex).strip()
    latex = _UPRIGHT_CONSTANT.sub(_italic_constant, latex)
    latex = _OPERATOR_NAME.sub(r"\\\1 ", latex).strip()
    while len(latex) >= 2 and latex[0] == "$" and latex[-1] == "$" and latex[-2] != "\\":
        latex = latex[1:-1].strip()  # $x$ or $$x$$ inside the box
    if latex.endswith(".") and not latex.endswith("\\."):  # "42." is a sentence ending, not a decimal
        latex = latex[:-1].rstrip()
    whole_number = _NUMBER_WITH_SEPARATORS.fullmatch(latex)
    if whole_number:  # only when the whole answer is one number: "1, 000" in a list stays a list
        latex = whole_number.group(1) + _SEPARATOR.sub("", whole_number.group(2)) + (whole_number.group(3) or "")
    return latex


def _without_whitespace(latex: str) -> str:
    return "".join(latex.split())


# --------------------------------------------------------------------------- hostile-input guards

_BARE_OPEN = "([{"
_BARE_CLOSE = ")]}"


def _bracket_depth(latex: str) -> int:
    """Deepest nesting of ( [ { (escaped ``\\{`` counts as a bracket too); macro arguments count as well."""
    depth = deepest = 0
    for char in latex:
        if char in _BARE_OPEN:
            depth += 1
            deepest = max(deepest, depth)
        elif char in _BARE_CLOSE:
            depth = max(depth - 1, 0)
    return deepest


def _too_hostile_to_parse(latex: str) -> bool:
    return len(latex) > MAX_ANSWER_CHARS or _bracket_depth(latex) > MAX_BRACKET_DEPTH


def _log10_size(expr: Any) -> float:
    """Upper bound on log10 of the largest integer sympy could build evaluating ``expr``.

    Works on the unevaluated parse tree, before anything is computed: a power's size is its
    exponent's value times its base's size, n! is below n**n. Symbols count like 10 (so a
    symbolic power that ``expand`` could blow up is bounded too). ``inf`` when an exponent or a
    factorial argument alone would exceed 10**6.
    """
    import sympy

    if isinstance(expr, sympy.MatrixBase):
        return max((_log10_size(element) for element in expr), default=0.0)
    if not isinstance(expr, sympy.Basic):
        return 0.0
    if isinstance(expr, sympy.Rational):  # integers included: p/q needs both p and q
        return max(_int_log10(expr.p), _int_log10(expr.q))
    if isinstance(expr, sympy.Float):
        return 1.0  # fixed precision: a float power overflows, it does not grow
    if isinstance(expr, sympy.Symbol):
        return 1.0
    if isinstance(expr, sympy.Pow):
        exponent_size = _log10_size(expr.exp)
        return math.inf if exponent_size > 6 else 10.0**exponent_size * _log10_size(expr.base)
    if isinstance(expr, (sympy.factorial, sympy.gamma, sympy.factorial2, sympy.binomial)):
        argument_size = max(_log10_size(argument) for argument in expr.args)
        return math.inf if argument_size > 6 else 10.0**argument_size * max(argument_size, 1.0)
    child_sizes = [_log10_size(argument) for argument in expr.args]
    if isinstance(expr, sympy.Mul):
        return sum(child_sizes)
    return max(child_sizes, default=1.0) + 1.0  # sums, functions, sets: about their largest part


def _int_log10(value: int) -> float:
    return math.log10(abs(value)) if value else 0.0  # math.log10 takes ints of any size


def _too_big_to_evaluate(expr: Any) -> bool:
    return _log10_size(expr) > MAX_RESULT_DIGITS


# --------------------------------------------------------------------------- hedging

_SAYS_OR = re.compile(r"\bor\b|\\lor\b|\\vee\b", re.IGNORECASE)
_TEXT_GROUP = re.compile(r"\\(?:text|textrm|textit|textbf|textnormal|mbox)\s*\{[^{}]*\}")


def _says_alternatives(latex: str) -> bool:
    """``42 \\text{ or } 43``, ``42 \\lor 43``, or ``42 \\text{ (maybe 43)}``: a hedge in words.

    The last form matters because the normaliser drops ``\\text{}`` groups that look like units,
    which would leave a bare ``42``. Digits only inside text (``\\text{5 cm}``) are not flagged.
    """
    if _SAYS_OR.search(latex):
        return True
    text_groups = _TEXT_GROUP.findall(latex)
    digits_in_text = any(char.isdigit() for group in text_groups for char in group)
    digits_outside = any(char.isdigit() for char in _TEXT_GROUP.sub(" ", latex))
    return digits_in_text and digits_outside


def _names_several_values(expr: Any) -> bool:
    import sympy

    if isinstance(expr, (sympy.FiniteSet, sympy.Tuple)):
        return len(expr) > 1
    return isinstance(expr, sympy.Set)  # intervals, unions, ...: infinitely many values


def _gold_is_many_valued(expr: Any) -> bool:
    """Sets, tuples, intervals and relations other than an assignment ``x = 5`` may match a collection."""
    import sympy
    from sympy.core.relational import Relational

    if isinstance(expr, (sympy.Set, sympy.Tuple, sympy.And)):
        return True
    if isinstance(expr, sympy.Eq) and isinstance(expr.lhs, sympy.Symbol):
        return _gold_is_many_valued(expr.rhs)  # x = 5 has one value; x = 1, 2 assigns two
    return isinstance(expr, Relational)  # x^2 = 4 has two solutions


# --------------------------------------------------------------------------- numbers in a base

# A number written in base n, ``52_8``, ``4210_{5}``, ``\text{A3}_{16}``: at least one decimal digit.
_BASE_N_NUMBER = re.compile(r"(?:\\(?:text|mathrm)\{)?([0-9A-Z]*[0-9][0-9A-Z]*)\}?_\{?\(?(\d+)\)?\}?")
_DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _base_n_number(latex: str) -> tuple[str, int] | None:
    """``(digits, base)`` if the whole of ``latex`` is one number with a base subscript it can be in."""
    match = _BASE_N_NUMBER.fullmatch(_without_whitespace(latex))
    if not match:
        return None
    digits, base = match.group(1).lstrip("0") or "0", int(match.group(2))
    if not 2 <= base <= len(_DIGITS) or any(_DIGITS.index(digit) >= base for digit in digits):
        return None
    return digits, base


def _base_n_match(answer: str, gold: str) -> bool | None:
    """The verdict when either side is a base-n number; None when neither is.

    math-verify drops a number's subscript (``52_8`` parses as 52, so ``52_87`` matched it). Here the
    digits and the base must both agree; an answer without a subscript is read in the gold's base
    (the question asked for that base), and ``42_{10}`` is 42.
    """
    gold_number, answer_number = _base_n_number(gold), _base_n_number(answer)
    if gold_number is None and answer_number is None:
        return None
    if gold_number is None:
        gold_is_integer = _PLAIN_INTEGER.fullmatch(gold) is not None
        return answer_number[1] == 10 and gold_is_integer and int(gold) == int(answer_number[0])
    if answer_number is None:
        digits = _without_whitespace(answer).upper()
        return (digits.lstrip("0") or "0") == gold_number[0] and digits.isalnum()
    return answer_number == gold_number


# --------------------------------------------------------------------------- numeric precision

SIGNIFICANT_DIGITS = 6


def _float_rounding(*exprs: Any) -> int:
    """Decimal places for math-verify's float comparison: enough for SIGNIFICANT_DIGITS of the smallest float.

    math-verify rounds both sides to a fixed ``float_rounding`` (6) decimal places, so every pair
    of numbers below 5e-7 is equal and ``.00006727`` equals ``.0000672``. Never fewer than its 6
    places, so 0.333333 still equals 1/3 and nothing is compared more loosely than before.
    """
    import sympy

    magnitudes = (float(abs(atom)) for expr in exprs if isinstance(expr, (sympy.Basic, sympy.MatrixBase))
                  for atom in expr.atoms(sympy.Float))
    smallest = min((magnitude for magnitude in magnitudes if magnitude > 0), default=None)  # 1e-400 is 0.0 here
    if smallest is None:
        return 6
    return max(6, SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(smallest)))


def _differ_relatively(gold: Any, answer: Any) -> bool:
    """Two real numbers further apart than 1 part in 10**(SIGNIFICANT_DIGITS - 1) of the larger.

    math-verify compares numeric expressions that are not plain numbers by ``(a - b).evalf(chop=True)
    == 0``, and chop zeroes any difference below about 1e-15, so ``10^{-400}`` equals ``10^{-401}``.
    Percentages (``25\\%`` is 25 to math-verify, kept as an unevaluated /100) are left to it.
    """
    import sympy

    exprs = (gold, answer)
    if not all(isinstance(expr, sympy.Expr) and expr.is_number for expr in exprs):
        return False
    if any(expr.has(sympy.UnevaluatedExpr) for expr in exprs):
        return False
    gold_value, answer_value = (sympy.N(expr, 30) for expr in exprs)
    if not (gold_value.is_real and answer_value.is_real):
        return False
    scale = max(abs(gold_value), abs(answer_value))
    return bool(abs(gold_value - answer_value) > scale * sympy.Float(10) ** (1 - SIGNIFICANT_DIGITS))


# --------------------------------------------------------------------------- relations


MAX_SOLVE_DEGREE = 4  # sympy's solve on one polynomial equation of degree 27 ran past 10 s


def _cheap_to_solve(relation: Any) -> bool:
    """One unknown, a polynomial of degree at most MAX_SOLVE_DEGREE, no function applications."""
    import sympy

    difference = relation.lhs - relation.rhs
    if len(difference.free_symbols) > 1 or difference.atoms(sympy.Function):
        return False
    if not difference.free_symbols:
        return True  # 2 = 2: nothing to solve for
    try:
        return sympy.Poly(difference, *difference.free_symbols).total_degree() <= MAX_SOLVE_DEGREE
    except sympy.PolynomialError:  # not a polynomial (x^{1/x}, ...)
        return False


def _same_relation_rearranged(gold: Any, answer: Any, float_rounding: int) -> bool:
    """Same (in)equation up to rearrangement: sides swapped (``a < b`` is ``b > a``), terms moved
    across (``a = b`` is ``a - b = 0``), or an equation multiplied through by a constant."""
    import sympy

    verify = partial(_math_verify().verify, float_rounding=float_rounding, timeout_seconds=None)
    gold_difference, answer_difference = gold.lhs - gold.rhs, answer.lhs - answer.rhs
    if type(gold) is type(answer) and verify(gold_difference, answer_difference):
        return True
    flipped = {sympy.Eq: sympy.Eq, sympy.Lt: sympy.Gt, sympy.Gt: sympy.Lt, sympy.Le: sympy.Ge, sympy.Ge: sympy.Le}
    if flipped.get(type(gold)) is type(answer) and verify(gold_difference, -answer_difference):
        return True
    if isinstance(gold, sympy.Eq) and isinstance(answer, sympy.Eq):
        ratio = sympy.cancel(gold_difference / answer_difference)
        return bool(ratio.is_number and ratio.is_finite and ratio != 0)
    return False


def _relations_verdict(gold: Any, answer: Any, float_rounding: int) -> bool | None:
    """The verdict when both sides are single (in)equations, unless math-verify may solve them; else None.

    math-verify, when the sides differ, calls sympy ``solve`` on both relations for all their
    symbols; for several unknowns, functions (a Minerva equation in f(t) and theta(t)) or a high
    degree that search runs for seconds to minutes. Such relations are compared by rearrangement only.
    """
    import sympy
    from sympy.core.relational import Relational

    if not (isinstance(gold, Relational) and isinstance(answer, Relational)) or not all(
            isinstance(side, sympy.Expr) for side in (gold.lhs, gold.rhs, answer.lhs, answer.rhs)):
        return None  # x = {1, 2}: math-verify's
    if _same_relation_rearranged(gold, answer, float_rounding):
        return True
    return None if _cheap_to_solve(gold) and _cheap_to_solve(answer) else False


# --------------------------------------------------------------------------- symbolic comparison


@lru_cache(maxsize=1)
def _math_verify() -> Any:
    """Import math-verify lazily: a parent that only drives the pool never loads sympy."""
    import math_verify

    for name in ("math_verify.parser", "math_verify.grader"):  # its "Timeout is disabled": our deadline rules
        logging.getLogger(name).addFilter(lambda record: "Timeout is disabled" not in record.getMessage())
    return math_verify


@lru_cache(maxsize=1)
def _box_only_extraction() -> list[Any]:
    """Parse exactly the box we hand over: box first, no anchor-free fallbacks that could pick a
    number out of ``\\text{...}`` when the LaTeX does not parse."""
    math_verify = _math_verify()
    return [math_verify.LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False)]


@lru_cache(maxsize=4096)  # golds repeat n times per step; answers like "42" repeat too
def _parse_latex(latex: str) -> Any:
    """The single sympy object math-verify makes of ``latex``, or None if it does not parse."""
    parsed = _math_verify().parse(
        "\\boxed{" + latex + "}",
        extraction_config=_box_only_extraction(),
        fallback_mode="no_fallback",
        extraction_mode="first_match",
        parsing_timeout=None,
    )
    return parsed[0] if parsed else None


def _symbolic_match(answer: str, gold: str) -> bool:
    answer, gold = _clean_latex(answer), _clean_latex(_plain_gold_to_latex(gold))
    if not answer or not gold:
        return False
    if _without_whitespace(answer) == _without_whitespace(gold):
        # math-verify compares parsed values only, and an undefined value never equals itself:
        # 12:00 parses as 12/0 = zoo, and zoo == zoo is False to it.
        return True
    base_n_verdict = _base_n_match(answer, gold)  # before the hedge test: \text{A3}_{16} is one number
    if base_n_verdict is not None:
        return base_n_verdict
    if _says_alternatives(answer) and not _says_alternatives(gold):
        return False
    # Hostile, unparsable or too big to evaluate: only the identical text, matched above, would do.
    if _too_hostile_to_parse(answer) or _too_hostile_to_parse(gold):
        return False
    if _PLAIN_INTEGER.fullmatch(answer) and _PLAIN_INTEGER.fullmatch(gold):
        return int(answer) == int(gold)  # math-verify's verdict on two integers, without its ~10 ms parse
    gold_expr, answer_expr = _parse_latex(gold), _parse_latex(answer)
    if any(expr is None or _too_big_to_evaluate(expr) for expr in (gold_expr, answer_expr)):
        return False
    if _names_several_values(answer_expr) and not _gold_is_many_valued(gold_expr):
        return False
    if _differ_relatively(gold_expr, answer_expr):
        return False
    float_rounding = _float_rounding(gold_expr, answer_expr)
    relations_verdict = _relations_verdict(gold_expr, answer_expr, float_rounding)
    if relations_verdict is not None:
        return relations_verdict
    return bool(_math_verify().verify(gold_expr, answer_expr, float_rounding=float_rounding, timeout_seconds=None))


@lru_cache(maxsize=1)
def _verl_extraction() -> tuple[list[Any], list[Any]]:
    """(gold, response) extraction targets of verl's math-verify reward: LaTeX for the boxed gold;
    a plain expression or LaTeX anywhere in the response."""
    math_verify = _math_verify()
    gold_targets = [math_verify.LatexExtractionConfig()]
    return gold_targets, [math_verify.ExprExtractionConfig(), math_verify.LatexExtractionConfig()]


def _unboxed_match(response: str, gold: str) -> bool:
    """math-verify's verdict with its own answer search over the whole response (no box needed).

    Called as verl's validation calls it: ``parse`` with its default extraction and fallback modes,
    then ``verify(gold, answer)``, gold first; its own timeouts are off (the caller's deadline rules).
    """
    math_verify = _math_verify()
    gold_targets, response_targets = _verl_extraction()
    parsed_gold = math_verify.parse("\\boxed{" + gold + "}", gold_targets, parsing_timeout=None)
    parsed_answer = math_verify.parse(response, response_targets, parsing_timeout=None)
    if not parsed_gold or not parsed_answer:
        return False
    return bool(math_verify.verify(parsed_gold, parsed_answer, timeout_seconds=None))


def _exact_match(answer: str, gold: str) -> bool:
    answer, gold = _without_whitespace(answer), _without_whitespace(gold)
    return bool(gold) and answer == gold


DEEPSCALER_GRADER = "justrl_min.variants.deepscaler:grade_answer"
"""A variant's rules (justrl_min/variants/deepscaler.py), named here and loaded only by a process
that grades with them."""


def _deepscaler_match(answer: str, gold: str) -> bool:
    return load_callable(DEEPSCALER_GRADER, "reward.mode=deepscaler")(answer, gold)


def _whole_response(response: str) -> str | None:
    return response if response.strip() else None


ANSWER_EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "symbolic": extract_boxed, "exact": extract_boxed, "deepscaler": extract_boxed, "unboxed": _whole_response}
"""What each mode judges, found in linear time by the pool's parent: the last box, or (unboxed) the
whole response, whose answer math-verify searches for itself under the deadline. None scores 0."""
ANSWER_MATCHERS = {"symbolic": _symbolic_match, "exact": _exact_match, "deepscaler": _deepscaler_match,
                   "unboxed": _unboxed_match}
"""One rule per `reward.mode`, on an extracted answer and an unboxed gold: the part that may raise or
run long, which the pool's workers call under the per-item deadline."""
MODES = tuple(ANSWER_MATCHERS)
assert tuple(ANSWER_EXTRACTORS) == MODES
TRAINING_MODES = tuple(mode for mode in MODES if mode != "unboxed")
"""The modes a training reward may use (reward.mode, reward.by_source); `unboxed` reproduces an
evaluation protocol and is no training reward."""
_WARMED_UP_MODES = frozenset(("symbolic", "unboxed"))  # the modes that parse with math-verify

GRADERS = {"math-verify": "symbolic", "math-verify-unboxed": "unboxed", "deepscaler": "deepscaler", "exact": "exact"}
"""Evaluation's grader names (eval.py --grader, eval.grader) and the mode each one scores with."""


def _judge(response: str, ground_truth: str, mode: str) -> float:
    """1.0 if the answer in ``response`` (its last box, or the whole text for ``unboxed``) is equivalent
    to ``ground_truth``, else 0.0. May raise or run long."""
    answer = ANSWER_EXTRACTORS[mode](response)
    return 1.0 if answer is not None and ANSWER_MATCHERS[mode](answer, unbox_gold(ground_truth)) else 0.0


# Common answer shapes. ANTLR builds its parse-prediction cache lazily, per process: a fresh
# process needs about twice the CPU per answer until it has seen the usual shapes.
_WARM_UP_ANSWERS = (
    "42", "-7", "3.14", "\\frac{3}{4}", "\\dfrac{2}{5}", "2\\sqrt{3}", "\\frac{\\sqrt{3}}{2}", "2\\pi",
    "x^2+2x+1", "(x+1)^2", "x=5", "(1, 2)", "[0, 1)", "(-\\infty, 2) \\cup (3, \\infty)", "\\{1, 2, 3\\}",
    "1, 2", "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "90^\\circ", "25\\%", "\\text{(B)}", "2^{10}",
    "\\log_2 8", "12 \\text{ cm}",
)


def warm_up() -> None:
    """Load sympy and math-verify and prime the LaTeX parser on common answer shapes (~1-2 s).

    VerifierPool workers do this before they report ready; call it in a process that will use
    compute_score directly if its first calls should be as fast as the later ones.
    """
    for answer in _WARM_UP_ANSWERS:  # parsed and compared directly: _symbolic_match returns early on equal text
        expr = _parse_latex(_clean_latex(answer))
        if expr is not None:
            _math_verify().verify(expr, expr, timeout_seconds=None)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"reward mode must be one of {MODES}, got {mode!r}")


def compute_score(
    response: str,
    ground_truth: str,
    mode: str = "symbolic",
    *,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
) -> float:
    """1.0 if the answer in ``response`` (its last box; for ``unboxed``, wherever math-verify finds
    it) is equivalent to ``ground_truth``, else 0.0.

    ``mode`` is one of ``MODES`` (see the module docstring); an unknown mode
    is a programming error and raises ValueError. Otherwise never raises: a verifier error or a
    timeout scores 0.0 and is logged. ``timeout_s`` is enforced with SIGALRM in the main thread only
    (see the module docstring); VerifierPool gives a hard deadline anywhere.
    """
    _check_mode(mode)
    score, status, detail = call_with_deadline(_judge, (response, ground_truth, mode), timeout_s)
    if status != "ok":
        logger.warning("verifier %s (scored 0): %s; gold %.60r, answer %.60r",
                       status, detail, ground_truth, _answer_preview(response))
    return score if status == "ok" else 0.0


def _answer_preview(response: Any) -> str:
    if not isinstance(response, str):
        return repr(response)
    boxed = extract_boxed(response)
    return boxed if boxed is not None else "<no box> ..." + response[-40:]


# --------------------------------------------------------------------------- process pool


@dataclass
class BatchScore:
    scores: list[float]  # 1.0 correct / 0.0 incorrect, same order as the input
    timeouts: int  # responses whose verdict hit the deadline (worker alarm or parent kill)
    errors: int  # responses whose verdict crashed its worker or raised
    examples: list[str]  # a short description of a timed-out / errored item or two, for logging
    slowest_s: float  # slowest verdict's wall time, as seen by the parent
    judged: int  # verdicts the workers computed: distinct (answer, gold) pairs, or every item with a score_fn


@dataclass
class _Job:
    """One verdict for a worker to compute, and the responses of the batch it decides."""

    first: str  # the score function's first argument: the extracted answer, or the response for a callable
    gold: str
    indices: list[int]
    grader: int = 0  # position in the pool's graders


def _tally(responses: list[str], golds: list[str], jobs: list[_Job], outcomes: list[Outcome]) -> BatchScore:
    """What one call to VerifierPool.score learned, per response: each job's verdict goes to every
    response it decides, and a failed one counts once per response."""
    slowest_s = max((outcome.elapsed_s for outcome in outcomes), default=0.0)
    result = BatchScore([0.0] * len(responses), 0, 0, [], slowest_s, len(jobs))
    for job, outcome in zip(jobs, outcomes, strict=True):
        score, status, detail = _as_score(outcome)
        for index in job.indices:
            result.scores[index] = score
        if status == "ok":
            continue
        if status == "timeout":
            result.timeouts += len(job.indices)
        else:
            result.errors += len(job.indices)
        if len(result.examples) < _MAX_EXAMPLES:
            index = job.indices[0]
            twins = f" (and {len(job.indices) - 1} identical answers)" if len(job.indices) > 1 else ""
            example = (f"item {index}{twins} {status} after {outcome.elapsed_s:.1f} s: {detail}; gold "
                       f"{golds[index][:60]!r}, answer {_answer_preview(responses[index])[:60]!r}")
            result.examples.append(example)
            logger.warning("verifier pool: %s", example)
    return result


def _as_score(outcome: Outcome) -> tuple[float, str, str]:
    """(score, status, detail) of a verdict; a grader that returned no number errs."""
    if outcome.status != "ok":
        return 0.0, outcome.status, outcome.detail
    try:
        return float(outcome.value), "ok", ""
    except (TypeError, ValueError) as e:
        return 0.0, "error", f"the grader returned {outcome.value!r}, not a number: {e}"


Grader = str | Callable[[str, str], float]
"""What a pool scores with: a verifier mode (MODES), judged on the extracted last box and the unboxed
gold; a `package.module:callable` spec, or a picklable top-level callable, called as
fn(response, ground_truth) -> float (1.0 correct, 0.0 incorrect) on the whole item."""


def check_grader_name(grader: str, key: str) -> None:
    """A training mode's name, or something of the form `package.module:callable`; errors name `key`."""
    if grader not in TRAINING_MODES and ":" not in grader:
        raise ConfigError(f"{key}: unknown grader {grader!r}: a verifier mode ({' | '.join(TRAINING_MODES)}) "
                          "or package.module:callable")


def check_grader(grader: str, key: str) -> None:
    """`check_grader_name`, and a `package.module:callable` that imports; errors name `key`."""
    check_grader_name(grader, key)
    if grader not in TRAINING_MODES:
        load_callable(grader, key)


def _plan_jobs(responses: list[str], ground_truths: list[str], graders: list[int],
               extractors: tuple[Callable[[str], str | None] | None, ...]) -> list[_Job]:
    """The verdicts a batch needs: one per distinct (grader, extracted answer - the last box, or for
    ``unboxed`` the whole response -, unboxed gold), in order of first appearance (so a problem's
    samples stay together); responses without an answer need none. An item whose grader judges whole
    items (extractor None: a callable, which need not be a pure function of the box) gets a job of
    its own, response and gold as given."""
    jobs: dict[Any, _Job] = {}  # insertion-ordered
    for index, (response, gold, grader) in enumerate(zip(responses, ground_truths, graders, strict=True)):
        if not isinstance(response, str) or not isinstance(gold, str):
            raise TypeError(f"item {index}: response and ground truth must be str, got "
                            f"{type(response).__name__} and {type(gold).__name__}")
        extract = extractors[grader]
        if extract is None:
            jobs[index] = _Job(response, gold, [index], grader)
            continue
        answer = extract(response)
        if answer is not None:
            key = (grader, answer, unbox_gold(gold))
            jobs.setdefault(key, _Job(answer, key[2], [], grader)).indices.append(index)
    return list(jobs.values())


class VerifierPool(DeadlinePool):
    """A `DeadlinePool` whose workers score batches with a hard per-item deadline.

    Create once per run and reuse every step: a worker takes ~1.5-3 s to start (interpreter, sympy,
    ``warm_up()``), and it gets faster over its first few thousand answers as the LaTeX parser's
    cache fills.

    The parent extracts each response's last box (linear time, no parsing; the ``unboxed`` mode
    sends the whole response, ``ANSWER_EXTRACTORS``) and sends each distinct (answer, gold) pair to a
    worker once: the n samples of a problem often end in the same answer, and a verdict is a pure
    function of the pair. Responses without a box score 0 without a worker.
    Timeouts and errors are counted per response, so a verdict shared by k responses counts k.
    ``chunk_size`` None sends ~4 chunks per worker per batch (at most 8 jobs), each finished to the
    end of its run of identical golds so that one problem's samples share a worker and its parsed
    gold. ``score_fn`` replaces ``compute_score(mode=...)`` in the workers: a picklable top-level
    ``fn(response, ground_truth) -> float`` run under the same deadline on every item, whole
    responses and golds as given, nothing merged (tests; custom rewards).

    ``graders`` are further `Grader`s the workers load (`reward.by_source`): `score` may name one
    per item, and each item is judged by its own under the same deadline; items given None get the
    default (``score_fn``, else ``mode``).
    """

    def __init__(
        self,
        workers: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        mode: str = "symbolic",
        *,
        chunk_size: int | None = None,
        score_fn: Callable[[str, str], float] | None = None,
        graders: Sequence[Grader] = (),
    ) -> None:
        _check_mode(mode)
        self.mode = mode
        self._chunk_size = chunk_size
        self._graders: tuple[Grader, ...] = tuple(dict.fromkeys((score_fn or mode, *graders)))
        """Position 0 is the default; a job names its grader by position."""
        # A mode judges an (extracted answer, unboxed gold) pair; any other grader sees the item as given.
        self._extractors = tuple(ANSWER_EXTRACTORS.get(grader) for grader in self._graders)
        self._grader_position = {None: 0, **{grader: i for i, grader in enumerate(self._graders)}}
        warm = any(grader in _WARMED_UP_MODES for grader in self._graders)
        super().__init__([ANSWER_MATCHERS.get(grader, grader) for grader in self._graders], workers, timeout_s,
                         warm_up=warm_up if warm else None, purpose="verifier")

    def score(self, responses: Sequence[str], ground_truths: Sequence[str],
              graders: Sequence[Grader | None] | None = None) -> BatchScore:
        """Score ``responses[i]`` against ``ground_truths[i]`` with ``graders[i]`` (one the pool was
        built with, or None for its default; ``graders`` None: the default for all); returns when
        every item is scored, timed out or errored. One call at a time: the pool is not meant to be
        shared by threads."""
        if len(responses) != len(ground_truths):
            raise ValueError(f"{len(responses)} responses but {len(ground_truths)} ground truths")
        responses, ground_truths = list(responses), list(ground_truths)
        jobs = _plan_jobs(responses, ground_truths, self._positions(graders, len(responses)), self._extractors)
        # Auto-sized chunks run to the end of a gold's run: one problem's samples share a worker and its parse.
        outcomes = self.run([(job.grader, (job.first, job.gold)) for job in jobs], self._chunk_size,
                             groups=[job.gold for job in jobs] if self._chunk_size is None else None)
        result = _tally(responses, ground_truths, jobs, outcomes)
        if result.timeouts or result.errors:
            logger.warning("verifier pool: %d items, %d timeouts, %d errors, slowest %.1f s",
                           len(result.scores), result.timeouts, result.errors, result.slowest_s)
        return result

    def _positions(self, graders: Sequence[Grader | None] | None, count: int) -> list[int]:
        if graders is None:
            return [0] * count
        if len(graders) != count:
            raise ValueError(f"{count} responses but {len(graders)} graders")
        unknown = sorted({str(g) for g in graders if g not in self._grader_position})
        if unknown:
            raise ValueError(f"graders {unknown} were not given to this VerifierPool "
                             f"(it has {list(self._graders)}, None for the first)")
        return [self._grader_position[g] for g in graders]


def score_batch(
    responses: Sequence[str],
    ground_truths: Sequence[str],
    *,
    mode: str = "symbolic",
    workers: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[float]:
    """One-shot scoring in a temporary VerifierPool; scores in input order.

    Pays the workers' start-up every call: a training loop should keep one VerifierPool instead.
    """
    if not responses:
        _check_mode(mode)
        return []
    with VerifierPool(workers=workers, timeout_s=timeout_s, mode=mode) as pool:
        return pool.score(responses, ground_truths).scores
