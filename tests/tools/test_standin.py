"""The trainer, the evaluator and the HF engine against the known traps of DeepSeek-R1-Distill's tokenizer.

With the stand-in (tests/standin_models.py): the real tokenizer, template and 151,936-row vocabulary.
Traps: BOS doubled (template plus add_bos_token); `<think>\\n` belongs to the prompt, not the response;
pad == EOS, so a mask built as `ids != pad_id` would drop the real EOS; a random model samples ids
of the 271-row gap that have no token; `data.max_prompt_length` must count real tokens. The rigged
model's next-token distribution is known (P_EOS on EOS, P_GAP over the gap), so EOS and gap ids
appear in every batch and their log-probs can be checked exactly.
"""

import json
import math
from pathlib import Path

import pytest
import torch

from justrl_min import trainer
from justrl_min.config import BOXED_SUFFIX, load_recipe
from justrl_min.data import build_prompt_ids, load_problems, tokenize_problems
from justrl_min.eval import evaluate
from justrl_min.model import MicroBatcher, TokenScorer, load_causal_lm
from justrl_min.reward import VerifierPool
from justrl_min.rollout import HFEngine, Sampling
from justrl_min.tracking import read_metrics
from tests.standin_models import EOS, GAP, P_EOS, P_GAP

ROOT = Path(__file__).resolve().parents[2]
DAPO_SAMPLE = ROOT / "tests/data/dapo_schema_sample.jsonl"
BOS, USER, ASSISTANT, THINK, NEWLINE = 151646, 151644, 151645, 151648, 198
GENERATION_PROMPT = [ASSISTANT, THINK, NEWLINE]
SAMPLING = Sampling(temperature=1.0, top_p=1.0, max_tokens=16, seed=3)


def assert_one_bos_and_open_think(prompt: list[int]) -> None:
    assert prompt[:2] == [BOS, USER] and prompt.count(BOS) == 1, prompt[:4]
    assert prompt[-3:] == GENERATION_PROMPT and prompt.count(THINK) == 1


@pytest.fixture(scope="module")
def prompts(standin_tokenizer):
    return tokenize_problems(load_problems(str(DAPO_SAMPLE)), standin_tokenizer, BOXED_SUFFIX, 1024)


@pytest.fixture(scope="module")
def rigged_rollouts(rigged_standin, standin_tokenizer, prompts):
    model = load_causal_lm(str(rigged_standin), dtype="float32", trainable=False)
    return HFEngine(model, standin_tokenizer, batch_size=16).generate(prompts.prompt_ids[:4], 4, SAMPLING)


def test_training_prompts_have_one_bos_end_in_think_and_lose_the_dapo_wrapper(prompts, standin_tokenizer):
    assert len(prompts.prompt_ids) == 8 and prompts.dropped_too_long == 0
    for ids in prompts.prompt_ids:
        assert_one_bos_and_open_think(ids)
        text = standin_tokenizer.decode(ids)
        assert "Answer:" not in text and text.endswith("within \\boxed{}.<｜Assistant｜><think>\n")


def test_max_prompt_length_counts_the_real_tokens_of_the_templated_prompt(standin_tokenizer):
    problems = load_problems(str(DAPO_SAMPLE))[:1]
    content = standin_tokenizer(problems[0].problem + BOXED_SUFFIX, add_special_tokens=False)["input_ids"]
    length = len(content) + 5  # BOS, <｜User｜> before; <｜Assistant｜>, <think>, "\n" after
    assert len(build_prompt_ids(standin_tokenizer, problems[0].problem, BOXED_SUFFIX)) == length
    assert tokenize_problems(problems * 2, standin_tokenizer, BOXED_SUFFIX, length).dropped_too_long == 0
    with pytest.raises(ValueError, match="max_prompt_length=" + str(length - 1)):
        tokenize_problems(problems, standin_tokenizer, BOXED_SUFFIX, length - 1)


def test_hf_engine_keeps_eos_as_the_last_response_token_and_samples_gap_ids(rigged_rollouts, prompts):
    out = rigged_rollouts
    assert out.prompt_ids == [p for p in prompts.prompt_ids[:4] for _ in range(4)]  # <think>\n stays in the prompt
    finished = [ids for ids, cut in zip(out.response_ids, out.truncated) if not cut]
    assert finished, "P_EOS = 0.15 over 16 tokens: ~93% of responses stop"
    for ids, cut in zip(out.response_ids, out.truncated):
        assert (ids[-1] == EOS) != cut and ids.count(EOS) == (0 if cut else 1)  # EOS once, last; pad after it cut
        assert ids[:1] != [THINK] and len(ids) <= SAMPLING.max_tokens
    assert any(t in GAP for ids in out.response_ids for t in ids)
    # The engine's own log-probs of EOS and of gap ids are the rigged ones (temperature 1).
    by_token = {t: lp for ids, lps in zip(out.response_ids, out.rollout_logprobs) for t, lp in zip(ids, lps)}
    assert by_token[EOS] == pytest.approx(math.log(P_EOS), abs=1e-4)
    gap_token = next(t for t in by_token if t in GAP)
    assert by_token[gap_token] == pytest.approx(math.log(P_GAP / len(GAP)), abs=1e-4)


def test_the_loss_mask_covers_eos_although_pad_is_eos(rigged_rollouts, rigged_standin, standin_tokenizer):
    assert standin_tokenizer.pad_token_id == EOS
    cfg = load_recipe(ROOT / "recipes/tiny_cpu.yaml", [f"model.path={rigged_standin}"])
    scorer = TokenScorer(load_causal_lm(str(rigged_standin), dtype="float32", trainable=False),
                         temperature=cfg.rollout.temperature, chunk_tokens=cfg.model.logprob_chunk_tokens)
    for packed in (False, True):
        microbatches = MicroBatcher(cfg.train.max_tokens_per_microbatch, packed, torch.device("cpu"),
                                    standin_tokenizer.pad_token_id)
        batch = trainer.prepare_batch(rigged_rollouts, microbatches, scorer)
        lengths = [len(r) for r in rigged_rollouts.response_ids]
        assert batch.mask.sum(1).tolist() == lengths
        for row, ids in enumerate(rigged_rollouts.response_ids):
            if ids[-1] == EOS:  # the EOS position is in the mask and scored as a target: log 0.15
                assert batch.mask[row, len(ids) - 1] == 1
                assert batch.old_logp[row, len(ids) - 1].item() == pytest.approx(math.log(P_EOS), abs=1e-4)
            assert batch.mask[row, len(ids):].sum() == 0


def test_gap_ids_decode_and_score_without_errors(rigged_rollouts, standin_tokenizer):
    texts = standin_tokenizer.batch_decode(rigged_rollouts.response_ids, skip_special_tokens=True)
    with VerifierPool(workers=1, timeout_s=10.0) as pool:
        scored = pool.score(texts + ["\\boxed{391}"], ["391"] * (len(texts) + 1))
    assert scored.errors == 0 and scored.timeouts == 0 and scored.scores[-1] == 1.0


def test_one_training_step_on_the_standin_with_the_deepseek_recipe(rigged_standin, tmp_path):
    run_dir = tmp_path / "run"
    cfg = load_recipe(ROOT / "recipes/deepseek_1p5b.yaml", [
        f"model.path={rigged_standin}", f"data.train={DAPO_SAMPLE}", "run.device=cpu", "rollout.engine=hf",
        "model.compute_dtype=float32", "model.gradient_checkpointing=false", "model.logprob_chunk_tokens=256",
        f"run.output_dir={run_dir.parent}", f"run.name={run_dir.name}", "train.steps=1", "train.prompts_per_step=2",
        "train.mini_batch_prompts=2", "rollout.n=4", "rollout.max_response_length=16",
        "train.max_tokens_per_microbatch=4096", "eval.every_steps=0", "reward.workers=1", "log.curves_at_end=false",
        "log.samples_per_step=4", "log.tensorboard=false", "checkpoint.save_optimizer=false"])
    trainer.train(cfg)

    [metrics] = read_metrics(run_dir)
    assert metrics["train/response_length_max"] <= 16 and math.isfinite(metrics["train/loss"])
    # Random text never boxes the gold: every reward is the recipe's -1, the advantages and gradient 0.
    assert metrics["train/reward_errors"] == 0 and metrics["train/reward_mean"] == -1.0
    samples = [json.loads(line) for line in (run_dir / "samples" / "step_1.jsonl").read_text().splitlines()]
    for s in samples:
        assert s["prompt"].startswith("<｜begin▁of▁sentence｜><｜User｜>") and s["prompt"].count("begin▁of") == 1
        assert s["prompt"].endswith("<｜Assistant｜><think>\n") and "Answer:" not in s["prompt"]
    # The checkpoint is a model folder that loads back with the same tokenizer, ids and stop token.
    from transformers import AutoTokenizer, GenerationConfig

    checkpoint = run_dir / "checkpoints" / "latest"
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"
    problem = load_problems(str(DAPO_SAMPLE))[0].problem
    assert build_prompt_ids(tokenizer, problem, BOXED_SUFFIX) == build_prompt_ids(
        AutoTokenizer.from_pretrained(rigged_standin), problem, BOXED_SUFFIX)
    generation = GenerationConfig.from_pretrained(checkpoint)
    assert (generation.eos_token_id, generation.bos_token_id) == (EOS, BOS)


class RecordingEngine:
    """Passes generate through and keeps the prompts it was given."""

    def __init__(self, engine):
        self.engine, self.prompts = engine, []

    def generate(self, prompt_token_ids, n, sampling):
        self.prompts += prompt_token_ids
        return self.engine.generate(prompt_token_ids, n, sampling)


def test_eval_prompts_have_one_bos_and_responses_with_gap_ids_are_scored(rigged_standin, standin_tokenizer):
    model = load_causal_lm(str(rigged_standin), dtype="float32", trainable=False)
    engine = RecordingEngine(HFEngine(model, standin_tokenizer, batch_size=16))
    problems = load_problems(str(DAPO_SAMPLE))[:3]
    with VerifierPool(workers=1, timeout_s=10.0) as pool:
        results = evaluate.evaluate_benchmarks(engine, standin_tokenizer, "aime24", n=2, sampling=SAMPLING,
                                               pool=pool, problem_sets={"aime24": problems})
    assert len(engine.prompts) == 3
    for ids in engine.prompts:
        assert_one_bos_and_open_think(ids)
        assert standin_tokenizer.decode(ids).endswith(evaluate.EVAL_SUFFIX + "<｜Assistant｜><think>\n")
    metrics = results["benchmarks"]["aime24"]
    assert metrics["samples"] == 6 and metrics["verifier_errors"] == 0
