"""critic.shared_backbone: a value head on the policy's backbone, trained by one backward of policy
loss + value_coef * value loss; checkpointed with the policy and resumed exactly."""

from pathlib import Path

import pytest
import torch

from justrl_min import algo, trainer
from justrl_min.checkpoint import TRAINED_HEADS_FILE
from justrl_min.config import ConfigError, load_recipe
from justrl_min.dist import DistInfo
from justrl_min.model import MicroBatcher, load_causal_lm, unflatten, weights_for_engine
from justrl_min.tracking import read_metrics
from justrl_min.variants.critic import ValueTokenScorer
from tests import tiny_models

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes/ppo_shared_tiny.yaml"
SHARED_METRICS = ["train/value_loss", "train/value_clip_frac", "train/explained_variance", "train/value_mean",
                  "train/return_mean", "train/kl", "train/kl_coef"]


def small(model: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f"model.path={model}", f"run.output_dir={run_dir.parent}", f"run.name={run_dir.name}",
            "train.prompts_per_step=8", "train.mini_batch_prompts=4", "rollout.n=4", "reward.workers=1",
            "log.curves_at_end=false", "data.tiny_problems=64", "log.tensorboard=false", *extra]


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    grads = {name: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
             for name, p in module.named_parameters()}
    module.zero_grad(set_to_none=True)
    return grads


def test_one_backward_gives_the_sum_of_the_two_losses_gradients(tmp_path):
    torch.manual_seed(0)
    folder = tiny_models.save_random_model(tmp_path / "m", hidden=32, layers=1)
    # float64, though Qwen2's RMSNorm computes in float32 whatever the dtype: gradients through the
    # decoder layers agree to float32 rounding (~1e-7 of their size), the final norm and head to 1e-15.
    scorer = ValueTokenScorer(load_causal_lm(str(folder), dtype="float64"), None, "never", 1.0, 4)
    torch.nn.init.normal_(scorer.value_head.weight)  # a zero head would pass no value gradient to the backbone
    prompts, responses = [[1, 2, 3], [1, 2, 3]], [[4, 5], [6, 7, 8]]
    mask = unflatten(torch.ones(5, dtype=torch.float64), [2, 3])                      # (2, 3)
    shape, f64 = mask.shape, dict(dtype=torch.float64)
    batch = trainer.Batch(prompts, responses, mask, old_logp=-torch.rand(shape, **f64),
                          entropy=torch.zeros(shape, **f64), advantages=torch.randn(shape, **f64),
                          values=torch.randn(shape, **f64), returns=torch.randn(shape, **f64))
    # Budget 5 tokens: each sequence is a micro-batch of its own, so the sum also crosses micro-batches.
    microbatches = MicroBatcher(5, packed=False, device=torch.device("cpu"))
    value_coef, value_clip, clip = 0.3, 0.2, dict(clip_low=0.2, clip_high=0.28, dual_clip=None)

    def update(coef: float) -> trainer.PolicyUpdate:
        objective = algo.policy_objective("ppo_clip", **clip, value_coef=coef, value_clip=value_clip)
        return trainer.PolicyUpdate(scorer, None, None, objective, microbatches, rows_per_minibatch=2)

    update(value_coef).minibatch_backward(batch, [0, 1], batch.old_logp.clone(), batch.entropy.clone())
    together = _grads(scorer)
    update(0.0).minibatch_backward(batch, [0, 1], batch.old_logp.clone(), batch.entropy.clone())
    policy_only = _grads(scorer)
    # The value loss alone, token-summed over the whole mini-batch and divided by its 5 tokens.
    for idx, micro in microbatches(prompts, responses, [0, 1]):
        values = unflatten(scorer(micro)[2], micro.response_lengths)
        width = values.shape[1]
        loss, _ = algo.value_loss(values, batch.values[idx, :width], batch.returns[idx, :width],
                                  mask[idx, :width], value_clip, token_normalizer=5.0)
        loss.backward()
    value_only = _grads(scorer)

    assert value_only["causal_lm.model.layers.0.mlp.up_proj.weight"].abs().sum() > 0  # the backbone is shared
    assert policy_only["value_head.weight"].abs().sum() == 0                             # the head is the value's
    for name in together:
        torch.testing.assert_close(together[name], policy_only[name] + value_coef * value_only[name], rtol=0,
                                   atol=1e-6 * together[name].abs().max().item(), msg=name)


def test_shared_head_checkpoints_and_resumes_exactly(warm_model, tmp_path):
    from safetensors.torch import load_file

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = ["checkpoint.every_steps=2", "algorithm.adaptive_kl_target=0.001"]  # beta's state must survive too
    trainer.train(load_recipe(RECIPE, small(warm_model, straight, "train.steps=3", *args)))
    trainer.train(load_recipe(RECIPE, small(warm_model, resumed, "train.steps=2", *args)))
    trainer.train(load_recipe(RECIPE, small(warm_model, resumed, "train.steps=3", *args)))

    a, b = read_metrics(straight), read_metrics(resumed)
    assert [m["step"] for m in b] == [1, 2, 3]
    assert a[2]["train/kl_coef"] != a[0]["train/kl_coef"]
    for key in ["train/reward_mean", "train/loss", "train/grad_norm", *SHARED_METRICS]:
        assert a[2][key] == pytest.approx(b[2][key], abs=1e-6), key
    assert "train/critic_grad_norm" not in a[2]  # one optimizer: train/grad_norm is the whole gradient's
    latest_a, latest_b = straight / "checkpoints/latest", resumed / "checkpoints/latest"
    heads_a, heads_b = load_file(latest_a / TRAINED_HEADS_FILE), load_file(latest_b / TRAINED_HEADS_FILE)
    assert set(heads_a) == {"value_head.weight", "value_head.bias"} and heads_a["value_head.weight"].abs().sum() > 0
    for key in heads_a:
        assert torch.equal(heads_a[key], heads_b[key]), key
    policy_a, policy_b = load_file(latest_a / "model.safetensors"), load_file(latest_b / "model.safetensors")
    assert not any("value_head" in key for key in policy_a)  # `latest` stays a plain Hugging Face folder
    for key in policy_a:
        assert torch.equal(policy_a[key], policy_b[key]), key
    assert {p.name for p in (latest_a / "critic").iterdir()} == {"state.json"}
    # A separate critic cannot resume from a shared head, nor the other way round.
    with pytest.raises(ConfigError, match="has no model.safetensors .*critic.shared_backbone"):
        trainer.train(load_recipe(ROOT / "recipes/ppo_critic_tiny.yaml", small(warm_model, straight, "train.steps=4")))
    separate = tmp_path / "separate"
    trainer.train(load_recipe(ROOT / "recipes/ppo_critic_tiny.yaml", small(warm_model, separate, "train.steps=1")))
    with pytest.raises(ConfigError, match=f"has no {TRAINED_HEADS_FILE}"):
        trainer.train(load_recipe(RECIPE, small(warm_model, separate, "train.steps=2")))


def test_the_engine_gets_the_policy_without_the_head(tmp_path):
    folder = tiny_models.save_random_model(tmp_path / "m", hidden=32, layers=1)
    scorer = ValueTokenScorer(load_causal_lm(str(folder)))
    names = [name for name, _ in weights_for_engine(scorer, DistInfo(), torch.float32)]
    assert "lm_head.weight" in names or "model.embed_tokens.weight" in names
    assert not any("value_head" in name for name in names)


def test_shared_backbone_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="critic.shared_backbone: needs algorithm.advantage=gae"):
        load_recipe(None, ["critic.shared_backbone=true"])
    with pytest.raises(ConfigError, match="critic.shared_backbone: .*critic.warmup_steps 0"):
        load_recipe(RECIPE, ["critic.warmup_steps=2"])
    with pytest.raises(ConfigError, match="critic.shared_backbone: .*critic.path must be empty"):
        load_recipe(RECIPE, ["critic.path=tiny"])
    with pytest.raises(ConfigError, match="critic.value_coef: must be > 0"):
        load_recipe(RECIPE, ["critic.value_coef=0"])


def test_two_rank_shared_head_run_checkpoints_and_resumes(warm_model, tmp_path):
    import math
    import os
    import subprocess
    import sys

    def torchrun(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                 "2", "train.py", str(RECIPE), *small(warm_model, tmp_path / "ddp"),
                                 "checkpoint.every_steps=2", *args], cwd=ROOT, capture_output=True, text=True,
                                timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        return result.stdout + result.stderr

    torchrun("train.steps=2")
    assert "resumed from" in torchrun("train.steps=3")
    metrics = read_metrics(tmp_path / "ddp")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        assert all(math.isfinite(m[key]) for key in SHARED_METRICS), m
    latest = tmp_path / "ddp/checkpoints/latest"
    assert (latest / TRAINED_HEADS_FILE).is_file() and (latest / "critic/state.json").is_file()
