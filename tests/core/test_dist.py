"""Two gloo processes under torchrun on CPU: the same loss, gradients and AdamW step as one process on
the same global batch, a short 2-rank run that checkpoints and resumes, and a rank killed mid-step."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from justrl_min.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def torchrun(args, timeout=600):
    result = subprocess.run(TORCHRUN + args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout + result.stderr


@pytest.mark.parametrize("layout", ["packed", "shared_prompts",
                                    pytest.param("lora", marks=pytest.mark.skipif(
                                        importlib.util.find_spec("peft") is None, reason="model.lora needs peft"))])
def test_two_ranks_give_the_same_loss_and_gradients_as_one(tmp_path, layout):
    out = tmp_path / "eq.json"
    torchrun([str(ROOT / "tests/dist/grad_equivalence.py"), str(out), layout])
    r = json.loads(out.read_text())
    assert r["world_size"] == 2 and r["params"] > 0
    assert r["loss_split"] == pytest.approx(r["loss_whole"], abs=1e-12)
    # float64 throughout (reductions too): only summation order differs between the two layouts.
    assert r["max_grad_diff"] <= 1e-14
    # The fused AdamW kernel steps FSDP2's shards as the default implementation steps the whole model.
    assert r["adamw"] == "fused" and r["max_weight_moved"] > 1e-3
    assert r["max_weight_diff"] <= 1e-12


def test_two_rank_run_completes_and_resumes(warm_model, tmp_path):
    common = ["train.py", "recipes/tiny_cpu.yaml", f"run.output_dir={tmp_path}", "run.name=ddp",
              f"model.path={warm_model}",
              "train.prompts_per_step=8", "train.mini_batch_prompts=4", "rollout.n=4", "reward.workers=1",
              "log.curves_at_end=false", "checkpoint.every_steps=2", "data.tiny_problems=64"]
    torchrun(common + ["train.steps=2"])
    output = torchrun(common + ["train.steps=3"])
    assert "resumed from" in output and "at step 2" in output
    metrics = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    state = json.loads((tmp_path / "ddp" / "checkpoints" / "latest" / "trainer_state.json").read_text())
    assert state["step"] == 3
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints" / "latest").glob("rng_rank*.pt")) == \
        ["rng_rank0.pt", "rng_rank1.pt"]


@pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="model.lora needs peft")
def test_two_rank_lora_run_checkpoints_adapters_and_resumes_as_one_process(warm_model, tmp_path):
    """FSDP2 over a model whose base is frozen: the adapters train and the PEFT checkpoint (adapters
    and sharded optimizer state) resumes. Two ranks sample with their own seeds, so a one-process run
    samples other responses; the gradient identity is test_two_ranks_give_the_same_loss_and_gradients_as_one's."""
    common = ["recipes/tiny_cpu_lora.yaml", f"model.path={warm_model}", "train.prompts_per_step=8",
              "train.mini_batch_prompts=4", "rollout.n=4", "reward.workers=1", "log.curves_at_end=false",
              "log.tensorboard=false", "checkpoint.every_steps=2", "data.tiny_problems=64"]
    two = common + [f"run.output_dir={tmp_path}", "run.name=ddp"]
    torchrun(["train.py", *two, "train.steps=2"])
    assert "resumed from" in torchrun(["train.py", *two, "train.steps=3"])
    latest = tmp_path / "ddp" / "checkpoints" / "latest"
    assert (latest / "adapter_model.safetensors").is_file() and not (latest / "model.safetensors").exists()
    metrics = read_metrics(tmp_path / "ddp")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(m["train/grad_norm"] > 0 for m in metrics)


def test_a_torchrun_worker_exits_with_its_code_after_the_exit_handlers_and_a_flush():
    # stdout is a pipe here, so "finished" sits in Python's buffer until exit_worker flushes it.
    code = ("import atexit; from justrl_min import dist; atexit.register(print, 'exit handler'); "
            "print('finished', end=''); dist.exit_worker(3); print('not reached')")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    worker = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**env, "WORLD_SIZE": "2", "PYTHONPATH": str(ROOT)})
    assert (worker.returncode, worker.stdout) == (3, "finishedexit handler\n"), worker.stderr
    alone = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                           env={**env, "WORLD_SIZE": "1", "PYTHONPATH": str(ROOT)})
    assert (alone.returncode, alone.stdout) == (0, "finishednot reached\nexit handler\n"), alone.stderr


def test_streamed_full_tensors_match_the_full_state_dict(tmp_path):
    out = tmp_path / "stream.json"
    torchrun([str(ROOT / "tests/dist/stream_weights.py"), str(out)])
    r = json.loads(out.read_text())
    assert r["names_equal"] and r["max_diff"] == 0.0 and r["dtype"] == "torch.bfloat16"


def test_a_dead_rank_stops_the_other_fast_naming_it_and_the_run_resumes_exactly(warm_model, tmp_path):
    common = ["recipes/tiny_cpu.yaml", f"run.output_dir={tmp_path}", "run.name=dead", f"model.path={warm_model}",
              "train.prompts_per_step=8", "train.mini_batch_prompts=4", "rollout.n=4", "reward.workers=1",
              "log.curves_at_end=false", "log.tensorboard=false", "checkpoint.every_steps=2",
              "data.tiny_problems=64", "train.steps=4", "run.dist_timeout_s=5"]
    marker = tmp_path / "rank1_died"
    result = subprocess.run(TORCHRUN + [str(ROOT / "tests/dist/die_mid_step.py"), str(marker), *common], cwd=ROOT,
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "DIE_AT_STEP": "4"})
    exit_s = time.time() - marker.stat().st_mtime
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-4000:]
    # Rank 0 names rank 1 itself; torchrun's own summary names it too.
    assert "rank 0: " in output and "rank(s) 1 of 2 did not report" in output, output[-4000:]
    assert exit_s < 30, f"the surviving rank took {exit_s:.0f} s to stop"
    run_dir = tmp_path / "dead"
    before = {m["step"]: m for m in read_metrics(run_dir)}
    assert sorted(before) == [1, 2, 3]  # died inside step 4; the latest checkpoint is step 2

    torchrun(["train.py", *common])
    after = {m["step"]: m for m in read_metrics(run_dir)}
    assert sorted(after) == [1, 2, 3, 4]
    for key in ("train/reward_mean", "train/loss", "train/entropy", "train/grad_norm", "train/lr"):
        assert after[3][key] == pytest.approx(before[3][key], abs=1e-6), key  # step 3, replayed after resume


def test_two_ranks_hold_one_lock_and_resume_from_the_same_checked_checkpoint(warm_model, tmp_path):
    from tests.core.test_run_safety import HOLD, truncate

    common = ["recipes/tiny_cpu.yaml", f"run.output_dir={tmp_path}", "run.name=two", f"model.path={warm_model}",
              "train.prompts_per_step=8", "train.mini_batch_prompts=4", "rollout.n=4", "reward.workers=1",
              "log.curves_at_end=false", "log.tensorboard=false", "checkpoint.every_steps=2",
              "data.tiny_problems=64", "run.dist_timeout_s=30"]
    run_dir = tmp_path / "two"
    torchrun(["train.py", *common, "train.steps=4"])
    truncate(run_dir / "checkpoints/step_4/model.safetensors")
    out = torchrun(["train.py", *common, "train.steps=5"])
    # Rank 0 checked the checkpoints and said so once; both ranks took its decision.
    assert out.count("resume: skipped") == 1 and "model.safetensors has" in out and "(truncated)" in out, out[-4000:]
    assert f"resumed from {run_dir / 'checkpoints/step_2'} at step 2" in out
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3, 4, 5]

    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.time()
        second = subprocess.run(TORCHRUN + ["train.py", *common, "train.steps=6"], cwd=ROOT, capture_output=True,
                                text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        holder.kill()
        holder.wait()
    output = second.stdout + second.stderr
    assert second.returncode != 0 and f"is in use by pid {holder.pid}" in output, output[-4000:]
    # Each rank stops with rank 0's decision (torchrun may end the second before it prints).
    assert output.count("error: run directory") >= 1 and "Traceback" not in output.split("error: run directory")[0]
    assert time.time() - started < 120
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3, 4, 5]
