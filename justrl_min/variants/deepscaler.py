"""DeepScaleR's rule grader ("robust verifier"), written for this project from its documented rules.

JustRL's Table 3 and its second ablation grade with DeepScaleR's ``grade_answer_verl``
(agentica-project/deepscaler, ``deepscaler/rewards/math_utils/utils.py``; JustRL's
``evals/utils.py`` is the same file). This module reproduces its verdicts; the code is ours.

The rules
---------
The answer is the content of the last ``\\boxed{...}`` (``justrl_min.reward.extract_boxed``); a gold
that contains ``\\boxed`` is replaced by its last box; an empty gold, a missing or unbalanced box
is incorrect. The answer is correct when either test passes:

1. **Hendrycks MATH normalisation, then string equality.** Both sides: strip; unwrap a whole
   ``\\text{...}``; drop line breaks, ``\\!``, ``\\left``/``\\right``, degrees (``^\\circ``), ``\\$``
   and ``\\%``; ``\\\\`` becomes ``\\``; ``tfrac``/``dfrac`` become ``frac``; a unit after
   ``\\text{ `` (with a space) is cut off; ``.5`` becomes ``0.5``; a short ``x =`` / ``k =`` prefix
   (at most two characters before a single ``=``) goes; ``\\sqrt3`` becomes ``\\sqrt{3}``; spaces go;
   ``\\frac12`` becomes ``\\frac{1}{2}``; ``0.5`` becomes ``\\frac{1}{2}``; ``a/b`` of two plainly
   written integers becomes ``\\frac{a}{b}``. A step that trips over malformed input (two
   ``\\text{ `` units, a trailing ``\\sqrt`` or ``\\frac``) leaves that side as it was after the
   ``\\text`` unwrap.
2. **PRM800K normalisation, then sympy.** Both sides: unwrap a whole ``\\text{...}``; drop ``$``
   and ``%``; `` or `` / `` and `` become commas; ``million``/``billion``/``trillion`` become powers
   of ten; unit words (degree, cm, meter, mile, second ... yard, with plurals and a ``^2``) are
   deleted wherever they occur; one pair of outer braces goes; an integer-valued number is written
   as an integer; LaTeX is turned into text (``\\frac{a}{b}`` to ``a/b`` without parentheses,
   ``\\sqrt{x}`` to ``sqrt(x)``, ``\\pi`` to ``pi``, ``\\infty`` to ``inf``, ``\\cdot``/``\\times`` to
   ``*``, a mixed number ``7\\frac34`` to ``7+3/4``); spaces and braces go; lower case.
   Equal strings match. Otherwise both are split as tuples or intervals when bracketed by
   ``()[]`` with no bracket inside, and compared element by element in order, with the same
   opening and closing brackets and the same count. Per element: two fractions ``a/b`` must be
   written identically (an unreduced fraction is not the reduced one); an integer gold needs an
   integer answer, and then matches only as equal text; otherwise ``sympy.simplify(gold - answer)
   == 0``, attempted only when the pair has at most two distinct unknown letters and no
   ``^{``, ``^(``, ``^12`` (exponent of two or more digits) or ``^2^``.

Where this code differs from DeepScaleR's
-----------------------------------------
* LaTeX to text is our own small converter (``_latex_to_text``), not pylatexenc's ``latex2text``
  (not a dependency here); it renders the macros math answers use as pylatexenc 2.10 does, and
  unknown macros as nothing (pylatexenc drops them too). Font and accent macros (``\\mathbf{x}``,
  ``\\mathbb{R}``, ``\\hat{x}``) render as their plain letters, where pylatexenc writes styled or
  accented Unicode letters. Checked against DeepScaleR's own code: the 74 non-hostile cases of
  ``bench/verifier_cases.py`` (``--reference``) and 8,849 pairs built from the nine benchmarks' golds.
* Extraction is ``extract_boxed``: it also reads ``\\boxed 5``, ``\\boxed {5}`` and ``\\fbox{5}``
  (DeepScaleR's misses them), and does not count escaped ``\\{``/``\\}`` as group braces.
* Hardening, none of which changes a verdict that could be reached in finite time and memory:
  sympy sees only letters, digits and ``+-*/^().!_`` (DeepScaleR ``eval``s any text
  with at most two letters, so ``(0,)*10**9`` or ``1<<10**10`` would allocate gigabytes; tuples,
  lists, strings and comparisons never simplify to 0 anyway); the exponent rules apply to ``**``
  as well as ``^``; a factorial is evaluated only of a literal of at most three digits; answers
  over ``MAX_SYMPY_CHARS`` characters skip sympy. The verifier pool's deadline bounds the rest.

``grade`` / ``grade_answer`` are plain top-level functions (picklable), so the verifier pool can
run them under its per-item deadline like the other modes.
"""

from __future__ import annotations

import re

from justrl_min import reward

MAX_SYMPY_CHARS = 1_000  # a 4x4 matrix of fractions is ~300 characters


def grade(response: str, gold: str) -> bool:
    """DeepScaleR's verdict on the last boxed answer of ``response`` against ``gold``."""
    gold = reward.unbox_gold(gold)
    answer = reward.extract_boxed(response)
    return bool(gold) and answer is not None and grade_answer(answer, gold)


def grade_answer(answer: str, gold: str) -> bool:
    """The verdict on an extracted answer against an unboxed gold (the part the pool times)."""
    return hendrycks_normalize(answer) == hendrycks_normalize(gold) or _prm800k_equal(answer, gold)


# --------------------------------------------------------------------------- Hendrycks MATH


class _Malformed(Exception):
    """A normalisation step cannot read its input: that side stays as it was."""


_WHOLE_TEXT = re.compile(r"\\text\{(?P<inner>[^\n]+?)\}$")
_SHORT_ASSIGNMENT_LHS = 2  # "x=" and "k =" are dropped, "xy =" is dropped, "abc=" is kept
_PLAIN_FRACTION = re.compile(r"(0|-?[1-9][0-9]*)/(0|-?[1-9][0-9]*)")


def _unwrap_text(text: str) -> str:
    whole = _WHOLE_TEXT.match(text)
    return whole.group("inner") if whole else text


def hendrycks_normalize(text: str) -> str:
    """The MATH dataset's answer normalisation, as DeepScaleR applies it before comparing strings."""
    text = _unwrap_text(text.strip()).strip()
    try:
        return _hendrycks_steps(text)
    except _Malformed:
        return text


def _hendrycks_steps(s: str) -> str:
    for old, new in (("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"),
                     ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", "")):
        s = s.replace(old, new)
    if "\\text{ " in s:  # a unit: "5 \text{ cm}"
        before, *after = s.split("\\text{ ")
        if len(after) != 1:
            raise _Malformed("more than one unit")
        s = before
    s = s.replace("\\%", "").replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    if s.count("=") == 1:
        lhs, rhs = s.split("=")
        if len(lhs) <= _SHORT_ASSIGNMENT_LHS:
            s = rhs
    s = _brace_arguments(_brace_arguments(s, "\\sqrt", 1).replace(" ", ""), "\\frac", 2)
    if s == "0.5":
        s = "\\frac{1}{2}"
    plain = _PLAIN_FRACTION.fullmatch(s)
    if plain:
        s = f"\\frac{{{plain.group(1)}}}{{{plain.group(2)}}}"
    return s


def _brace_arguments(s: str, macro: str, arguments: int) -> str:
    """One-character arguments of ``macro`` get braces: ``\\sqrt3`` -> ``\\sqrt{3}`` (1), ``\\frac12`` ->
    ``\\frac{1}{2}`` and ``\\frac1{72}`` -> ``\\frac{1}{72}`` (2); an argument already braced first
    (``\\frac{72}1``) leaves the rest as it is."""
    head, *tails = s.split(macro)
    for tail in tails:
        if not tail:
            raise _Malformed(f"{macro} without an argument")
        if tail[0] == "{":
            head += macro + tail
            continue
        if len(tail) < arguments:
            return s  # "\frac1": the whole rewrite is abandoned, the rest of the steps go on
        braced = 2 if arguments == 2 and tail[1] != "{" else 1
        head += macro + "".join("{" + ch + "}" for ch in tail[:braced]) + tail[braced:]
    return head


# --------------------------------------------------------------------------- PRM800K + sympy

_UNIT_WORDS = ("degree", "cm", "centimeter", "meter", "mile", "second", "minute", "hour", "day", "week",
               "month", "year", "foot", "feet", "inch", "yard")  # in this order: "cm" before "centimeter"
_UNITS = tuple(re.compile(rf"{unit}(?:es)?s? *(?:\^[0-9]+)?") for unit in _UNIT_WORDS)  # applied in turn
_DEGREE_CIRC = re.compile(r"\^ *\\circ")
_COMMA_THINSPACE = re.compile(r",\\! *")
_MINUS_SPACE = re.compile(r"- *")
_MIXED_NUMBER = re.compile(r"([0-9]) +([0-9])")  # "7 3/4" -> "7+3/4"
_THOUSANDS_COMMA = re.compile(r"(\d),(\d\d\d)($|\D)")
_FRACTION = re.compile(r"-?[0-9]+.?/0*[1-9][0-9]*.?$")  # "." is any character
_BRACKETS = "()[]"
_INTEGER_TOLERANCE = 1e-7


def prm800k_normalize(text: str) -> str:
    """PRM800K's answer normalisation, as DeepScaleR applies it before sympy."""
    text = _unwrap_text(text)
    for old, new in (("\\%", "%"), ("\\$", "$"), ("$", ""), ("%", ""), (" or ", " , "), (" and ", " , "),
                     ("million", "*10^6"), ("billion", "*10^9"), ("trillion", "*10^12")):
        text = text.replace(old, new)
    for unit in _UNITS:
        text = unit.sub("", text)
    text = _DEGREE_CIRC.sub("", text)
    if text[:1] == "{" and text[-1:] == "}":
        text = text[1:-1]
    text = _COMMA_THINSPACE.sub("", text)
    as_float = _float_or_none(text)
    if as_float is not None and _is_whole(as_float):
        text = str(int(round(as_float)))
    if "\\" in text:
        try:
            text = _latex_to_text(text)
        except (_Malformed, RecursionError):  # DeepScaleR keeps the text when pylatexenc fails
            pass
    text = _MIXED_NUMBER.sub(r"\1+\2", _MINUS_SPACE.sub("-", text))
    text = text.replace(" ", "").replace("{", "").replace("}", "").lower()
    if _is_integer_text(text):
        text = str(int(float(text.replace(",", ""))))  # int() truncates, as DeepScaleR's does
    return text


def _prm800k_equal(answer: str, gold: str) -> bool:
    gold_n, answer_n = prm800k_normalize(gold), prm800k_normalize(answer)
    if gold_n == answer_n:
        return True
    if not answer_n:
        return False
    gold_items, answer_items = _split_tuple(gold_n), _split_tuple(answer_n)
    if len(gold_items) > 1 and (gold_n[0] != answer_n[0] or gold_n[-1] != answer_n[-1]):
        return False
    if len(gold_items) != len(answer_items):
        return False
    return all(_items_equal(g, a) for g, a in zip(gold_items, answer_items))


def _items_equal(gold: str, answer: str) -> bool:
    if _FRACTION.match(gold) and _FRACTION.match(answer):
        return gold == answer  # an unreduced fraction is not its reduced form
    if _is_integer_text(gold) != _is_integer_text(answer):
        return False  # an integer gold wants an integer answer (and equal integers are equal text)
    return _sympy_equal(gold, answer)


def _split_tuple(text: str) -> list[str]:
    text = _without_thousands_commas(text)
    if not text:
        return []
    bracketed = (len(text) > 2 and text[0] in _BRACKETS and text[-1] in _BRACKETS
                 and not any(ch in _BRACKETS for ch in text[1:-1]))
    return [item.strip() for item in text[1:-1].split(",")] if bracketed else [text]


def _without_thousands_commas(text: str) -> str:
    while (shorter := _THOUSANDS_COMMA.sub(r"\1\2\3", text)) != text:
        text = shorter
    return text


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _is_whole(x: float) -> bool:
    try:
        return abs(x - int(round(x))) <= _INTEGER_TOLERANCE
    except (OverflowError, ValueError):  # inf, nan
        return False


def _is_integer_text(text: str) -> bool:
    value = _float_or_none(_without_thousands_commas(text))
    return value is not None and _is_whole(value)


# ---- sympy, guarded

_SYMPY_ALPHABET = re.compile(r"[0-9+\-*/^().!_]*")  # plus letters, checked with str.isalpha
_RISKY_POWERS = ("^{", "^(", "**{", "**(")
_RISKY_POWER_PATTERNS = (re.compile(r"(\^|\*\*)[0-9]+(\^|\*\*)"), re.compile(r"(\^|\*\*)[0-9][0-9]+"))
_SMALL_FACTORIAL = re.compile(r"(?<![0-9)])[0-9]{1,3}!")
_MAX_UNKNOWN_LETTERS = 2


def _unknown_letters(expr: str) -> int:
    return len({ch for ch in expr.replace("sqrt", "").replace("frac", "") if ch.isalpha()})


def _may_evaluate(expr: str) -> bool:
    if _unknown_letters(expr) > _MAX_UNKNOWN_LETTERS:
        return False
    if not _SYMPY_ALPHABET.fullmatch("".join(ch for ch in expr if not ch.isalpha())):
        return False
    if any(risky in expr for risky in _RISKY_POWERS) or any(p.search(expr) for p in _RISKY_POWER_PATTERNS):
        return False
    return expr.count("!") == len(_SMALL_FACTORIAL.findall(expr))


def _sympy_equal(gold: str, answer: str) -> bool:
    expr = f"({gold})-({answer})"
    if max(len(gold), len(answer)) > MAX_SYMPY_CHARS or not _may_evaluate(expr):
        return False
    import sympy
    from sympy.parsing import sympy_parser

    transformations = sympy_parser.standard_transformations + (sympy_parser.implicit_multiplication_application,)
    try:
        difference = sympy_parser.parse_expr(expr.replace("^", "**"), transformations=transformations)
        return sympy.simplify(difference) == 0
    except Exception:  # noqa: BLE001 - any failure to parse or simplify is "not shown equal"
        return False


# --------------------------------------------------------------------------- LaTeX to text

_TWO_ARGUMENTS = {"frac": "{}/{}", "dfrac": "{}/{}", "tfrac": "{}/{}", "nicefrac": "{}/{}", "textfrac": "{}/{}"}
_ONE_ARGUMENT = frozenset((
    "text", "textrm", "textit", "textbf", "textsc", "textsl", "textup", "textnormal", "emph", "mbox",
    "mathrm", "mathbf", "mathit", "mathsf", "mathbb", "mathtt", "mathcal", "mathscr", "mathfrak",
    "overline", "underline", "widehat", "widetilde", "overbrace", "underbrace",
))
_GREEK = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
          "upsilon phi chi psi omega").split()
_SYMBOLS = {
    **{name: chr(0x3B1 + i + (1 if i > 16 else 0)) for i, name in enumerate(_GREEK)},  # no final sigma
    **{name.capitalize(): chr(0x391 + i + (1 if i > 16 else 0)) for i, name in enumerate(_GREEK)},
    "epsilon": "\u03f5", "phi": "\u03d5", "varepsilon": "\u03b5", "vartheta": "\u03d1", "varphi": "\u03c6",
    "varpi": "\u03d6", "varrho": "\u03f1", "varsigma": "\u03c2",
    "infty": "\u221e", "cup": "\u222a", "cap": "\u2229", "cdot": "\u00b7", "times": "\u00d7", "pm": "\u00b1",
    "mp": "\u2213", "le": "\u2264", "leq": "\u2264", "ge": "\u2265", "geq": "\u2265", "neq": "\u2260",
    "geqslant": "\u2a7e", "leqslant": "\u2a7d", "approx": "\u2248", "equiv": "\u2261", "sim": "\u223c",
    "circ": "\u2218", "in": "\u2208",
    "notin": "\u2209", "emptyset": "\u2205", "varnothing": "\u2205", "setminus": "\u2216", "partial": "\u2202",
    "to": "\u2192", "rightarrow": "\u2192", "leftarrow": "\u2190", "ldots": "\u2026", "dots": "\u2026",
    "cdots": "\u22ef", "prime": "'", "lfloor": "\u230a", "rfloor": "\u230b", "lceil": "\u2308",
    "rceil": "\u2309", "hbar": "\u0127", "odot": "\u2299", "ell": "\u2113", "angle": "\u2220", "div": "\u00f7",
    "mid": "|", "perp": "\u22a5", "parallel": "\u2225", "ast": "\u2217", "backslash": "\\", "textbackslash": "\\",
    **{name: name for name in ("sin cos tan arcsin arccos arctan sinh cosh tanh arcsinh arccosh arctanh "
                               "ln log exp max min sup inf lim").split()},
    ",": " ", ";": " ", ":": " ", " ": " ", "!": "", "quad": "  ", "qquad": "    ", "\\": "\n",
    "{": "{", "}": "}", "$": "$", "%": "%", "&": "&", "#": "#", "_": "_",
}
# DeepScaleR's pass over pylatexenc's output: the characters sympy should read as names or operators.
_TEXT_TO_SYMPY = (("\u221a", "sqrt"), ("\u03c0", "pi"), ("\u221e", "inf"), ("\u222a", "U"), ("\u00b7", "*"),
                  ("\u00d7", "*"))
_SPECIALS = (("---", "\u2014"), ("--", "\u2013"), ("~", "\u00a0"), ("&", "   "))


def _latex_to_text(latex: str) -> str:
    """LaTeX in text mode to plain text, as pylatexenc's latex2text renders math answers, then
    DeepScaleR's replacements (``\\u221a`` -> ``sqrt``, ``\\u03c0`` -> ``pi``, ...)."""
    latex = latex.replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac").replace("\\frac", " \\frac")
    text, _ = _render(latex, 0, closing=None)
    for old, new in _TEXT_TO_SYMPY:
        text = text.replace(old, new)
    return text.strip()


_MACRO_NAME = re.compile(r"\\([A-Za-z]+|[^A-Za-z])")


def _render(src: str, pos: int, closing: str | None) -> tuple[str, int]:
    """Render ``src`` from ``pos`` until ``closing`` (``}``) or the end; returns (text, index after it)."""
    out = []
    while pos < len(src):
        ch = src[pos]
        if ch == closing:
            return "".join(out), pos + 1
        if ch == "{":
            inner, pos = _render(src, pos + 1, "}")
            out.append(inner)
        elif ch == "}":  # unbalanced: dropped
            pos += 1
        elif ch == "\\":
            text, pos = _render_macro(src, pos)
            out.append(text)
        else:
            old, new = next(((old, new) for old, new in _SPECIALS if src.startswith(old, pos)), (ch, ch))
            out.append(new)
            pos += len(old)
    return "".join(out), pos


def _render_macro(src: str, pos: int) -> tuple[str, int]:
    name_match = _MACRO_NAME.match(src, pos)
    if name_match is None:
        raise _Malformed("a backslash at the end")
    name, pos = name_match.group(1), name_match.end()
    if name.isalpha():  # LaTeX ends a macro name at the first non-letter and eats the spaces after it
        while pos < len(src) and src[pos] in " \t":
            pos += 1
    if name in _TWO_ARGUMENTS:
        numerator, pos = _render_argument(src, pos)
        denominator, pos = _render_argument(src, pos)
        return _TWO_ARGUMENTS[name].format(numerator, denominator), pos
    if name == "sqrt":
        pos = _skip_optional_argument(src, pos)  # pylatexenc drops the degree: \sqrt[3]{x} reads as sqrt
        radicand, pos = _render_argument(src, pos)
        return "\u221a(" + radicand + ")", pos
    if name in _ONE_ARGUMENT:
        return _render_argument(src, pos)
    if name == "begin":
        return _render_environment(src, pos)
    return _SYMBOLS.get(name, ""), pos  # unknown macros render as nothing; a {group} after one stays


_MATRICES = frozenset(("matrix", "pmatrix", "bmatrix", "Bmatrix", "vmatrix", "Vmatrix", "smallmatrix", "array"))
_ENVIRONMENT_NAME = re.compile(r"\s*\{([A-Za-z*]+)\}")


def _render_environment(src: str, pos: int) -> tuple[str, int]:
    """``\\begin{pmatrix}a & b \\\\ c & d\\end{pmatrix}`` -> ``[ a b; c d ]`` (pylatexenc's matrix
    form); other environments render as their body."""
    name_match = _ENVIRONMENT_NAME.match(src, pos)
    if name_match is None:
        return "", pos
    name = name_match.group(1)
    end_tag = f"\\end{{{name}}}"
    body_start = name_match.end()
    if name == "array":
        _, body_start = _render_argument(src, body_start)  # the column spec
    body_end = src.find(end_tag, body_start)
    if body_end < 0:
        body_end = len(src)
    body = src[body_start:body_end]
    after = min(body_end + len(end_tag), len(src))
    if name not in _MATRICES:
        return _render(body, 0, closing=None)[0], after
    rows = [" ".join(_render(cell, 0, closing=None)[0] for cell in row.split("&")) for row in body.split("\\\\")]
    return "[ " + "; ".join(rows) + " ]", after


def _render_argument(src: str, pos: int) -> tuple[str, int]:
    while pos < len(src) and src[pos].isspace():
        pos += 1
    if pos >= len(src):
        return "", pos
    if src[pos] == "{":
        return _render(src, pos + 1, "}")
    if src[pos] == "\\":
        return _render_macro(src, pos)
    return src[pos], pos + 1


def _skip_optional_argument(src: str, pos: int) -> int:
    start = pos
    while pos < len(src) and src[pos].isspace():
        pos += 1
    if pos < len(src) and src[pos] == "[":
        end = src.find("]", pos)
        return end + 1 if end >= 0 else len(src)
    return start
