"""The gold audit: its wrong variants, its table, and every shared benchmark file through it."""

import pytest

from justrl_min.tools.audit import FileAudit, Judgement, audit_golds, main, wrong_variants
from tests.core.test_data import SHARED, write_dapo_parquet


@pytest.mark.parametrize("gold, variants", [
    ("42", {"digit": "427", "sign": "-(42)", "x10": "10(42)"}),
    ("52_8", {"digit": "52_87", "sign": "-(52_8)", "x10": "10(52_8)"}),
    ("\\frac{\\cos (2 t)}{15}", {"digit": "\\frac{\\cos (2 t)}{157}", "sign": "-(\\frac{\\cos (2 t)}{15})",
                                 "x10": "10(\\frac{\\cos (2 t)}{15})"}),
    # lists, relations, intervals: the first number changes
    ("x = 1, 2", {"digit": "x = 1, 27", "sign": "x = -1, 2", "x10": "x = 10, 2"}),
    ("-3, .5", {"digit": "-3, .57", "sign": "3, .5", "x10": "-30, .5"}),
    ("(1.5, \\infty)", {"digit": "(1.57, \\infty)", "sign": "(-1.5, \\infty)", "x10": "(15, \\infty)"}),
    ("a \\le 0.25", {"digit": "a \\le 0.257", "sign": "a \\le -0.25", "x10": "a \\le 2.5"}),
    # -0 and 0 x 10 are 0, and a gold without a number has no sign to flip: only a digit is added
    ("0", {"digit": "07"}),
    ("\\text{(B)}", {"digit": "\\text{(B)}7"}),
])
def test_wrong_variants(gold, variants):
    assert wrong_variants(gold) == variants


def test_the_table_counts_each_kind_of_failure():
    audit = FileAudit("f", golds=2, judgements=[
        Judgement("1", "self", "1", 0.0, "ok", 0.01),  # self-fail
        Judgement("1", "digit", "17", 1.0, "ok", 0.02),  # a false positive
        Judgement("2", "self", "2", 1.0, "ok", 0.003),
        Judgement("2", "sign", "-2", 0.0, "timeout", 10.0),  # wrong verdict in time would be 0; a timeout fails
    ])
    assert [j.kind for j in audit.failures] == ["self", "digit", "sign"]
    assert audit.row() == {"file": "f", "golds": 2, "self_fail": 1, "variant_fp": 1, "variants": 2,
                           "timeouts": 1, "errors": 0, "slowest_ms": 10000}


def test_each_fixed_class_of_gold_passes_its_audit():
    golds = ["52_8", "4210_{5}", ".0000672", "111", "x = 1, 2", "a=4,\\,-8,\\,-10", "1-\\frac{1}{\\mathrm{e}}",
             "12:00", "m l \\ddot{\\theta}(t)-m g \\sin \\theta(t)=f(t) \\cos \\theta(t)"]
    audit = audit_golds("classes", golds, timeout_s=5.0)
    assert [(j.gold, j.kind, j.answer, j.score) for j in audit.failures] == []
    assert audit.row()["variants"] == 3 * len(golds) - 2  # the Minerva equation has no number: digit only


def test_a_dapo_schema_file_audits_clean(tmp_path, capsys):
    path = tmp_path / "dapo.parquet"
    write_dapo_parquet(path, [(f"Problem {i}?", gold) for i, gold in enumerate(["204", "-7", "0", "1000000", "33"])])
    assert main([str(path), "--timeout-s", "5"]) == 0
    table = capsys.readouterr().out
    assert "FAIL" not in table and "dapo.parquet" in table and "slowest judgement" in table


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared benchmark files not present")
def test_every_shared_benchmark_file_audits_clean(capsys):
    # Every 4th gold of each file (~410 golds, ~1,600 judgements) keeps the suite fast; the full
    # audit is `python -m justrl_min.tools.audit ../shared/benchmarks`.
    status = main([str(SHARED), "--every", "4"])
    out = capsys.readouterr().out
    assert status == 0, out
    rows = {line.split()[0] for line in out.splitlines()[1:-2]}
    assert rows == {"AIME24", "AIME25", "AMC23", "BRUMO25", "CMIMC25", "HMMT25", "MATH-500", "Minerva",
                    "Olympiad-Bench"}
