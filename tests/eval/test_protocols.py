"""The paper's evaluation protocols: flags resolved against a protocol, the judge stage (only rejected
responses, greedy, exactly `A`), graded vs judged scores, in-training evaluation, and the CLI."""

import contextlib
import json
from pathlib import Path

import pytest

from justrl_min.config import BOXED_SUFFIX, load_recipe
from justrl_min.data import Problem
from justrl_min.eval import evaluate, protocols
from justrl_min.eval.evaluate import EVAL_SUFFIX
from justrl_min.eval.judge import JUDGE_MAX_NEW_TOKENS
from justrl_min.reward import VerifierPool
from justrl_min.rollout import Rollouts, Sampling
from tests import tiny_models

ROOT = Path(__file__).resolve().parents[2]
BENCHMARK_DIR = ROOT.parent / "shared" / "benchmarks"
needs_files = pytest.mark.skipif(not BENCHMARK_DIR.is_dir(), reason=f"no benchmark files at {BENCHMARK_DIR}")
FAST = Sampling(temperature=0.7, top_p=0.9, max_tokens=4, seed=0)


# --------------------------------------------------------------------------------------------------
# Resolving flags against a protocol


def test_no_protocol_grades_with_math_verify_and_no_judge():
    g = protocols.resolve()
    assert (g.protocol, g.grader, g.judge, g.prompt_suffix, g.max_tokens) == (None, "math-verify", None,
                                                                               EVAL_SUFFIX, 31744)
    g = protocols.resolve(grader="exact", judge="j", max_tokens=8)
    assert (g.grader, g.judge, g.judge_prompt, g.max_tokens) == ("exact", "j", None, 8)


def test_table_protocol_is_deepscaler_plus_a_judge_with_the_eval_prompt():
    g = protocols.resolve("justrl-table", judge="/models/cv3b", judge_prompt="official.txt")
    assert (g.grader, g.judge, g.judge_prompt, g.prompt_suffix, g.max_tokens) == (
        "deepscaler", "/models/cv3b", "official.txt", EVAL_SUFFIX, 31744)


def test_val_protocol_is_unboxed_math_verify_with_the_training_prompt():
    g = protocols.resolve("justrl-val")
    assert (g.grader, g.judge, g.prompt_suffix, g.max_tokens) == ("math-verify-unboxed", None, BOXED_SUFFIX, 15360)
    assert protocols.resolve("justrl-val", grader="math-verify-unboxed").grader == "math-verify-unboxed"  # agrees


def test_an_explicit_max_tokens_wins_over_the_protocols():
    assert protocols.resolve("justrl-val", max_tokens=16).max_tokens == 16


@pytest.mark.parametrize(("protocol", "kwargs", "message"), [
    ("justrl-table", {"grader": "exact", "judge": "j"}, "--grader exact conflicts with --protocol justrl-table"),
    ("justrl-val", {"grader": "math-verify"}, "which grades with math-verify-unboxed"),
    ("justrl-table", {}, "--protocol justrl-table needs --judge PATH"),
    ("justrl-val", {"judge": "j"}, "--judge conflicts with --protocol justrl-val, which has no judge"),
    (None, {"judge_prompt": "p.txt"}, "--judge-prompt needs --judge"),
    ("polaris", {}, "--protocol 'polaris': choose from justrl-table, justrl-val"),
    (None, {"grader": "fuzzy"}, "--grader 'fuzzy': choose from math-verify"),
])
def test_conflicting_choices_are_errors_naming_the_flags(protocol, kwargs, message):
    with pytest.raises(ValueError) as e:
        protocols.resolve(protocol, **kwargs)
    assert message in str(e.value)


# --------------------------------------------------------------------------------------------------
# The judge stage, with scripted engines


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    return tiny_models.save_random_model(tmp_path_factory.mktemp("random") / "model")


@pytest.fixture(scope="module")
def tokenizer(tokenizer_folder):
    from justrl_min.model import load_tokenizer

    return load_tokenizer(str(tokenizer_folder))


class ScriptedPolicy:
    """Sample j of every prompt answers texts[j % len(texts)]."""

    def __init__(self, tokenizer, texts):
        self.tokenizer, self.texts = tokenizer, texts

    def generate(self, prompt_token_ids, n, _sampling):
        ids = [self.tokenizer(self.texts[j % len(self.texts)], add_special_tokens=False)["input_ids"]
               for _ in prompt_token_ids for j in range(n)]
        return Rollouts([list(p) for p in prompt_token_ids for _ in range(n)], ids, None, [False] * len(ids))


class ScriptedJudgeSpec:
    """Stands in for an EngineSpec: its engine says `A` when the prompt holds `rescue me`, else `B`;
    records what it was opened with and how it was asked to decode."""

    def __init__(self, tokenizer):
        self.tokenizer, self.opened, self.prompts, self.samplings = tokenizer, [], [], []

    @contextlib.contextmanager
    def open(self, path, max_model_len):
        self.opened.append((path, max_model_len))
        yield self

    def generate(self, prompt_token_ids, n, sampling):
        assert n == 1  # one verdict per prompt
        self.samplings.append(sampling)
        texts = [self.tokenizer.decode(p) for p in prompt_token_ids]
        self.prompts += texts
        ids = [self.tokenizer(" A " if "rescue me" in t else "B", add_special_tokens=False)["input_ids"] for t in texts]
        return Rollouts([list(p) for p in prompt_token_ids], ids, None, [False] * len(ids))


PROBLEMS = [Problem("p1", "What is 6*7?", "42"), Problem("p2", "What is 2+2?", "4")]
# Per problem: right (graded correct), wrong, wrong-but-rescued, and the same rescued text again.
TEXTS = ["so \\boxed{42}", "\\boxed{41}", "forty-two, rescue me", "forty-two, rescue me"]


@pytest.fixture(scope="module")
def deepscaler_pool():
    with VerifierPool(workers=1, timeout_s=10.0, mode="deepscaler") as pool:
        yield pool


def test_the_judge_sees_only_rejected_responses_greedily_and_rescues_exactly_A(
        tokenizer, tokenizer_folder, deepscaler_pool, tmp_path):
    runs = evaluate.generate_and_grade(ScriptedPolicy(tokenizer, TEXTS), tokenizer, {"aime24": PROBLEMS}, n=4,
                                       sampling=FAST, pool=deepscaler_pool)
    spec = ScriptedJudgeSpec(tokenizer)
    judge = protocols.Judge(str(tokenizer_folder), "{question}|{llm_response}|{gold_answer}", spec)
    results = evaluate.finish(runs, config={"protocol": "justrl-table"}, judge=judge, out_dir=tmp_path)

    m = results["benchmarks"]["aime24"]
    # p1: 1 graded right of 4, +2 rescued -> 3/4; p2 (gold 4): 0 graded, +2 rescued -> 2/4.
    assert m["grader_avg@4"] == 1 / 8 and m["avg@4"] == (3 / 4 + 2 / 4) / 2
    assert (m["judge_asked"], m["judge_rescued"]) == (7, 4)
    assert m["judge_labels"] == {"A": 4, "B": 3, "C": 0, "": 0}  # " A " strips to exactly A
    # Each distinct (question, gold, response) is asked once, in one engine session, greedily.
    assert len(spec.prompts) == 5 and len(spec.opened) == 1
    assert all((s.temperature, s.max_tokens) == (0.0, JUDGE_MAX_NEW_TOKENS) for s in spec.samplings)
    # The engine's context: the longest prompt + 2,048 new tokens, within the judge's 512 positions.
    longest = max(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in spec.prompts)
    assert spec.opened[0][1] == min(longest + JUDGE_MAX_NEW_TOKENS, 512) == 512
    assert all("\\boxed{42}" not in p.split("|")[1] for p in spec.prompts if "What is 6*7?" in p)  # accepted: not asked

    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [(r["grader_score"], r["score"], r["judge"]) for r in rows[:4]] == [
        (1.0, 1.0, None), (0.0, 0.0, "B"), (0.0, 1.0, " A "), (0.0, 1.0, " A ")]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["judge"] == str(tokenizer_folder) and saved["overall"]["judge_rescued"] == 4
    assert saved["overall"]["grader_avg"] == 1 / 8
    table = evaluate.format_table(results)
    assert "grader avg@n" in table and "judge rescued" in table


def test_nothing_rejected_opens_no_judge_engine(tokenizer, tokenizer_folder, deepscaler_pool):
    runs = evaluate.generate_and_grade(ScriptedPolicy(tokenizer, ["\\boxed{42}"]), tokenizer,
                                       {"aime24": PROBLEMS[:1]}, n=2, sampling=FAST, pool=deepscaler_pool)
    spec = ScriptedJudgeSpec(tokenizer)
    results = evaluate.finish(runs, config={}, judge=protocols.Judge(str(tokenizer_folder), "{question}"
                                                                    "{llm_response}{gold_answer}", spec))
    assert spec.opened == [] and results["benchmarks"]["aime24"]["judge_asked"] == 0


def test_a_named_grader_scores_in_its_own_pool_when_the_given_one_differs(tokenizer, deepscaler_pool):
    problems = {"aime24": [Problem("p", "Q", "42")]}
    graded = [evaluate.evaluate_benchmarks(ScriptedPolicy(tokenizer, ["The answer is 42."]), tokenizer, ["aime24"],
                                           n=1, sampling=FAST, pool=deepscaler_pool, problem_sets=problems,
                                           grader=grader)
              for grader in (None, "deepscaler", "math-verify-unboxed")]  # the training pool needs a box
    assert [r["benchmarks"]["aime24"]["avg@1"] for r in graded] == [0.0, 0.0, 1.0]
    assert [r["config"]["verifier_mode"] for r in graded] == ["deepscaler", "deepscaler", "unboxed"]


# --------------------------------------------------------------------------------------------------
# The tiny judge for real: in-training evaluation, and the CLI


@pytest.fixture(scope="module")
def tiny_judge():
    from tests.tiny_judge import prepare_tiny_judge

    return prepare_tiny_judge(log=lambda *_: None)


def test_in_training_evaluation_uses_eval_grader_and_eval_judge(tokenizer, tiny_judge, tmp_path):
    import pandas as pd
    import torch

    from justrl_min import options
    from tests.tiny_judge import PROMPT_FILE

    class Engine(ScriptedPolicy):
        @contextlib.contextmanager
        def generating(self):
            yield

    (tmp_path / "AIME24").mkdir()
    pd.DataFrame({"problem": ["What is 6*7?"], "answer": ["42"]}).to_parquet(tmp_path / "AIME24" / "test.parquet")
    cfg = load_recipe(None, ["eval.benchmarks=[aime24]", f"eval.data_dir={tmp_path}", "eval.n=2",
                             "eval.max_tokens=4", "eval.grader=deepscaler", f"eval.judge={tiny_judge}",
                             f"eval.judge_prompt={tiny_judge / PROMPT_FILE}", "rollout.engine=hf", "run.device=cpu",
                             "model.dtype=float32"])
    with VerifierPool(workers=1, timeout_s=10.0) as training_pool:  # symbolic: the eval grader gets its own
        flat = options.evaluate(cfg, Engine(tokenizer, ["\\boxed{42}", "\\boxed{1}"]), tokenizer, training_pool,
                                torch.device("cpu"))
    # The deepscaler grader accepts sample 0; the tiny judge says what it says about sample 1 (its
    # verdict is exercised here, not trusted).
    assert flat["eval/aime24/grader_avg@2"] == 0.5
    assert flat["eval/aime24/avg@2"] == 0.5 + flat["eval/aime24/judge_rescued"] / 2
    assert "eval/overall/avg" in flat


def test_cli_rejects_a_judge_for_the_val_protocol_before_loading_a_model(capsys):
    from justrl_min.eval import cli as eval_cli

    with pytest.raises(SystemExit) as e:
        eval_cli.parse_args(["--model", "no-such-model", "--protocol", "justrl-val", "--judge", "x"])
    assert e.value.code == 2 and "--judge conflicts with --protocol justrl-val" in capsys.readouterr().err


@needs_files
def test_cli_table_protocol_with_the_tiny_judge(tiny_judge, tmp_path, capsys):
    from justrl_min.eval import cli as eval_cli
    from tests.tiny_judge import PROMPT_FILE

    out = tmp_path / "out"
    code = eval_cli.main(["--model", "tiny", "--benchmarks", "amc23", "--engine", "hf",
                          "--data-dir", str(BENCHMARK_DIR),
                          "--n", "2", "--max-tokens", "4", "--max-problems", "1", "--workers", "1",
                          "--protocol", "justrl-table", "--judge", str(tiny_judge),
                          "--judge-prompt", str(tiny_judge / PROMPT_FILE), "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert {k: results["config"][k] for k in ("protocol", "grader", "verifier_mode", "judge", "max_tokens")} == {
        "protocol": "justrl-table", "grader": "deepscaler", "verifier_mode": "deepscaler", "judge": str(tiny_judge),
        "max_tokens": 4}
    m = results["benchmarks"]["amc23"]
    assert m["judge_asked"] == 2 - round(2 * m["grader_avg@2"])  # every rejected sample, and only those
    assert "judge rescued" in capsys.readouterr().out
