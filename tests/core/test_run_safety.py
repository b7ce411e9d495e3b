"""A run directory has one owner, a checkpoint proves itself before it is used, and every number in
the config is checked under its own name (issue 32). Each fault is made here and its message read."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from justrl_min import trainer
from justrl_min.checkpoint import MANIFEST, Checkpointer, checked_model_folder, resume_point, verify_checkpoint
from justrl_min.config import _RANGES, Config, ConfigError, load_recipe
from justrl_min.tools import verify_checkpoint as verify_cli
from justrl_min.tracking import read_metrics
from tests.core.test_trainer import overrides, run_cli

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "recipes/tiny_cpu.yaml"


# --------------------------------------------------------------------------------------------------
# Every number under its own name


def numeric_keys(cls=Config, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from numeric_keys(hint, f"{prefix}{f.name}.")
            continue
        args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        if args[0] in (int, float):
            yield f"{prefix}{f.name}", args[0]


CROSS_FIELD = {"reward.overlong_buffer"}  # its range names rollout.max_response_length
OUT_OF_RANGE = {"> 0": 0, ">= 0": -1, ">= 1": 0, "in (0, 1]": 0, "in [0, 1]": 2, "in [0, 1)": 1,
                "> 1 or null": 1, "> 0 or null": 0, "finite": ".inf"}


def test_every_numeric_field_has_one_range():
    ruled = [key for keys in _RANGES.values() for key in keys]
    assert len(ruled) == len(set(ruled)), "a key in two ranges"
    assert {key for key, _ in numeric_keys()} - CROSS_FIELD == set(ruled)


@pytest.mark.parametrize("rule,key", [(rule, key) for rule, keys in _RANGES.items() for key in keys])
def test_an_out_of_range_number_is_refused_under_its_own_name_with_its_bound(rule, key):
    value = OUT_OF_RANGE[rule]
    value = f"[0.9, {value}]" if key == "train.betas" else value
    with pytest.raises(ConfigError) as error:
        load_recipe(TINY, [f"{key}={value}"])
    assert str(error.value).startswith(f"{key}: must be {rule}, got ")


def test_a_negative_length_names_itself_not_the_buffer_that_depends_on_it():
    with pytest.raises(ConfigError) as e:
        load_recipe(TINY, ["rollout.max_response_length=-5"])
    assert str(e.value) == "rollout.max_response_length: must be > 0, got -5"


# --------------------------------------------------------------------------------------------------
# One owner per run directory

HOLD = """
import sys, time
from justrl_min.run_lock import RunLock
RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture
def held_run_dir(tmp_path):
    run_dir = tmp_path / "owned"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')  # the owner's record, which must survive
    yield run_dir, holder
    holder.kill()
    holder.wait()


def test_a_second_launch_exits_at_once_naming_the_owner(warm_model, held_run_dir):
    run_dir, holder = held_run_dir
    second = run_cli(overrides(warm_model, run_dir, "run.resume=false", "run.overwrite=true"))
    out, _ = second.communicate(timeout=120)
    assert second.returncode == 2, out
    assert f"run directory {run_dir} is in use by pid {holder.pid} on host " in out and "since" in out
    assert "start a separate run with another run.name (e.g. run.name=owned-2)" in out
    assert "Traceback" not in out
    assert (run_dir / "metrics.jsonl").read_text() == '{"step": 1}\n'  # overwrite=true deleted nothing


def test_a_dead_owner_does_not_block(warm_model, held_run_dir):
    run_dir, holder = held_run_dir
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    run = run_cli(overrides(warm_model, run_dir, "train.steps=1", "run.resume=false", "run.overwrite=true"))
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 0, out
    assert [m["step"] for m in read_metrics(run_dir)] == [1]


@pytest.fixture
def aime_dir(tmp_path):
    import pandas as pd

    (tmp_path / "bench" / "AIME24").mkdir(parents=True)
    pd.DataFrame({"problem": ["What is 2+3?"], "answer": ["5"]}).to_parquet(tmp_path / "bench/AIME24/test.parquet")
    return tmp_path / "bench"


def run_eval(model: Path, data_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "eval.py"), "--model", str(model), "--benchmarks", "aime24",
                           "--data-dir", str(data_dir), "--engine", "hf", "--n", "1", "--max-tokens", "4",
                           "--workers", "1", *extra], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_evaluation_into_a_run_folder_is_not_blocked(warm_model, held_run_dir, aime_dir):
    run_dir, _ = held_run_dir
    done = run_eval(warm_model, aime_dir, "--out", str(run_dir / "eval"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert any((run_dir / "eval").iterdir())


# --------------------------------------------------------------------------------------------------
# Checkpoints that prove themselves


@pytest.fixture(scope="module")
def two_checkpoints(warm_model, tmp_path_factory):
    """A finished 4-step run with checkpoints at steps 2 and 4."""
    run_dir = tmp_path_factory.mktemp("ckpt") / "run"
    trainer.train(load_recipe(TINY, overrides(warm_model, run_dir, "train.steps=4", "checkpoint.every_steps=2",
                                              "log.tensorboard=false")))
    return run_dir


@pytest.fixture
def run_copy(two_checkpoints, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(two_checkpoints, run_dir, symlinks=True)
    (run_dir / ".lock").unlink(missing_ok=True)
    return run_dir


def truncate(path: Path) -> int:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    return size


FAULTS = {
    "truncated model file": (lambda c: truncate(c / "model.safetensors"),
                             "model.safetensors has {half:,} bytes where {size:,} were saved (truncated)"),
    "truncated optimizer state": (lambda c: truncate(c / "optimizer.pt"),
                                  "optimizer.pt has {half:,} bytes where {size:,} were saved (truncated)"),
    "missing trainer_state.json": (lambda c: (c / "trainer_state.json").unlink(), "trainer_state.json is missing"),
    "no manifest": (lambda c: (c / MANIFEST).unlink(), "no manifest.json: an incomplete checkpoint"),
    "changed bytes": (lambda c: (c / "config.yaml").write_text((c / "config.yaml").read_text().replace("a", "b")),
                      "config.yaml changed since it was saved"),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_damaged_newest_checkpoint_is_named_and_the_older_one_used(run_copy, fault):
    newest = run_copy / "checkpoints/step_4"
    damage, expected = FAULTS[fault]
    size = damage(newest)
    expected = expected.format(size=size or 0, half=(size or 0) // 2)
    assert any(expected in problem for problem in verify_checkpoint(newest)), verify_checkpoint(newest)
    said = []
    cfg = load_recipe(TINY, [f"run.output_dir={run_copy.parent}", f"run.name={run_copy.name}"])
    assert resume_point(cfg, Checkpointer(run_copy, keep=2), log=said.append) == run_copy / "checkpoints/step_2"
    assert said[0].startswith(f"resume: skipped {newest} fails its check: ") and expected in said[0]
    assert said[-1] == f"resume: from {run_copy / 'checkpoints/step_2'}, the newest checkpoint that passes its check"


def test_a_dangling_latest_is_named(run_copy):
    shutil.rmtree(run_copy / "checkpoints/step_4")
    folder, skipped = Checkpointer(run_copy, keep=2).newest_verified()
    assert folder == run_copy / "checkpoints/step_2"
    assert skipped == [f"{run_copy / 'checkpoints/latest'} points at step_4, which does not exist"]


def test_the_resumed_run_goes_on_from_the_good_checkpoint(warm_model, run_copy):
    truncate(run_copy / "checkpoints/step_4/model.safetensors")
    run = run_cli(overrides(warm_model, run_copy, "train.steps=5", "checkpoint.every_steps=2",
                            "log.tensorboard=false"))
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 0, out
    assert "model.safetensors has" in out and "(truncated)" in out
    assert "resumed from" in out and "step_2 at step 2" in out
    assert [m["step"] for m in read_metrics(run_copy)] == [1, 2, 3, 4, 5]


def test_when_no_checkpoint_passes_the_run_stops_with_a_message(warm_model, run_copy):
    for step in (2, 4):
        truncate(run_copy / f"checkpoints/step_{step}/model.safetensors")
    run = run_cli(overrides(warm_model, run_copy, "train.steps=5"))
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 2 and "Traceback" not in out, out
    assert "error: run.resume=auto: no checkpoint in" in out and "passes its check" in out
    assert out.count("(truncated)") == 2 and "run.resume=false run.overwrite=true" in out


def test_verify_checkpoint_command(run_copy, capsys):
    assert verify_cli.main([str(run_copy)]) == 0
    assert capsys.readouterr().out.count(": ok (") == 2
    truncate(run_copy / "checkpoints/step_4/optimizer.pt")
    assert verify_cli.main([str(run_copy)]) == 1
    out = capsys.readouterr().out
    assert "step_4: FAILS" in out and "optimizer.pt has" in out and "step_2: ok" in out
    assert f"a resume would start from {run_copy / 'checkpoints/step_2'}" in out
    assert verify_cli.main([str(run_copy / "checkpoints/step_2")]) == 0
    assert verify_cli.main([str(run_copy / "metrics.jsonl")]) == 2


def test_export_and_eval_use_the_same_check(run_copy, tmp_path, aime_dir):
    truncate(run_copy / "checkpoints/step_4/model.safetensors")
    with pytest.raises(ConfigError, match=r"step_4: this checkpoint fails its check: model.safetensors has"):
        checked_model_folder(run_copy / "checkpoints/step_4")
    said = []
    assert checked_model_folder(run_copy, log=said.append) == str(run_copy / "checkpoints/step_2")
    assert "using step_2, the newest checkpoint that passes its check" in said[0]
    export = subprocess.run([sys.executable, "-m", "justrl_min", "export", str(run_copy / "checkpoints/latest"),
                             "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert export.returncode == 2 and "fails its check: model.safetensors has" in export.stderr, export.stderr
    done = run_eval(run_copy / "checkpoints/step_4", aime_dir, "--out", str(tmp_path / "eval"))
    assert done.returncode != 0 and "fails its check: model.safetensors has" in done.stderr, done.stderr


def test_the_manifest_lists_every_file_of_the_checkpoint(two_checkpoints):
    folder = two_checkpoints / "checkpoints/step_4"
    manifest = json.loads((folder / MANIFEST).read_text())
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST}
    assert set(manifest["files"]) == on_disk and {"model.safetensors", "optimizer.pt", "trainer_state.json"} <= on_disk
    assert all(entry["bytes"] == os.path.getsize(folder / name) for name, entry in manifest["files"].items())


# --------------------------------------------------------------------------------------------------
# Stopping when learning has stopped (train.stop_on_plateau)


def test_a_run_that_does_not_learn_stops_by_itself_saying_why(warm_model, tmp_path):
    run_dir = tmp_path / "flat"
    run = run_cli(overrides(warm_model, run_dir, "train.steps=30", "train.lr=0", "train.stop_on_plateau=true",
                            "health.plateau_window=4", "health.plateau_min_rise=0.1", "checkpoint.every_steps=100"))
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 0, out
    steps = [m["step"] for m in read_metrics(run_dir)]
    assert steps == [1, 2, 3, 4, 5]  # the first step with a full window, learning nothing
    assert "stopped at step 5 of 30: health warning [reward_plateau] reward still rising: smoothed accuracy rose" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "plateaued" and summary["stop_reason"].startswith("health warning [reward_plateau]")
    assert Checkpointer(run_dir, keep=2).newest_verified()[0] == run_dir / "checkpoints/step_5"


def test_a_run_that_learns_does_not_stop_early(warm_model, tmp_path):
    run_dir = tmp_path / "learns"
    run = run_cli([f"model.path={warm_model}", f"run.output_dir={tmp_path}", "run.name=learns", "train.steps=24",
                   "reward.workers=1", "log.curves_at_end=false", "train.stop_on_plateau=true",
                   "health.plateau_window=8", "health.plateau_min_rise=0.01", "checkpoint.every_steps=100"])
    out, _ = run.communicate(timeout=600)
    assert run.returncode == 0, out
    assert [m["step"] for m in read_metrics(run_dir)] == list(range(1, 25))
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


def test_an_evaluation_that_stops_improving_stops_the_run(warm_model, tmp_path, aime_dir):
    run_dir = tmp_path / "evalflat"
    run = run_cli(overrides(warm_model, run_dir, "train.steps=30", "train.stop_on_plateau=true",
                            "eval.every_steps=1", "eval.benchmarks=[aime24]", f"eval.data_dir={aime_dir}", "eval.n=1",
                            "eval.max_tokens=2", "health.eval_patience=2", "checkpoint.every_steps=100"))
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 0, out
    # Two tokens never hold an answer: eval/overall/avg is 0 at steps 1-3, and at step 3 the last two
    # evaluations have not beaten the first.
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3]
    assert "stopped at step 3 of 30: health warning [eval_plateau]" in out


def test_stop_on_plateau_needs_the_health_checks():
    with pytest.raises(ConfigError, match="train.stop_on_plateau: needs log.health=true"):
        load_recipe(TINY, ["train.stop_on_plateau=true", "log.health=false"])
