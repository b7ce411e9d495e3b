"""The CPU dtype fallback: measured speeds decide, float32 and float64 are never replaced."""

import justrl_min.dtypes as dtypes


def test_float32_and_float64_are_kept_without_measuring():
    assert dtypes.fast_cpu_dtype("float32") == ("float32", None)
    assert dtypes.fast_cpu_dtype("float64") == ("float64", None)


def test_a_dtype_much_slower_than_float32_falls_back_with_a_message(monkeypatch):
    speeds = {"float32": 128.0, "bfloat16": 0.3}
    monkeypatch.setattr(dtypes, "cpu_matmul_gflops", lambda name: speeds[name])
    name, message = dtypes.fast_cpu_dtype("bfloat16")
    assert name == "float32"
    assert "0.3 GFLOP/s" in message and "427x slower" in message and "cpu_float32_fallback" in message


def test_a_dtype_within_the_limit_is_kept(monkeypatch):
    speeds = {"float32": 100.0, "bfloat16": 30.0}   # 3.3x slower: inside the 4x limit
    monkeypatch.setattr(dtypes, "cpu_matmul_gflops", lambda name: speeds[name])
    assert dtypes.fast_cpu_dtype("bfloat16") == ("bfloat16", None)


def test_the_measurement_times_real_matmuls():
    assert dtypes.cpu_matmul_gflops("float32", size=64, budget_s=0.01) > 0.1


def test_the_trainer_computes_in_float32_where_the_recipe_dtype_is_slow_and_says_so(monkeypatch, capsys):
    import torch

    from justrl_min import trainer
    from justrl_min.config import load_recipe
    from justrl_min.dist import DistInfo

    cfg = load_recipe("recipes/deepseek_1p5b.yaml")            # dtype float32, compute_dtype bfloat16
    one_process = DistInfo()
    monkeypatch.setattr(trainer, "fast_cpu_dtype", lambda name: ("float32", f"{name} is slow here"))
    slow = trainer.fast_compute_dtype(cfg, torch.device("cpu"), one_process)
    assert (slow.model.dtype, slow.model.compute_dtype) == ("float32", "float32")
    assert "bfloat16 is slow here" in capsys.readouterr().out
    # GPUs, an override, and a CPU that computes bf16 fast keep the recipe's dtype.
    assert trainer.fast_compute_dtype(cfg, torch.device("cuda"), one_process) is cfg
    kept = load_recipe("recipes/deepseek_1p5b.yaml", ["model.cpu_float32_fallback=false"])
    assert trainer.fast_compute_dtype(kept, torch.device("cpu"), one_process) is kept
    monkeypatch.setattr(trainer, "fast_cpu_dtype", lambda name: (name, None))
    assert trainer.fast_compute_dtype(cfg, torch.device("cpu"), one_process) is cfg
