"""VLLMEngine at the real vocabulary: the DeepSeek-R1-Distill stand-in on vLLM's CPU build.

One engine start (~40 s) on the rigged narrow stand-in (tests/standin_models.py): 151,936 logit rows
of which the last 271 have no token, pad == EOS, and a known next-token distribution that samples
EOS and gap ids in every batch. Checks that vLLM neither crashes on gap ids nor drops the EOS, that
its log-probs are the rigged ones, and that the trainer's full-vocabulary weights reload into it.
Run by `make test-vllm`; skipped where vLLM is not installed.
"""

import math
from pathlib import Path

import pytest
import torch

vllm = pytest.importorskip("vllm")

from vllm.platforms import current_platform  # noqa: E402

from justrl_min import dist, model, trainer  # noqa: E402
from justrl_min.config import BOXED_SUFFIX, load_recipe  # noqa: E402
from justrl_min.data import load_problems, tokenize_problems  # noqa: E402
from justrl_min.model import MicroBatcher, TokenScorer, load_causal_lm  # noqa: E402
from justrl_min.reward import VerifierPool  # noqa: E402
from justrl_min.rollout import Sampling  # noqa: E402
from justrl_min.variants.vllm_engine import VLLMEngine, VLLMSettings  # noqa: E402
from tests.standin_models import EOS, GAP, P_EOS, P_GAP, TOKENS  # noqa: E402

if not (current_platform.is_cpu() or torch.cuda.is_available()):
    pytest.skip("the installed vLLM is a GPU build and no GPU is visible", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
SAMPLING = Sampling(temperature=1.0, top_p=1.0, max_tokens=16, seed=11)


@pytest.fixture(scope="module")
def engine(rigged_standin):
    engine = VLLMEngine(str(rigged_standin), VLLMSettings(dtype="float32", max_model_len=1024 + 16,
                                                          enforce_eager=True, enable_sleep_mode=False,
                                                          cpu_kv_cache_gib=0.25), log=lambda _: None)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def prompts(standin_tokenizer):
    problems = load_problems(str(ROOT / "tests/data/dapo_schema_sample.jsonl"))
    return tokenize_problems(problems, standin_tokenizer, BOXED_SUFFIX, 1024).prompt_ids[:4]


def test_vllm_reads_the_standin_tokenizer_as_qwen2(engine):
    tokenizer = engine.llm.get_tokenizer()
    assert len(tokenizer) == TOKENS and tokenizer.eos_token_id == tokenizer.pad_token_id == EOS
    assert tokenizer("Hello, world!", add_special_tokens=False)["input_ids"] == [9707, 11, 1879, 0]


def test_vllm_samples_gap_ids_keeps_eos_and_reloads_full_vocabulary_weights(engine, prompts, rigged_standin,
                                                                            standin_tokenizer):
    out = engine.generate(prompts, 4, SAMPLING)
    assert len(out) == 16 and any(not cut for cut in out.truncated)
    for ids, cut in zip(out.response_ids, out.truncated):
        assert (ids[-1] == EOS) != cut and ids.count(EOS) == (0 if cut else 1)
    assert any(t in GAP for ids in out.response_ids for t in ids)
    by_token = {t: lp for ids, lps in zip(out.response_ids, out.rollout_logprobs) for t, lp in zip(ids, lps)}
    assert by_token[EOS] == pytest.approx(math.log(P_EOS), abs=1e-4)
    assert by_token[next(t for t in by_token if t in GAP)] == pytest.approx(math.log(P_GAP / len(GAP)), abs=1e-4)

    with_gap_id = prompts[0][:-3] + [GAP[0]] + prompts[0][-3:]  # vLLM bounds prompt ids by the model's rows
    assert len(engine.generate([with_gap_id], 2, SAMPLING)) == 2

    texts = standin_tokenizer.batch_decode(out.response_ids, skip_special_tokens=True)
    with VerifierPool(workers=1, timeout_s=10.0) as pool:
        scored = pool.score(texts, ["391"] * len(texts))
    assert scored.errors == 0 and scored.timeouts == 0

    # The trainer's weights (151,936-row embedding and head) in, then vLLM and the trainer agree.
    cfg = load_recipe(ROOT / "recipes/tiny_cpu.yaml", [f"model.path={rigged_standin}", "rollout.engine=vllm"])
    scorer = TokenScorer(load_causal_lm(str(rigged_standin), dtype="float32", trainable=False),
                         temperature=cfg.rollout.temperature, chunk_tokens=cfg.model.logprob_chunk_tokens)
    engine.load_weights(model.weights_for_engine(scorer, dist.DistInfo(), torch.float32))
    again = engine.generate(prompts, 4, SAMPLING)
    assert again.response_ids == out.response_ids  # same weights, same seed
    batch = trainer.prepare_batch(again, MicroBatcher(cfg.train.max_tokens_per_microbatch, False, torch.device("cpu"),
                                                      EOS), scorer)
    gap = (batch.old_logp - batch.rollout_logp).abs()
    assert torch.where(batch.mask.bool(), gap, torch.zeros_like(gap)).max().item() < 1e-4
