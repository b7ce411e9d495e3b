"""`justrl prepare-data` (justrl_min/tools/prepare_data.py) offline: small files in the hub schemas written here,
and the shared benchmark files."""

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from justrl_min.data import Problem, load_problems
from justrl_min.eval import evaluate
from justrl_min.tools import prepare_data as prepare
from tests.core.test_data import SHARED, write_dapo_parquet

ROOT = Path(__file__).resolve().parents[2]


def _manifest(out, folder):
    return json.loads((out / folder / "manifest.json").read_text())


def test_dapo_copy_is_deduplicated_unwrapped_and_described(tmp_path):
    # Five rows, three problems; "What is $1+1$?" appears three times, once with another gold.
    dapo = tmp_path / "dapo-hub.parquet"
    write_dapo_parquet(dapo, [("What is $1+1$?", "2"), ("Find $x$ if $2x=6$.", "3"), ("What is $1+1$?", "2"),
                              ("Compute $7 \\cdot 6$.", "42"), ("What is $1+1$?", "3")])
    out = tmp_path / "out"
    assert prepare.main(["--out", str(out), "--only", "dapo", "--local", f"dapo={dapo}"]) == 0
    written = out / "DAPO-Math-17k" / "train.parquet"
    table = pq.read_table(written)
    assert table.schema.names == ["id", "problem", "answer", "source"]
    assert all(field.type == pa.string() for field in table.schema)
    assert table.column("problem").to_pylist() == ["What is $1+1$?", "Find $x$ if $2x=6$.", "Compute $7 \\cdot 6$."]
    assert table.column("answer").to_pylist() == ["2", "3", "42"]
    assert table.column("id").to_pylist() == ["id-0", "id-1", "id-3"]
    manifest = _manifest(out, "DAPO-Math-17k")
    assert manifest == {
        "name": "dapo", "file": "train.parquet", "source": str(dapo), "hub_id": "BytedTsinghua-SIA/DAPO-Math-17k",
        "revision": "local sha256:" + hashlib.sha256(dapo.read_bytes()).hexdigest(),
        "columns": ["id", "problem", "answer", "source"], "rows": 3, "unique_problems": 3, "source_rows": 5,
        "duplicates_dropped": 2, "problems_with_conflicting_golds": 1, "dapo_instruction_stripped": True,
        "expected_rows": None, "sha256": hashlib.sha256(written.read_bytes()).hexdigest(),
    }
    # The folder is what data.train points at; the manifest beside the file is not read as problems.
    assert [p.problem for p in load_problems(str(out / "DAPO-Math-17k"))] == table.column("problem").to_pylist()


def _unsourced(problems: list[Problem]) -> list[Problem]:
    return [dataclasses.replace(p, source="") for p in problems]


def test_benchmarks_in_matharena_math_and_math_ai_schemas_land_in_the_eval_layout(tmp_path):
    arena = tmp_path / "hmmt.jsonl"
    arena.write_text("".join(json.dumps({"problem_idx": i, "problem": f"Problem {i}?", "answer": str(10 * i),
                                         "problem_type": ["Algebra"]}) + "\n" for i in (1, 2)))
    math500 = tmp_path / "math500.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"problem": "Convert $(0,3)$ to polar.", "solution": "... $\\boxed{(3, \\frac{\\pi}{2})}$",
         "answer": "\\left( 3, \\frac{\\pi}{2} \\right)", "subject": "Precalculus", "level": 2,
         "unique_id": "test/precalculus/807.json"}]), math500)
    olympiad = tmp_path / "olympiad.json"
    olympiad.write_text(json.dumps([{"id": 7, "question": "Compute y.", "final_answer": ["$\\frac{1}{2}$"]}]))
    amc = tmp_path / "amc.jsonl"
    amc.write_text(json.dumps({"id": 0, "question": "How many?", "answer": 27.0}) + "\n")
    out = tmp_path / "out"
    argv = ["--out", str(out), "--only", "hmmt25,math500,olympiadbench,amc23", "--local", f"hmmt25={arena}",
            "--local", f"math500={math500}", "--local", f"olympiadbench={olympiad}", "--local", f"amc23={amc}"]
    assert prepare.main(argv) == 0
    # A prepared row's source is where it was read from (for reward.by_source); compared apart.
    assert {p.source for p in evaluate.load_benchmark("hmmt25", out)} == {str(arena)}
    assert _unsourced(evaluate.load_benchmark("hmmt25", out)) == [Problem("1", "Problem 1?", "10"),
                                                      Problem("2", "Problem 2?", "20")]
    assert _unsourced(evaluate.load_benchmark("math500", out)) == [
        Problem("test/precalculus/807.json", "Convert $(0,3)$ to polar.", "\\left( 3, \\frac{\\pi}{2} \\right)")]
    assert _unsourced(evaluate.load_benchmark("olympiadbench", out)) == [Problem("7", "Compute y.", "\\frac{1}{2}")]
    assert _unsourced(evaluate.load_benchmark("amc23", out)) == [Problem("0", "How many?", "27")]
    manifest = _manifest(out, "HMMT25")
    assert (manifest["rows"], manifest["unique_problems"], manifest["expected_rows"]) == (2, 2, 30)
    assert manifest["hub_id"] == "MathArena/hmmt_feb_2025" and manifest["dapo_instruction_stripped"] is False


def test_sources_without_a_local_copy_come_from_the_hub_pinned_to_a_commit(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(prepare, "resolve_hub_revision", lambda hub_id, revision: asked.append((hub_id, revision))
                        or "c0ffee")
    monkeypatch.setattr(prepare, "load_problems", lambda hub_id, *, split, revision, strip_dapo_instruction:
                        asked.append((hub_id, split, revision, strip_dapo_instruction)) or [Problem("1", "Q?", "5")])
    assert prepare.main(["--out", str(tmp_path), "--only", "aime25", "--revision", "aime25=v1"]) == 0
    assert asked == [("MathArena/aime_2025", "v1"), ("MathArena/aime_2025", "train", "c0ffee", False)]
    assert _manifest(tmp_path, "AIME25")["revision"] == "c0ffee"


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(SystemExit, match="--local 'gsm8k=x': expected NAME=VALUE with NAME one of dapo, "):
        prepare.main(["--out", str(tmp_path), "--local", "gsm8k=x"])
    missing = tmp_path / "missing.parquet"
    assert prepare.main(["--out", str(tmp_path), "--only", "aime24", "--local", f"aime24={missing}"]) == 2


def test_the_script_runs_from_another_directory(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "data" / "prepare.py"), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--local-dir" in done.stdout, done.stderr


def test_one_table_of_sources_covers_the_training_set_and_every_benchmark():
    assert list(prepare.SOURCES) == ["dapo", *evaluate.BENCHMARKS]
    assert all(prepare.SOURCES[name].hub_id == bench.hub_id for name, bench in evaluate.BENCHMARKS.items())


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared benchmark files not present")
def test_the_nine_shared_files_prepare_to_their_known_sizes(tmp_path):
    out = tmp_path / "out"
    assert prepare.main(["--out", str(out), "--only", ",".join(evaluate.BENCHMARKS), "--local-dir", str(SHARED)]) == 0
    for name, bench in evaluate.BENCHMARKS.items():
        manifest = _manifest(out, bench.folder)
        assert manifest["rows"] == manifest["unique_problems"] == manifest["expected_rows"], name
        assert manifest["duplicates_dropped"] == 0 and manifest["problems_with_conflicting_golds"] == 0, name
        original = load_problems(str(SHARED / bench.folder / "test.parquet"), strip_dapo_instruction=False)
        assert _unsourced(evaluate.load_benchmark(name, out)) == _unsourced(original), name
