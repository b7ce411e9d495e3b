"""The embedded tiny model: its tokenizer survives a save / load, and the warm start is shared safely."""

import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from justrl_min import tiny
from tests import tiny_models

ROOT = Path(__file__).resolve().parents[2]


def test_tokenizer_round_trips_through_auto_tokenizer(tmp_path):
    tiny_models.save_random_model(tmp_path / "m", hidden=16, layers=1)
    built, loaded = tiny.build_tokenizer(), AutoTokenizer.from_pretrained(tmp_path / "m")
    text = built.apply_chat_template([{"role": "user", "content": "What is 7+8? é \\boxed{15}\n ok"}],
                                     add_generation_prompt=True, tokenize=False)
    assert built(text, add_special_tokens=False)["input_ids"] == loaded(text, add_special_tokens=False)["input_ids"]
    assert loaded.decode(loaded(text, add_special_tokens=False)["input_ids"]) == text
    assert max(loaded.get_vocab().values()) < tiny.VOCAB_SIZE


def test_concurrent_warm_starts_share_one_result(tmp_path):
    folder = tmp_path / "warm"
    script = f"from justrl_min import tiny; tiny.prepare_warm_start({str(folder)!r}, steps=5, log=print)"
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum("supervised steps" in out for out in outputs) == 1  # one trained, the other waited
    AutoModelForCausalLM.from_pretrained(folder)


# The demo's first steps (recipes/tiny_cpu.yaml as `make demo` runs it, seed 0), logged on this
# project's CPU machine on 2026-12-01. The full 100-step run they begin: mean reward 0.332 over the
# first 10% of steps, 0.833 over the last 10%, worst drop of a step in the last 20% below the best
# step before it 0.137 (seeds 1 and 2: 0.843 / 0.133 and 0.834 / 0.148); `python -m justrl_min.tools.doctor
# runs/demo` passes. Another CPU, or code that sums in another order, rounds differently.
DEMO_FIRST_STEPS = [
    {"train/reward_mean": 0.203125, "train/entropy": 0.22263459824554238, "train/loss": 0.0020816911128349602,
     "train/grad_norm": 0.1964835301041603, "train/response_length_mean": 10.4609375},
    {"train/reward_mean": 0.22265625, "train/entropy": 0.21693480036983626, "train/loss": 0.003076640365179628,
     "train/grad_norm": 0.1799720898270607, "train/response_length_mean": 10.49609375},
    {"train/reward_mean": 0.26953125, "train/entropy": 0.2074412185203072, "train/loss": 0.004030474403407425,
     "train/grad_norm": 0.2421068698167801, "train/response_length_mean": 10.36328125},
]


def test_demo_recipe_reproduces_its_recorded_first_steps(tmp_path):
    from justrl_min import trainer
    from justrl_min.config import load_recipe
    from justrl_min.tracking import read_metrics

    # The demo's own warm start (cached in ~/.cache/justrl_min after its first use, 1-2 min to build).
    cfg = load_recipe(ROOT / "recipes/tiny_cpu.yaml", [f"run.output_dir={tmp_path}", "run.name=demo",
                                                        "train.steps=3", "log.curves_at_end=false"])
    assert (cfg.train.lr, cfg.train.prompts_per_step, cfg.rollout.n) == (5e-4, 32, 8)
    rows = read_metrics(trainer.train(cfg))
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row, recorded in zip(rows, DEMO_FIRST_STEPS):
        for key, value in recorded.items():
            assert row[key] == pytest.approx(value, abs=1e-6), (row["step"], key)
