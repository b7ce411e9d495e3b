"""model.lora: peft adapters on the policy. Only the adapters train; the KL reference is the base model
with the adapters off; checkpoints hold a PEFT folder and resume exactly; the engine gets merged
weights; export writes a plain Hugging Face folder with the trained model's logits."""

import json
import signal
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft", reason="model.lora needs peft: pip install 'justrl-min[lora]' (in the dev extra)")

from justrl_min import dist, trainer  # noqa: E402
from justrl_min.checkpoint import estimate_checkpoint_bytes  # noqa: E402
from justrl_min.config import ConfigError, LoraConfig, load_recipe  # noqa: E402
from justrl_min.model import (  # noqa: E402
    MicroBatcher,
    TokenScorer,
    build_microbatch,
    load_causal_lm,
    trainable_parameters,
    weights_for_engine,
)
from justrl_min.tools import export  # noqa: E402
from justrl_min.tracking import read_metrics  # noqa: E402
from justrl_min.variants import lora  # noqa: E402
from tests.core.test_trainer import overrides, run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes/tiny_cpu_lora.yaml"


def lora_policy(path, rank: int = 4, seed: int = 0, moved: bool = True):
    """The tiny model with fresh adapters; `moved`: B random instead of peft's zeros, as after training."""
    tuning = lora.LoraFineTuning(LoraConfig(rank=rank, alpha=2.0 * rank), seed)
    policy = tuning.load_policy(lambda p: load_causal_lm(p), str(path), None)
    if moved:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, parameter in policy.named_parameters():
                if "lora_B" in name:
                    parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    return tuning, policy


def some_microbatch():
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    responses = [[12, 13, 14], [15, 16, 17, 18, 19]]
    return build_microbatch(prompts, responses, [0, 1], packed=False)


# --------------------------------------------------------------------------------------------------
# Config


def test_lora_is_off_by_default_and_its_keys_are_checked():
    assert load_recipe(None).model.lora.rank == 0
    cfg = load_recipe(RECIPE, ["model.lora.target_modules=q_proj,v_proj"])
    assert cfg.model.lora.rank > 0 and cfg.model.lora.target_modules == ["q_proj", "v_proj"]
    for override, key in [("model.lora.rank=-1", "model.lora.rank"), ("model.lora.alpha=0", "model.lora.alpha"),
                          ("model.lora.dropout=1", "model.lora.dropout"),
                          ("model.lora.target_modules=all-linear,q_proj", "model.lora.target_modules")]:
        with pytest.raises(ConfigError, match=key):
            load_recipe(RECIPE, [override])
    with pytest.raises(ConfigError, match="model.lora.rnk"):
        load_recipe(None, ["model.lora.rnk=8"])


def test_unknown_target_modules_name_the_key(warm_model):
    tuning = lora.LoraFineTuning(LoraConfig(rank=4, target_modules=["no_such_proj"]), seed=0)
    with pytest.raises(ConfigError, match="model.lora.target_modules"):
        tuning.load_policy(lambda p: load_causal_lm(p), str(warm_model), None)


# --------------------------------------------------------------------------------------------------
# What trains, what is the reference


def test_only_the_adapters_are_trainable(warm_model):
    _, policy = lora_policy(warm_model, moved=False)
    trainable = [name for name, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    # all-linear: q, k, v, o, gate, up, down in each of the tiny model's 2 layers, an A and a B each.
    assert len(trainable) == 2 * 7 * 2
    assert len(trainable_parameters(policy)) == len(trainable)
    # The disk pre-check sizes a checkpoint of the adapters (fp32) and their AdamW moments only.
    adapters = sum(p.numel() for p in trainable_parameters(policy))
    assert estimate_checkpoint_bytes(policy, with_optimizer=True) == adapters * (4 + 8)


def test_fresh_adapters_are_seeded_and_leave_the_model_unchanged(warm_model):
    _, a = lora_policy(warm_model, seed=3, moved=False)
    _, b = lora_policy(warm_model, seed=3, moved=False)
    _, c = lora_policy(warm_model, seed=4, moved=False)
    state_a, state_b, state_c = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert any(not torch.equal(state_a[k], state_c[k]) for k in state_a if "lora_A" in k)
    base = load_causal_lm(str(warm_model))
    micro = some_microbatch()
    torch.testing.assert_close(TokenScorer(a)(micro), TokenScorer(base)(micro), rtol=0, atol=0)  # B = 0


def test_reference_is_the_base_model_with_the_adapters_off(warm_model):
    tuning, policy = lora_policy(warm_model)
    scorer = TokenScorer(policy)
    loads = []
    reference = tuning.reference(scorer, lambda: loads.append(1))
    assert not loads, "no second copy of the model is loaded"
    micro = some_microbatch()
    with torch.no_grad():
        base_logp, _ = TokenScorer(load_causal_lm(str(warm_model)))(micro)
        ref_logp, _ = reference(micro)
        policy_logp, _ = scorer(micro)
    assert torch.equal(ref_logp, base_logp)
    assert (policy_logp - base_logp).abs().max() > 1e-3, "the adapters moved the policy"
    with torch.no_grad():
        assert torch.equal(scorer(micro)[0], policy_logp), "the adapters are back on after the reference"


def test_kl_with_lora_loads_one_model_and_starts_at_zero(warm_model, tmp_path, monkeypatch):
    loads = []
    real = trainer.load_causal_lm
    monkeypatch.setattr(trainer, "load_causal_lm",
                        lambda *a, **k: loads.append(k.get("trainable", True)) or real(*a, **k))
    run_dir = tmp_path / "kl"
    trainer.train(load_recipe(RECIPE, overrides(warm_model, run_dir, "train.steps=1", "algorithm.kl_coef=0.1",
                                                "train.mini_batch_prompts=8")))
    assert loads == [True]
    # One update, made before the adapters moved (B = 0): the policy is the base model, so KL is 0.
    assert read_metrics(run_dir)[0]["train/kl"] == 0.0


# --------------------------------------------------------------------------------------------------
# The engine's weights


def test_merged_tensors_are_peft_merge_under_the_base_models_names(warm_model):
    tuning, policy = lora_policy(warm_model)
    merged = dict(tuning.engine_weights(TokenScorer(policy), dist.DistInfo(), torch.float32))
    base = load_causal_lm(str(warm_model))
    assert sorted(merged) == sorted(base.state_dict())  # (a bias may come before its merged weight)
    expected = tuning.peft_model.merge_and_unload().state_dict()
    changed = 0
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-7)
        changed += not torch.equal(tensor, base.state_dict()[name])
    assert changed == 2 * 7, "every adapted weight moved, nothing else"


def test_merged_weights_give_the_adapted_models_logprobs(warm_model):
    tuning, policy = lora_policy(warm_model)
    scorer = TokenScorer(policy)
    plain = load_causal_lm(str(warm_model))
    plain.load_state_dict(dict(tuning.engine_weights(scorer, dist.DistInfo(), torch.float32)))
    micro = some_microbatch()
    with torch.no_grad():
        torch.testing.assert_close(TokenScorer(plain)(micro), scorer(micro), rtol=0, atol=1e-5)


def test_the_stream_holds_one_layer_at_a_time(warm_model):
    """merged_tensors yields each merged weight as soon as its layer's last tensor has arrived."""
    tuning, policy = lora_policy(warm_model)
    held, seen = [], 0

    def counted():
        nonlocal seen
        for item in weights_for_engine(TokenScorer(policy), dist.DistInfo(), torch.float32):
            seen += 1
            yield item

    for _ in lora.merged_tensors(counted(), tuning.scalings()):
        held.append(seen)
    # Each adapted layer sends base weight, bias (q/k/v), A, B: at most 4 tensors in before one comes out.
    assert max(b - a for a, b in zip([0] + held, held)) <= 4


# --------------------------------------------------------------------------------------------------
# Training, checkpoints, resume, export


def test_lora_run_trains_only_adapters_and_checkpoints_a_peft_folder(warm_model, tmp_path):
    run_dir = tmp_path / "lora"
    trainer.train(load_recipe(RECIPE, overrides(warm_model, run_dir, "checkpoint.every_steps=2")))
    latest = run_dir / "checkpoints" / "latest"
    assert lora.is_adapter_folder(latest) and not (latest / "model.safetensors").exists()
    assert lora.adapter_base_path(latest) == str(warm_model)
    metrics = read_metrics(run_dir)
    assert any(m["train/grad_norm"] > 0 for m in metrics)
    # The HF engine samples from the trainer's own module: the agreement metric is the identity's.
    assert all(m["train/rollout_logp_diff_max"] < 1e-4 for m in metrics)
    from safetensors.torch import load_file

    adapters = load_file(latest / "adapter_model.safetensors")
    assert adapters and all("lora_A" in k or "lora_B" in k for k in adapters)
    assert any(v.abs().max() > 0 for k, v in adapters.items() if "lora_B" in k), "the adapters trained"


def test_lora_resume_after_sigkill_replays_the_same_run(warm_model, tmp_path):
    args = ["train.steps=6", "checkpoint.every_steps=3", "log.tensorboard=false"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = run_cli(overrides(warm_model, straight, *args), recipe=RECIPE)
    assert proc.wait(timeout=600) == 0, proc.stdout.read()
    proc = run_cli(overrides(warm_model, killed, *args), recipe=RECIPE)
    deadline = time.monotonic() + 600
    while not (killed / "checkpoints" / "step_3" / "trainer_state.json").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc = run_cli(overrides(warm_model, killed, *args), recipe=RECIPE)
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0 and "resumed from" in output, output
    a, b = read_metrics(straight), read_metrics(killed)
    assert [m["step"] for m in b] == [1, 2, 3, 4, 5, 6]
    for m_a, m_b in zip(a[3:], b[3:]):
        for key in (k for k in m_a if k.startswith("train/")):
            assert m_a[key] == m_b[key], (m_a["step"], key)


def test_export_writes_a_plain_folder_with_the_trained_models_logits(warm_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "lora"
    trainer.train(load_recipe(RECIPE, overrides(warm_model, run_dir, "train.steps=2")))
    out = tmp_path / "merged"
    assert export.main([str(run_dir), "--out", str(out)]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert not lora.is_adapter_folder(out)
    exported = AutoModelForCausalLM.from_pretrained(out)
    trained = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(warm_model),
                                        str(run_dir / "checkpoints" / "latest"))
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    with torch.no_grad():
        got, want = exported(ids).logits, trained(ids).logits
    assert (got - want).abs().max().item() < 1e-5
    assert (want - AutoModelForCausalLM.from_pretrained(warm_model)(ids).logits).abs().max() > 1e-4


def test_export_of_a_full_weight_checkpoint_copies_the_model(warm_model, tmp_path):
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "full"
    trainer.train(load_recipe(ROOT / "recipes/tiny_cpu.yaml", overrides(warm_model, run_dir, "train.steps=1")))
    out = tmp_path / "plain"
    export.export(run_dir / "checkpoints" / "step_1", out, dtype="bfloat16")
    exported = AutoModelForCausalLM.from_pretrained(out)
    trained = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoints" / "latest")
    assert exported.dtype == torch.bfloat16
    for (name, p), q in zip(trained.named_parameters(), exported.parameters()):
        assert torch.equal(p.to(torch.bfloat16), q), name
    assert json.loads((out / "config.json").read_text())["use_cache"] is True


def test_export_names_what_it_cannot_read(tmp_path, capsys):
    assert export.main([str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "neither a checkpoint folder" in capsys.readouterr().err


def test_microbatcher_scores_through_the_reference(warm_model):
    """prepare_batch's reference pass (MicroBatcher.score) takes the adapters-off callable as a model."""
    tuning, policy = lora_policy(warm_model)
    reference = tuning.reference(TokenScorer(policy), lambda: None)
    out = torch.zeros(2, 5)
    micro = some_microbatch()
    MicroBatcher(4096, False, torch.device("cpu")).score(reference, [[5, 6, 7, 8], [9, 10, 11]],
                                                         [[12, 13, 14], [15, 16, 17, 18, 19]], [0, 1], out)
    with torch.no_grad():
        base, _ = TokenScorer(load_causal_lm(str(warm_model)))(micro)
    assert torch.equal(out[0, :3], base[:3]) and torch.equal(out[1], base[3:])
