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
