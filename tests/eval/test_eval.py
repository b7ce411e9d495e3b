"""Evaluation: metric estimators by hand, the benchmark registry, every benchmark file end to end on
the random tiny model, exact metrics through the real verifier with a scripted engine, and the CLI."""

import dataclasses
import json
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from justrl_min import tiny
from justrl_min.data import DataError, Problem, build_prompt_ids
from justrl_min.eval import evaluate
from justrl_min.eval.evaluate import BENCHMARKS, EVAL_SUFFIX, majority_vote, pass_at_k
from justrl_min.reward import VerifierPool
from justrl_min.rollout import Rollouts, Sampling
from tests import tiny_models

ROOT = Path(__file__).resolve().parents[2]
BENCHMARK_DIR = Path(__file__).resolve().parents[3] / "shared" / "benchmarks"
needs_files = pytest.mark.skipif(not BENCHMARK_DIR.is_dir(), reason=f"no benchmark files at {BENCHMARK_DIR}")
FAST = Sampling(temperature=0.7, top_p=0.9, max_tokens=4, seed=0)


# --------------------------------------------------------------------------------------------------
# pass@k


@pytest.mark.parametrize(("n", "c", "k", "expected"), [
    (5, 2, 1, 0.4),            # pass@1 = c/n = 2/5
    (5, 2, 2, 0.7),            # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (4, 1, 2, 0.5),            # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (32, 1, 4, 0.125),         # 1 - C(31,4)/C(32,4) = 1 - 28/32 (the one correct is in 4 of 32 positions)
    (4, 0, 4, 0.0),            # no correct sample: nothing to find
    (4, 4, 1, 1.0),
    (4, 3, 2, 1.0),            # n - c = 1 < k: every pair holds a correct sample
    (32, 16, 32, 1.0),
    (2, 1, 2, 1.0),            # 1 - C(1,2)/C(2,2) = 1 - 0
])
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_equals_the_binomial_ratio_everywhere():
    for n in range(1, 17):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
                assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_where_binomials_overflow_floats():
    # C(2000, 1000) ~ 2e600 does not fit a float; the product form never builds it.
    exact = 1 - Fraction(math.comb(1990, 1000), math.comb(2000, 1000))
    assert pass_at_k(2000, 10, 1000) == pytest.approx(float(exact), rel=1e-12)
    assert pass_at_k(1024, 1, 1) == pytest.approx(1 / 1024, rel=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_pass_ks_are_1_4_and_n_when_not_above_n():
    assert evaluate.pass_ks(32) == [1, 4, 32]
    assert evaluate.pass_ks(4) == [1, 4]
    assert evaluate.pass_ks(2) == [1, 2]
    assert evaluate.pass_ks(1) == [1]


# --------------------------------------------------------------------------------------------------
# maj@n


@pytest.mark.parametrize(("answers", "scores", "expected"), [
    (["5", "6", "5", None], [1, 0, 1, 0], 1.0),    # "5" has 2 votes, "6" one, None abstains
    (["6", "5", "6", "5"], [0, 1, 0, 1], 0.0),     # 2-2 tie: "6" came first, and it is wrong
    (["5", "6", "6", "5"], [1, 0, 0, 1], 1.0),     # 2-2 tie: "5" came first, and it is right
    (["7", "7", "7", "42"], [0, 0, 0, 1], 0.0),    # the right answer is a minority
    ([None, None], [0, 0], 0.0),                   # nobody answered
    (["", "", "3"], [0, 0, 1], 1.0),               # empty boxes abstain: "3" wins 1-0
    # Cosmetic variants vote together: \dfrac = \frac, spaces, $...$ and a final period.
    (["\\dfrac{1}{2}", "0.5", "\\frac{1}{2}", "$\\frac{1} {2}$.", "0.5"], [1, 1, 1, 1, 1], 1.0),
    (["\\left( 1, 2 \\right)", "(1,2)", "3"], [1, 1, 0], 1.0),
    # A group whose first member timed out (scored 0) still counts: they are the same answer.
    (["204", "204", "17"], [0, 1, 0], 1.0),
])
def test_majority_vote(answers, scores, expected):
    assert majority_vote(answers, scores) == expected


def test_normalize_answer_only_removes_cosmetics():
    assert evaluate.normalize_answer(" $\\dfrac{3}{4}$. ") == "\\frac{3}{4}"
    assert evaluate.normalize_answer("90^\\circ") == "90"
    assert evaluate.normalize_answer("1\\,000") == "1000"
    assert evaluate.normalize_answer("\\frac{3}{4}") != evaluate.normalize_answer("0.75")  # the verifier's job


def test_problem_metrics_of_one_problem():
    # 4 samples, 2 correct: avg@4 = 2/4; pass@1 = 2/4; pass@4 = 1 (n - c = 2 < 4);
    # votes "5": 2, "6": 2 -> tie, "5" first -> correct.
    m = evaluate.problem_metrics([1.0, 0.0, 0.0, 1.0], ["5", "6", "6", "5"])
    assert m == {"avg@4": 0.5, "pass@1": 0.5, "pass@4": 1.0, "maj@4": 1.0}


# --------------------------------------------------------------------------------------------------
# Registry and loading


def test_registry_has_the_nine_paper_benchmarks_with_their_defaults():
    assert list(BENCHMARKS) == ["aime24", "aime25", "amc23", "math500", "minerva", "olympiadbench",
                                "hmmt25", "brumo25", "cmimc25"]
    assert {name: b.n for name, b in BENCHMARKS.items()} == {
        "aime24": 32, "aime25": 32, "amc23": 32, "hmmt25": 32, "brumo25": 32, "cmimc25": 32,
        "math500": 4, "minerva": 4, "olympiadbench": 4}
    assert BENCHMARKS["aime24"].hub_id == "HuggingFaceH4/aime_2024"
    assert BENCHMARKS["olympiadbench"].folder == "Olympiad-Bench"
    assert evaluate.resolve_benchmarks("all") == list(BENCHMARKS)
    assert evaluate.resolve_benchmarks("AIME25, amc23,aime25") == ["aime25", "amc23"]
    assert evaluate.resolve_benchmarks(["math500", "minerva"]) == ["math500", "minerva"]


def test_unknown_benchmark_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown benchmark 'aime2024'.*valid names: all, aime24, aime25"):
        evaluate.resolve_benchmarks("aime2024,amc23")
    with pytest.raises(ValueError, match="no benchmark named"):
        evaluate.resolve_benchmarks(" , ")


def test_missing_data_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path}/HMMT25/test.parquet"):
        evaluate.load_benchmark("hmmt25", tmp_path)


def test_hub_sets_load_through_their_own_field_names(monkeypatch):
    import datasets

    hub = {  # rows shaped like the hub copies
        ("HuggingFaceH4/aime_2024", "train"): [{"id": 60, "problem": "Find x.", "answer": "204", "year": "2024"}],
        ("math-ai/amc23", "test"): [{"id": 0, "question": "How many?", "answer": "27.0", "url": "u"}],
        ("math-ai/olympiadbench", "test"): [{"id": 2, "question": "Compute y.", "final_answer": ["$\\frac{1}{2}$"],
                                             "solution": ["..."]}],
    }
    monkeypatch.setattr(datasets, "load_dataset", lambda hub_id, split: hub[(hub_id, split)])
    assert evaluate.load_benchmark("aime24") == [Problem("60", "Find x.", "204")]
    assert evaluate.load_benchmark("amc23") == [Problem("0", "How many?", "27.0")]
    assert evaluate.load_benchmark("olympiadbench") == [Problem("2", "Compute y.", "\\frac{1}{2}")]
    hub[("math-ai/minervamath", "test")] = [{"problem": "renamed upstream", "answer": "1"}]
    with pytest.raises(DataError, match="expected columns 'question' and 'answer'"):
        evaluate.load_benchmark("minerva")


@needs_files
def test_every_benchmark_file_loads_with_golds():
    sizes = {name: len(evaluate.load_benchmark(name, BENCHMARK_DIR)) for name in BENCHMARKS}
    assert sizes == {"aime24": 30, "aime25": 30, "amc23": 40, "math500": 500, "minerva": 272,
                     "olympiadbench": 674, "hmmt25": 30, "brumo25": 30, "cmimc25": 40}
    aime24 = evaluate.load_benchmark("aime24", BENCHMARK_DIR, max_problems=3)
    assert len(aime24) == 3 and aime24[0].answer == "204"  # stored as \boxed{204}
    assert evaluate.load_benchmark("hmmt25", BENCHMARK_DIR)[0].answer == "103"


def test_eval_prompt_is_the_papers():
    tokenizer = tiny.build_tokenizer()
    text = tokenizer.decode(build_prompt_ids(tokenizer, "What is 1+1?", EVAL_SUFFIX))
    assert text == ("<|user|>What is 1+1? Please reason step by step, and put your final answer within "
                    "\\boxed{}.<|assistant|>")


# --------------------------------------------------------------------------------------------------
# End to end


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(workers=1, timeout_s=10.0) as verifier:
        yield verifier


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    return tiny_models.save_random_model(tmp_path_factory.mktemp("random") / "model")


@pytest.fixture(scope="module")
def tokenizer(random_model):
    from justrl_min.model import load_tokenizer

    return load_tokenizer(str(random_model))


class ScriptedEngine:
    """Answers each prompt with fixed texts (sample j gets texts[j % len(texts)])."""

    def __init__(self, tokenizer, script: dict[tuple[int, ...], list[str]]):
        self.tokenizer, self.script = tokenizer, script

    def generate(self, prompt_token_ids, n, _sampling):
        responses = [self.tokenizer(self.script[tuple(p)][j % len(self.script[tuple(p)])],
                                    add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
                     for p in prompt_token_ids for j in range(n)]
        return Rollouts(prompt_ids=[list(p) for p in prompt_token_ids for _ in range(n)], response_ids=responses,
                        rollout_logprobs=None, truncated=[False] * len(responses))


@needs_files
def test_random_model_on_every_benchmark_file(random_model, tokenizer, pool, tmp_path):
    from justrl_min.model import load_causal_lm
    from justrl_min.rollout import HFEngine

    model = load_causal_lm(str(random_model), trainable=False)
    engine = HFEngine(model, tokenizer, batch_size=8)
    results = evaluate.evaluate_benchmarks(engine, tokenizer, "all", n=2, sampling=FAST, data_dir=BENCHMARK_DIR,
                                           pool=pool, out_dir=tmp_path, max_problems=2)

    assert list(results["benchmarks"]) == list(BENCHMARKS)
    for name, m in results["benchmarks"].items():
        assert (m["n"], m["problems"], m["samples"]) == (2, 2, 4), name
        missing = [k for k in evaluate.metric_names(2) if k not in m]
        assert not missing, (name, missing)
        assert all(0.0 <= m[k] <= 1.0 for k in ("avg@2", "pass@1", "pass@2", "maj@2", "truncated_frac"))
        assert 1 <= m["response_length_mean"] <= 4
    assert results["overall"]["benchmarks"] == 9 and results["overall"]["samples"] == 36

    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 9 * 2 * 2  # benchmarks x problems x n
    assert set(samples[0]) == {"benchmark", "problem_id", "sample", "response", "answer", "gold", "score",
                               "grader_score", "tokens", "truncated"}
    assert [s["sample"] for s in samples[:4]] == [0, 1, 0, 1]
    assert json.loads((tmp_path / "results.json").read_text()) == results

    flat = evaluate.flat_metrics(results)
    assert {"eval/aime24/avg@2", "eval/aime24/pass@1", "eval/aime24/pass@2", "eval/aime24/maj@2",
            "eval/olympiadbench/avg@2", "eval/overall/avg"} <= set(flat)
    assert "eval/aime24/pass@4" not in flat  # k above n is not reported
    table = evaluate.format_table(results, label="random")
    for title in ("AIME24", "MATH-500", "OlympiadBench", "CMIMC25", "Avg", "avg@n"):
        assert title in table


@needs_files
def test_an_evaluation_repeats_exactly_with_its_seed_and_differs_with_another(random_model, tokenizer, pool):
    from justrl_min.model import load_causal_lm
    from justrl_min.rollout import HFEngine

    engine = HFEngine(load_causal_lm(str(random_model), trainable=False), tokenizer, batch_size=8)
    problem_sets = {name: evaluate.load_benchmark(name, BENCHMARK_DIR, max_problems=2) for name in ("aime24", "amc23")}

    def responses(seed: int, names=("aime24", "amc23")) -> list[list[str]]:
        runs = evaluate.generate_and_grade(engine, tokenizer, {name: problem_sets[name] for name in names}, n=3,
                                           sampling=dataclasses.replace(FAST, max_tokens=8, seed=seed), pool=pool)
        return [run.texts for run in runs]

    first = responses(seed=0)
    assert responses(seed=0) == first
    assert responses(seed=1) != first
    # A benchmark samples from its own seed: alone, or after another, it gets the same responses.
    assert responses(seed=0, names=("amc23",)) == first[1:]
    assert evaluate.benchmark_seed(0, "aime24") != evaluate.benchmark_seed(0, "amc23")


@needs_files
def test_metrics_through_the_verifier_with_scripted_answers(tokenizer, pool, tmp_path):
    # Three problems each of AIME24 (verl schema, gold "\boxed{204}") and HMMT25 (MathArena schema).
    # Every problem gets [right, wrong] answers: avg@2 = 1/2, pass@1 = 1/2, pass@2 = 1 (n - c = 1 < 2),
    # maj@2: a 1-1 tie goes to the first answer, the right one -> 1.
    problem_sets = {name: evaluate.load_benchmark(name, BENCHMARK_DIR, max_problems=3) for name in ("aime24", "hmmt25")}
    script = {tuple(build_prompt_ids(tokenizer, p.problem, EVAL_SUFFIX)):
              [f"So the answer is \\boxed{{{p.answer}}}.", "I think \\boxed{-1}"]
              for problems in problem_sets.values() for p in problems}
    results = evaluate.evaluate_benchmarks(ScriptedEngine(tokenizer, script), tokenizer, ["aime24", "hmmt25"], n=2,
                                           sampling=FAST, pool=pool, out_dir=tmp_path, problem_sets=problem_sets)
    for name in ("aime24", "hmmt25"):
        m = results["benchmarks"][name]
        assert (m["avg@2"], m["pass@1"], m["pass@2"], m["maj@2"]) == (0.5, 0.5, 1.0, 1.0), name
        assert m["truncated_frac"] == 0.0 and m["verifier_timeouts"] == 0 and m["boxed_frac"] == 1.0
    assert results["overall"]["avg"] == 0.5
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [(s["answer"], s["score"]) for s in samples[:2]] == [("204", 1.0), ("-1", 0.0)]
    # Generation runs in prompt-length order; the file is back in problem order, each sample with its gold.
    expected = [(name, p.uid, j) for name, ps in problem_sets.items() for p in ps for j in range(2)]
    assert [(s["benchmark"], s["problem_id"], s["sample"]) for s in samples] == expected
    assert all((s["answer"], s["score"]) == ((s["gold"], 1.0) if s["sample"] == 0 else ("-1", 0.0)) for s in samples)
    assert "50.00" in evaluate.format_table(results)


@needs_files
def test_n_defaults_to_the_papers_per_benchmark(tokenizer, pool):
    problem_sets = {name: evaluate.load_benchmark(name, BENCHMARK_DIR, max_problems=1) for name in ("amc23", "minerva")}
    script = {tuple(build_prompt_ids(tokenizer, p.problem, EVAL_SUFFIX)): [f"\\boxed{{{p.answer}}}"]
              for problems in problem_sets.values() for p in problems}
    results = evaluate.evaluate_benchmarks(ScriptedEngine(tokenizer, script), tokenizer, "amc23,minerva",
                                           sampling=FAST, pool=pool, problem_sets=problem_sets)
    amc, minerva = results["benchmarks"]["amc23"], results["benchmarks"]["minerva"]
    assert (amc["n"], amc["samples"], amc["avg@32"], amc["pass@32"]) == (32, 32, 1.0, 1.0)
    assert (minerva["n"], minerva["samples"], minerva["avg@4"], minerva["maj@4"]) == (4, 4, 1.0, 1.0)


# --------------------------------------------------------------------------------------------------
# CLI


def run_eval_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "eval.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@needs_files
def test_cli_writes_results_and_prints_the_table(random_model, tmp_path):
    out = tmp_path / "out"
    done = run_eval_cli("--model", str(random_model), "--benchmarks", "aime25,brumo25", "--engine", "hf",
                        "--data-dir", str(BENCHMARK_DIR), "--n", "2", "--max-tokens", "4", "--max-problems", "1",
                        "--workers", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert all(word in done.stdout for word in ("AIME25", "BRUMO25", "Avg", "avg@n"))
    results = json.loads((out / "results.json").read_text())
    assert list(results["benchmarks"]) == ["aime25", "brumo25"]
    assert results["config"]["temperature"] == 0.7 and results["config"]["top_p"] == 0.9
    assert len((out / "samples.jsonl").read_text().splitlines()) == 2 * 1 * 2


def test_cli_rejects_an_unknown_benchmark_before_loading_a_model(tmp_path):
    done = run_eval_cli("--model", str(tmp_path / "no-such-model"), "--benchmarks", "aime24,gsm8k", "--engine", "hf")
    assert done.returncode != 0
    assert "unknown benchmark 'gsm8k'" in done.stderr and "valid names: all, aime24" in done.stderr


def test_cli_names_a_missing_data_file(tmp_path):
    done = run_eval_cli("--model", str(tmp_path / "no-such-model"), "--benchmarks", "math500", "--engine", "hf",
                        "--data-dir", str(tmp_path))
    assert done.returncode != 0
    assert f"{tmp_path}/MATH-500/test.parquet" in done.stderr


def test_cli_vllm_without_vllm_says_how_to_install_it(tmp_path):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed (tests/variants/test_vllm_engine.py runs eval.py --engine vllm)")
    done = run_eval_cli("--model", str(tmp_path / "m"), "--benchmarks", "aime24", "--engine", "vllm")
    assert done.returncode != 0 and "--engine vllm needs vLLM" in done.stderr and "make install-vllm" in done.stderr


def test_cli_evaluates_a_recipes_held_out_split_with_its_prompt(random_model, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {{path: {random_model}}}\ndata:\n  train: times_tables\n  prompt_suffix: ' Box it.'\n"
                      "  worked_example: ['What is 2 * 3?', '\\boxed{6}']\nrollout: {n: 2, max_response_length: 4}\n")
    out = tmp_path / "out"
    done = run_eval_cli("--model", str(random_model), "--recipe", str(recipe), "--engine", "hf", "--max-problems", "3",
                        "--workers", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert list(results["benchmarks"]) == ["times_tables:test"]
    config = results["config"]
    assert (config["n"], config["max_tokens"], config["split"]) == (2, 4, "test")      # the recipe's n and length
    assert (config["prompt_suffix"], config["prompt_example"]) == (" Box it.", ["What is 2 * 3?", "\\boxed{6}"])
    assert "boxed %" in done.stdout and 0.0 <= results["benchmarks"]["times_tables:test"]["boxed_frac"] <= 1.0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    products = {str(a * b) for a in range(2, 13) for b in range(2, 13)}
    assert len(rows) == 3 * 2 and {row["gold"] for row in rows} <= products


def test_cli_recipe_excludes_benchmark_flags():
    done = run_eval_cli("--model", "m", "--recipe", "r.yaml", "--benchmarks", "aime24", "--protocol", "justrl-val")
    assert done.returncode != 0 and "--recipe evaluates the recipe's own task with its prompt: drop --benchmarks, " \
        "--protocol" in done.stderr
