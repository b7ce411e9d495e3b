"""Problem sets in the schemas we meet, prompt building, bad rows, and the resumable sampler."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from justrl_min import tiny
from justrl_min.data import (
    DataError,
    EpochSampler,
    build_prompt_ids,
    clean_gold,
    load_problems,
    strip_dapo_wrapper,
    tokenize_problems,
)

ROOT = Path(__file__).resolve().parents[2]
# ../shared/benchmarks from the main checkout, ../../shared/benchmarks from a worktree under wt/
SHARED = next((p for p in (ROOT.parent / "shared" / "benchmarks", ROOT.parents[1] / "shared" / "benchmarks")
               if p.is_dir()), ROOT.parent / "shared" / "benchmarks")
DAPO_TEMPLATE = ("Solve the following math problem step by step. The last line of your response should be of the "
                 "form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{}\n\n"
                 "Remember to put your answer on its own line after \"Answer:\".")


def write_dapo_parquet(path, problems):
    """A small file in DAPO-Math-17k's hub schema (verl: chat prompt + reward_model)."""
    rows = [{"data_source": "math_dapo", "prompt": [{"content": DAPO_TEMPLATE.format(q), "role": "user"}],
             "ability": "MATH", "reward_model": {"ground_truth": a, "style": "rule-lighteval/MATH_v2"},
             "extra_info": {"index": f"id-{i}"}} for i, (q, a) in enumerate(problems)]
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_dapo_schema_strips_wrapper_and_dedups(tmp_path):
    path = tmp_path / "dapo.parquet"
    write_dapo_parquet(path, [("What is $1+1$?", "2"), ("Find $x$ if $2x=6$.", "3"), ("What is $1+1$?", "2")])
    problems = load_problems(str(path))
    assert [p.problem for p in problems] == ["What is $1+1$?", "Find $x$ if $2x=6$.", "What is $1+1$?"]
    assert [p.answer for p in problems] == ["2", "3", "2"] and problems[1].uid == "id-1"
    assert len(load_problems(str(path), dedup=True)) == 2
    raw = load_problems(str(path), strip_dapo_instruction=False)
    assert raw[0].problem.startswith("Solve the following math problem") and "Answer:" in raw[0].problem


def test_strip_dapo_wrapper_leaves_plain_problems_alone():
    assert strip_dapo_wrapper("Compute $2+2$.") == "Compute $2+2$."


@pytest.mark.parametrize("gold, clean", [("\\boxed{204}", "204"), (" 70 ", "70"), (42, "42"),
                                         ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"), (["x=3"], "x=3")])
def test_clean_gold(gold, clean):
    assert clean_gold(gold) == clean


def test_matharena_and_math_schemas(tmp_path):
    arena = tmp_path / "arena.jsonl"
    arena.write_text(json.dumps({"problem_idx": "7", "problem": "Compute $9!$.", "answer": "362880"}) + "\n")
    [p] = load_problems(str(arena))
    assert (p.uid, p.problem, p.answer) == ("7", "Compute $9!$.", "362880")
    math_json = tmp_path / "math.json"
    math_json.write_text(json.dumps([{"problem": "Simplify $\\frac{2}{4}$.", "solution": "It is $\\boxed{\\frac12}$.",
                                      "unique_id": "test/algebra/1.json"}]))
    [p] = load_problems(str(math_json))
    assert p.answer == "\\frac12" and p.uid == "test/algebra/1.json"


def test_folder_source_reads_split_files(tmp_path):
    write_dapo_parquet(tmp_path / "train.parquet", [("A?", "1")])
    write_dapo_parquet(tmp_path / "test.parquet", [("B?", "2"), ("C?", "3")])
    assert [p.problem for p in load_problems(str(tmp_path), split="test")] == ["B?", "C?"]


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared benchmark files not present")
@pytest.mark.parametrize("name, count", [("AIME24", 30), ("AIME25", 30), ("AMC23", 40), ("MATH-500", 500),
                                         ("Minerva", 272), ("Olympiad-Bench", 674), ("HMMT25", 30),
                                         ("BRUMO25", 30), ("CMIMC25", 40)])
def test_shared_benchmark_files_load(name, count):
    problems = load_problems(str(SHARED / name / "test.parquet"))
    assert len(problems) == count
    assert all(p.problem.strip() and p.answer for p in problems)
    assert not any(p.answer.startswith("\\boxed") for p in problems)
    if name == "AIME24":
        assert problems[0].answer == "204"  # stored as \boxed{204}


def test_missing_file_and_bad_rows_are_named(tmp_path):
    with pytest.raises(DataError, match="data file not found: .*nope.parquet"):
        load_problems(str(tmp_path / "nope.parquet"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem": "ok", "answer": "1"}) + "\n" + json.dumps({"problem": "no gold"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl row 1: no gold answer"):
        load_problems(str(bad))
    bad.write_text(json.dumps({"query": "?", "label": 1}) + "\n")
    with pytest.raises(DataError, match=r"row 0: unknown schema with columns \['label', 'query'\]"):
        load_problems(str(bad))
    bad.write_text("{not json\n")
    with pytest.raises(DataError, match="bad.jsonl line 1: not valid JSON"):
        load_problems(str(bad))


def test_prompt_building_and_length_filter():
    tokenizer = tiny.build_tokenizer()
    ids = build_prompt_ids(tokenizer, "What is 1+1?", " Box it.")
    assert tokenizer.decode(ids) == "<|user|>What is 1+1? Box it.<|assistant|>"
    problems = load_problems("tiny", tiny_problems=4)
    long = problems[0].__class__("long", "x" * 200, "1")
    prompt_set = tokenize_problems(problems + [long], tokenizer, "", max_prompt_length=64)
    assert prompt_set.dropped_too_long == 1 and len(prompt_set.prompt_ids) == 4
    with pytest.raises(DataError, match="every prompt is longer than data.max_prompt_length=3"):
        tokenize_problems(problems, tokenizer, "", max_prompt_length=3)


def test_sampler_is_seeded_covers_epochs_and_resumes():
    a = EpochSampler(10, seed=1)
    first = a.next_batch(4) + a.next_batch(4) + a.next_batch(2)
    assert sorted(first) == list(range(10))          # one epoch without replacement
    assert EpochSampler(10, seed=1).next_batch(10) == first
    assert EpochSampler(10, seed=2).next_batch(10) != first
    state = a.state_dict()
    continued = a.next_batch(7)
    b = EpochSampler(10, seed=1)
    b.load_state_dict(state)
    assert b.next_batch(7) == continued
    with pytest.raises(DataError, match="checkpoint sampler was built for 10 problems"):
        EpochSampler(11, seed=1).load_state_dict(state)


def test_a_worked_example_is_one_solved_turn_before_the_question():
    tokenizer = tiny.build_tokenizer()
    ids = build_prompt_ids(tokenizer, "What is 6 * 7?", " Box it.", ("What is 2 + 3?", "\\boxed{5}"))
    assert tokenizer.decode(ids) == ("<|user|>What is 2 + 3? Box it.<|assistant|>\\boxed{5}"
                                     "<|user|>What is 6 * 7? Box it.<|assistant|>")
    problems = load_problems("tiny", tiny_problems=3)
    with_example = tokenize_problems(problems, tokenizer, "", 64, example=("Q", "A")).prompt_ids
    without = tokenize_problems(problems, tokenizer, "", 64).prompt_ids
    shown = len(tokenizer("<|user|>Q<|assistant|>A")["input_ids"])
    assert [len(a) - len(b) for a, b in zip(with_example, without, strict=True)] == [shown] * 3


def test_times_tables_hold_out_whole_unordered_pairs():
    train = load_problems("times_tables", tiny_problems=3000, seed=1)
    test = load_problems("times_tables", split="test")
    pairs = {split: {frozenset(map(int, p.problem.removeprefix("What is ").removesuffix("?").split(" * ")))
                     for p in problems} for split, problems in (("train", train), ("test", test))}
    assert not pairs["train"] & pairs["test"]                  # 3 * 4 and 4 * 3 are on one side
    assert len(pairs["train"]) + len(pairs["test"]) == 66      # every product of 2..12, once over both
    assert len(test) == len({p.problem for p in test})         # the held-out split lists each problem once
    assert all(int(p.answer) == eval(p.problem.removeprefix("What is ").removesuffix("?")) for p in train[:50])
    assert [p.problem for p in load_problems("times_tables", tiny_problems=50, seed=1)] == \
        [p.problem for p in train[:50]]                        # seeded: a resumed run draws the same problems
    with pytest.raises(DataError, match="data.train=tiny: split 'test': this task has only `train`"):
        load_problems("tiny", split="test")
