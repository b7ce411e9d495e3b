"""Atomic checkpoints: a failure mid-save leaves `latest` loadable; pruning; the disk pre-check."""

import json
import shutil
from pathlib import Path

import pytest

from justrl_min import checkpoint, tiny
from justrl_min.checkpoint import Checkpointer, check_disk, estimate_checkpoint_bytes
from justrl_min.config import ConfigError
from tests import tiny_models


def write_model_checkpoint(step: int, fail_after_weights: bool = False):
    def write(folder):
        tiny_models.save_random_model(folder, seed=step, hidden=16, layers=1)
        if fail_after_weights:
            raise OSError("disk full (injected)")
        (folder / "trainer_state.json").write_text(json.dumps({"step": step}))
    return write


def test_failure_mid_save_leaves_latest_loadable(tmp_path):
    from transformers import AutoModelForCausalLM

    ckpt = Checkpointer(tmp_path, keep=2)
    ckpt.save(1, write_model_checkpoint(1))
    with pytest.raises(OSError, match="injected"):
        ckpt.save(2, write_model_checkpoint(2, fail_after_weights=True))
    assert ckpt.latest().name == "step_1"
    assert not list(ckpt.folder.glob(".tmp-*")), "partial checkpoint left behind"
    AutoModelForCausalLM.from_pretrained(ckpt.folder / "latest")


def test_a_writer_that_forgets_the_state_file_does_not_publish(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=2)
    with pytest.raises(RuntimeError, match="trainer_state.json"):
        ckpt.save(1, lambda folder: (folder / "model.safetensors").write_text("x"))
    assert ckpt.latest() is None


def test_keep_prunes_oldest_and_latest_moves(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=2)
    for step in (1, 2, 3):
        ckpt.save(step, lambda folder, s=step: (folder / "trainer_state.json").write_text(json.dumps({"step": s})))
    assert [p.name for p in ckpt.all_steps()] == ["step_2", "step_3"]
    assert (ckpt.folder / "latest").resolve().name == "step_3" and ckpt.latest().name == "step_3"


def test_dangling_latest_falls_back_to_newest_complete(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=3)
    ckpt.save(1, lambda folder: (folder / "trainer_state.json").write_text("{}"))
    (ckpt.folder / "latest").unlink()
    (ckpt.folder / "latest").symlink_to("step_9")
    assert ckpt.latest().name == "step_1"


def test_disk_check_names_the_directory(tmp_path):
    model = tiny.build_model(tiny.build_tokenizer(), hidden=16, layers=1)
    needed = estimate_checkpoint_bytes(model, with_optimizer=True)
    params = sum(p.numel() for p in model.parameters())
    assert needed == params * 4 + params * 8  # fp32 weights + AdamW's two fp32 moments
    check_disk(tmp_path / "run", needed, keep=3)
    with pytest.raises(ConfigError, match=r"run directory .*run has .* GiB free; checkpoint.keep=3 checkpoints "
                                          r"and the one being written need about .* GiB \(.* GiB each\)"):
        check_disk(tmp_path / "run", shutil.disk_usage(tmp_path).free // 3, keep=3)


def test_a_write_that_fills_the_disk_says_so_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path, keep=3)
    first = ckpt.save(1, lambda folder: (folder / "trainer_state.json").write_text("{}"))

    def fills_the_disk(_folder):
        monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**12, 10**12, 2**20))
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 933503040 vs 933502928")

    with pytest.raises(OSError, match=r"checkpoint of step 2 could not be written .*: the disk is full \(1 MiB "
                                      r"were left\); the last complete checkpoint is .*step_1"):
        ckpt.save(2, fills_the_disk)
    assert ckpt.latest() == first and not [p for p in ckpt.folder.iterdir() if p.name.startswith(".tmp")]
    monkeypatch.undo()

    def fails(_folder):
        raise RuntimeError("unexpected pos")

    with pytest.raises(RuntimeError, match="unexpected pos"):  # with room left, the error is the writer's own
        ckpt.save(2, fails)


class PlantedPayload:
    """Unpickling this calls `pathlib.Path.touch` on a marker: the kind of payload a hostile run dir holds."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_training_state_files_load_weights_only(tmp_path):
    import random

    import numpy as np
    import torch

    from justrl_min.checkpoint import load_state_file, rng_state, set_rng_state

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    torch.save(rng_state(), tmp_path / "rng_rank0.pt")
    draws = random.random(), np.random.rand(), torch.rand(2)

    state = load_state_file(tmp_path / "optimizer.pt")
    assert torch.equal(state["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert state["param_groups"][0]["betas"] == (0.9, 0.99)
    set_rng_state(load_state_file(tmp_path / "rng_rank0.pt"))  # python, numpy (an ndarray) and torch states
    again = random.random(), np.random.rand(), torch.rand(2)
    assert draws[:2] == again[:2] and torch.equal(draws[2], again[2])


def test_state_files_are_mapped_not_copied(tmp_path):
    """A resumed rank reads the whole optimizer state: its pages are the file's (shared, reclaimable)."""
    import re

    import torch

    from justrl_min.checkpoint import load_state_file

    def anonymous_kib() -> int:
        return int(re.search(r"RssAnon:\s+(\d+) kB", Path("/proc/self/status").read_text())[1])

    torch.save({"exp_avg": torch.ones(2**26)}, tmp_path / "optimizer.pt")  # 256 MiB
    before = anonymous_kib()
    state = load_state_file(tmp_path / "optimizer.pt")
    assert state["exp_avg"].sum().item() == 2**26  # every page read
    assert anonymous_kib() - before < 64 * 1024


def test_a_planted_pickle_payload_is_refused_and_not_run(tmp_path):
    import torch

    from justrl_min.checkpoint import UnsafeCheckpointError, load_state_file

    marker = tmp_path / "payload_ran"
    torch.save({"state": {}, "param_groups": [], "extra": PlantedPayload(marker)}, tmp_path / "optimizer.pt")
    refused = r"optimizer.pt: refused to load: it names .*pathlib.* Nothing in it was run"
    with pytest.raises(UnsafeCheckpointError, match=refused):
        load_state_file(tmp_path / "optimizer.pt")
    assert not marker.exists()
    assert issubclass(UnsafeCheckpointError, ConfigError)  # train.py prints it as an error, exit 2
