"""The whole loop on CPU with the tiny model: it trains, logs, checkpoints and resumes exactly."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import torch

from justrl_min import algo, trainer
from justrl_min.config import ConfigError, load_recipe
from justrl_min.reward import VerifierPool, compute_score
from justrl_min.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[2]
STEP_METRICS = [
    "train/reward_mean", "train/accuracy", "train/entropy", "train/response_length_mean",
    "train/response_length_max", "train/truncated_frac", "train/clip_frac", "train/grad_norm", "train/lr",
    "train/solve_none_frac", "train/solve_all_frac", "time/rollout_s", "time/reward_s", "time/old_logp_s",
    "time/update_s", "time/sync_s", "time/step_s", "throughput/tokens_per_s", "train/reward_timeouts",
    "train/reward_errors",
    "train/skipped_steps", "train/loss", "train/rollout_logp_diff_mean", "train/rollout_logp_diff_max",
]


def overrides(model: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f"model.path={model}", f"run.output_dir={run_dir.parent}", f"run.name={run_dir.name}",
            "train.prompts_per_step=8", "train.mini_batch_prompts=4", "rollout.n=4", "train.steps=3",
            "reward.workers=1", "log.curves_at_end=false", "data.tiny_problems=64", *extra]


def run_cli(args: list[str], recipe: Path = ROOT / "recipes/tiny_cpu.yaml", **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), str(recipe), *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def test_train_end_to_end(warm_model, tmp_path):
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "e2e"
    cfg = load_recipe(ROOT / "recipes/tiny_cpu.yaml", overrides(warm_model, run_dir, "checkpoint.every_steps=2"))
    trainer.train(cfg)

    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        missing = [k for k in STEP_METRICS if k not in m]
        assert not missing, missing
        assert math.isfinite(m["train/loss"]) and math.isfinite(m["train/grad_norm"])
    assert any(m["train/grad_norm"] > 0 for m in metrics), "no step had a learning signal"
    assert metrics[0]["train/lr"] == pytest.approx(5e-4 / 4)  # warm-up: (1 update) / 4 steps

    before = AutoModelForCausalLM.from_pretrained(warm_model)
    after = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoints" / "latest")
    changed = [n for (n, p), q in zip(before.named_parameters(), after.parameters()) if not torch.equal(p, q)]
    assert changed, "training did not change any parameter"
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_2", "step_3"]
    assert (run_dir / "config.yaml").is_file() and list((run_dir / "tb").glob("events.*"))
    samples = [json.loads(line) for line in (run_dir / "samples/step_1.jsonl").read_text().splitlines()]
    assert samples and {"prompt", "response", "gold", "reward"} <= set(samples[0])
    assert load_recipe(run_dir / "config.yaml").model.path == str(warm_model)


def test_reference_model_only_with_kl(warm_model, tmp_path, monkeypatch):
    loads = []
    real = trainer.load_causal_lm
    monkeypatch.setattr(trainer, "load_causal_lm",
                        lambda *a, **k: loads.append(k.get("trainable", True)) or real(*a, **k))
    run_dir = tmp_path / "kl"
    trainer.train(load_recipe(ROOT / "recipes/tiny_cpu.yaml",
                              overrides(warm_model, run_dir, "train.steps=1", "algorithm.kl_coef=0.1",
                                                        "train.mini_batch_prompts=8")))
    assert loads == [True, False]
    # One update, made before the policy moved: the policy equals the reference, so KL is 0.
    assert read_metrics(run_dir)[0]["train/kl"] == pytest.approx(0.0, abs=1e-6)
    loads.clear()
    trainer.train(load_recipe(ROOT / "recipes/tiny_cpu.yaml",
                              overrides(warm_model, tmp_path / "nokl", "train.steps=1")))
    assert loads == [True]
    assert "train/kl" not in read_metrics(tmp_path / "nokl")[0]


def test_nan_loss_skips_the_step_and_training_goes_on(warm_model, tmp_path, monkeypatch):
    real = algo.ppo_clip_loss
    calls = {"n": 0}

    def nan_on_first_minibatch(*args, **kwargs):
        calls["n"] += 1
        loss, metrics = real(*args, **kwargs)
        return (loss * float("nan") if calls["n"] == 1 else loss), metrics

    monkeypatch.setattr(algo, "ppo_clip_loss", nan_on_first_minibatch)
    run_dir = tmp_path / "nan"
    trainer.train(load_recipe(ROOT / "recipes/tiny_cpu.yaml", overrides(warm_model, run_dir)))
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert [m["train/skipped_steps"] for m in metrics] == [1, 1, 1]
    assert (run_dir / "skipped" / "step_1.json").is_file()


def test_consecutive_nonfinite_steps_stop_with_a_message(warm_model, tmp_path, monkeypatch):
    real = algo.ppo_clip_loss
    monkeypatch.setattr(algo, "ppo_clip_loss", lambda *a, **k: (lambda r: (r[0] * float("nan"), r[1]))(real(*a, **k)))
    # Two optimizer steps per training step: the third consecutive skip falls in step 2, checked at its end.
    with pytest.raises(trainer.TrainingAborted, match="4 consecutive optimizer steps had a non-finite loss"):
        trainer.train(load_recipe(ROOT / "recipes/tiny_cpu.yaml",
                                  overrides(warm_model, tmp_path / "nan2", "train.max_skipped_steps=3")))
    assert len(read_metrics(tmp_path / "nan2")) == 1


def test_resume_after_sigkill_replays_the_same_run(warm_model, tmp_path):
    straight = tmp_path / "straight"
    args = ["train.steps=6", "checkpoint.every_steps=3"]
    proc = run_cli(overrides(warm_model, straight, *args))
    assert proc.wait(timeout=600) == 0, proc.stdout.read()

    killed = tmp_path / "killed"
    proc = run_cli(overrides(warm_model, killed, *args))
    deadline = time.monotonic() + 600
    while not (killed / "checkpoints" / "step_3" / "trainer_state.json").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc = run_cli(overrides(warm_model, killed, *args))
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output
    assert "resumed from" in output

    a, b = read_metrics(straight), read_metrics(killed)
    assert [m["step"] for m in b] == [1, 2, 3, 4, 5, 6]
    for m_a, m_b in zip(a[3:], b[3:]):
        for key in ("train/reward_mean", "train/loss", "train/entropy", "train/grad_norm",
                    "train/response_length_mean", "train/lr"):
            assert m_a[key] == pytest.approx(m_b[key], abs=1e-6), (m_a["step"], key)


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(warm_model, tmp_path):
    run_dir = tmp_path / "term"
    proc = run_cli(overrides(warm_model, run_dir, "train.steps=50", "checkpoint.every_steps=100"))
    deadline = time.monotonic() + 300
    while not (run_dir / "metrics.jsonl").is_file() or not (run_dir / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output
    assert "Resume with: python train.py" in output
    state = json.loads((run_dir / "checkpoints" / "latest" / "trainer_state.json").read_text())
    assert 1 <= state["step"] < 50


def test_resume_false_refuses_a_used_run_dir(warm_model, tmp_path):
    run_dir = tmp_path / "used"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match="is not empty and run.resume=false"):
        trainer.train(load_recipe(ROOT / "recipes/tiny_cpu.yaml", overrides(warm_model, run_dir, "run.resume=false")))
    with pytest.raises(ConfigError, match="run.resume=true but .* has no complete checkpoint"):
        trainer.train(load_recipe(ROOT / "recipes/tiny_cpu.yaml", overrides(warm_model, run_dir, "run.resume=true")))


def test_gpu_recipe_on_cpu_stops_with_the_fix(tmp_path):
    recipe = ROOT / "recipes" / "deepseek_1p5b.yaml"
    if not recipe.is_file():
        pytest.skip("GPU recipe not present")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), str(recipe), f"run.output_dir={tmp_path}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2
    assert "run.device=cuda needs a CUDA GPU" in result.stderr and "recipes/tiny_cpu.yaml" in result.stderr
    assert "Traceback" not in result.stderr


def test_bf16_compute_keeps_fp32_master_weights(warm_model, tmp_path):
    from safetensors.torch import load_file

    run_dir = tmp_path / "bf16"
    trainer.train(load_recipe(ROOT / "recipes/tiny_cpu.yaml",
                              overrides(warm_model, run_dir, "train.steps=1", "model.compute_dtype=bfloat16")))
    metrics = read_metrics(run_dir)[0]
    assert math.isfinite(metrics["train/loss"]) and metrics["train/grad_norm"] > 0
    weights = load_file(run_dir / "checkpoints" / "latest" / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}


def flaky_verifier(response: str, gold: str) -> float:
    """Runs in the verifier workers: golds that are multiples of 5 hang past the deadline, golds
    that are 1 mod 5 make the verifier raise; everything else is scored for real."""
    if int(gold) % 5 == 0:
        time.sleep(60)
    if int(gold) % 5 == 1:
        raise ValueError("injected verifier failure")
    return compute_score(response, gold, timeout_s=None)


def test_reward_metrics_count_timeouts_and_errors(warm_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(trainer, "VerifierPool", partial(VerifierPool, score_fn=flaky_verifier))
    run_dir = tmp_path / "flaky"
    trainer.train(load_recipe(ROOT / "recipes/tiny_cpu.yaml",
                              overrides(warm_model, run_dir, "train.steps=1", "reward.timeout_s=0.5")))
    [metrics] = read_metrics(run_dir)
    assert metrics["train/reward_timeouts"] > 0 and metrics["train/reward_errors"] > 0
    # Whole groups share a gold, so both counts are multiples of n = 4; the run went on to log and save.
    assert metrics["train/reward_timeouts"] % 4 == 0 and metrics["train/reward_errors"] % 4 == 0
    assert (run_dir / "checkpoints" / "latest").exists()
    assert "verifier:" in capsys.readouterr().out


SHARED = ROOT.parent / "shared" / "benchmarks"


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared benchmark files not present")
def test_in_training_eval_logs_benchmark_metrics_and_curves(warm_model, tmp_path):
    run_dir = tmp_path / "evalrun"
    trainer.train(load_recipe(ROOT / "recipes/tiny_cpu.yaml", overrides(
        warm_model, run_dir, "train.steps=2", "eval.every_steps=2", "eval.benchmarks=amc23",
        f"eval.data_dir={SHARED}", "eval.n=2", "eval.max_tokens=4", "log.curves_at_end=true")))
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == [1, 2]  # eval metrics join their step's row
    eval_rows = [m for m in metrics if "eval/amc23/avg@2" in m]
    assert [m["step"] for m in eval_rows] == [2] and "train/reward_mean" in eval_rows[0]
    assert {"eval/amc23/pass@1", "eval/amc23/pass@2"} <= set(eval_rows[0])
    png = run_dir / "curves.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
