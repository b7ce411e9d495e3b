"""The estimator's calibration: model FLOPs by hand, the measured figures replacing the assumed ones,
and a real calibration of a tiny model through the trainer's own update."""

import dataclasses

import pytest
import tiny_models

from justrl_min.config import load_recipe
from justrl_min.model import load_causal_lm
from justrl_min.tools.calibrate import Calibration, calibrate, model_flops, synthetic_rollouts
from justrl_min.tools.estimate import Hardware, ModelShape, Workload, estimate, main

# A hidden-32, one-layer tiny Qwen2 (4 heads of 8, 2 KV heads, MLP 128): q 32*32, k and v 32*16 each,
# o 32*32, gate/up/down 3*32*128 -> 15,360 matmul weights; the LM head (tied) 320 x 32 = 10,240.
DECODER, HEAD = 15_360, 10_240


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return tiny_models.save_random_model(tmp_path_factory.mktemp("calibrate") / "m", hidden=32, layers=1)


def test_model_flops_by_hand(tiny_folder):
    model = load_causal_lm(str(tiny_folder), dtype="float32")
    rollouts = synthetic_rollouts(2, 3, 10, 4, 300, spread=0.0)   # 2 prompts of 10 tokens, 3 responses of 4 each
    rows = list(range(6))
    every_prompt = 6 * 10 + 6 * 4
    assert model_flops(model, rollouts, rows, 1, shared_prompts=False) == 2 * (DECODER * every_prompt + HEAD * 24)
    distinct_prompts = 2 * 10 + 6 * 4
    assert model_flops(model, rollouts, rows, 3, shared_prompts=True) == 6 * (DECODER * distinct_prompts + HEAD * 24)
    assert model_flops(model, rollouts, [0, 3], 1, shared_prompts=True) == 2 * (DECODER * (20 + 8) + HEAD * 8)


def test_synthetic_groups_share_one_prompt_list():
    r = synthetic_rollouts(3, 4, 20, 5, 100)
    assert len(r) == 12 and all(len(ids) == 5 for ids in r.response_ids)
    assert all(r.prompt_ids[4 * g + k] is r.prompt_ids[4 * g] for g in range(3) for k in range(4))
    assert [len(r.prompt_ids[4 * g]) for g in range(3)] == [15, 20, 25]   # +-25% spread, ragged micro-batches


def _paper_like(**train) -> object:
    return load_recipe("recipes/deepseek_1p5b.yaml", [f"train.{k}={v}" for k, v in train.items()])


def test_measured_times_replace_the_assumed_utilisation():
    cfg = _paper_like(prompts_per_step=64, mini_batch_prompts=16)        # 4 mini-batches of 16 prompts x 8
    shape = ModelShape(hidden=8, intermediate=16, layers=2, heads=2, kv_heads=1, head_dim=4, vocab=10,
                       tied_embeddings=False)
    hw = Hardware(ranks=2, mem_gib=80, tflops=100.0, bandwidth_tbs=2.0)
    work = Workload(prompt_tokens=100, response_tokens=1000, longest_tokens=3000)
    cal = Calibration(rows=64, minibatch_update_s=2.0, minibatch_forward_s=0.5, prefill_s=0.25,
                      decode_step_s=0.01, device="cuda", minibatch_flops=50e12)
    assumed, measured = estimate(cfg, shape, hw, work), estimate(cfg, shape, hw, work, cal)
    assert measured.times["update"] == 4 * 2.0                           # 4 mini-batches x 1 epoch, per rank
    assert measured.times["old log-probs"] == 3 * 0.5                    # the first scores itself
    assert measured.times["generation"] == 0.25 + 3000 * 0.01            # prefill + the longest response's steps
    assert measured.times["weight sync"] == assumed.times["weight sync"]
    assert measured.times["step"] == pytest.approx(sum(v for k, v in measured.times.items() if k != "step"))
    said = "\n".join(measured.assumptions)
    assert "measured on cuda (--calibrate)" in said and "(25% of 100,000 GFLOP/s" in said
    assert "(assumed: --mfu)" not in said and "(assumed: --mfu)" in "\n".join(assumed.assumptions)
    with_kl = estimate(dataclasses.replace(cfg, algorithm=dataclasses.replace(cfg.algorithm, kl_coef=0.1)),
                       shape, hw, work, cal)
    assert with_kl.times["reference log-probs"] == 4 * 0.5


def test_calibrate_times_the_trainers_update_on_a_tiny_model(tiny_folder):
    cfg = load_recipe("recipes/tiny_cpu.yaml", [f"model.path={tiny_folder}", "train.prompts_per_step=4",
                                                 "train.mini_batch_prompts=2", "rollout.n=2"])
    import torch

    cal = calibrate(cfg, prompt_tokens=12, response_tokens=6, device=torch.device("cpu"), repeats=1)
    assert cal.rows == 4 and cal.device == "cpu"
    assert cal.decode_timed_with == "HF generate"      # the tiny recipe samples with rollout.engine=hf
    assert all(x > 0 for x in (cal.minibatch_update_s, cal.minibatch_forward_s, cal.prefill_s, cal.decode_step_s))
    assert cal.minibatch_flops > 0


def test_cli_calibrates_on_cpu(tiny_folder, capsys):
    main(["recipes/tiny_cpu.yaml", f"model.path={tiny_folder}", "train.prompts_per_step=4",
          "train.mini_batch_prompts=2", "rollout.n=2", "--cpu", "--gpus", "1", "--prompt-tokens", "12",
          "--response-tokens", "6", "--longest-tokens", "8", "--calibrate"])
    out = capsys.readouterr().out
    assert "calibrated on cpu" in out and "measured on cpu (--calibrate)" in out
    assert "8 decode steps x" in out and "the longest response runs to 8 tokens (--longest-tokens)" in out


def test_calibrate_without_a_gpu_asks_for_cpu(tiny_folder):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(SystemExit, match="no GPU here"):
        main(["recipes/tiny_cpu.yaml", f"model.path={tiny_folder}", "--calibrate"])
