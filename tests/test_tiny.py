"""The embedded tiny model: its tokenizer survives a save / load, and the warm start is shared safely."""

import subprocess
import sys
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from justrl_min import tiny

ROOT = Path(__file__).resolve().parents[1]


def test_tokenizer_round_trips_through_auto_tokenizer(tmp_path):
    tiny.save_random_model(tmp_path / "m", hidden=16, layers=1)
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
