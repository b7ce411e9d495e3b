"""The doctor: a report of every check on a healthy, an unhealthy, a running and a crashed run, with
the run's own thresholds, the flagged steps shaded in its PNG, and the exit status saying which."""

import json
import os
import time
from pathlib import Path

import yaml

from justrl_min.checkpoint import write_manifest
from justrl_min.config import config_to_dict, load_recipe
from justrl_min.tools import doctor


def make_run(folder: Path, rows: list[dict], total_steps: int, *overrides: str, tail: str = "") -> Path:
    folder.mkdir(parents=True)
    cfg = load_recipe(None, [f"train.steps={total_steps}", *overrides])
    (folder / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return folder


def rows(steps: int, *, entropy=lambda _s: 1.6, grad_norm=lambda _s: 0.3) -> list[dict]:
    """A run shaped like JustRL's at its start: entropy ~1.6, accuracy rising, length steady."""
    return [{"step": s, "train/reward_mean": -0.6 + 0.01 * s, "train/accuracy": 0.2 + 0.005 * s,
             "train/entropy": entropy(s), "train/response_length_mean": 7000.0, "train/truncated_frac": 0.02,
             "train/solve_none_frac": 0.3, "train/solve_all_frac": 0.1, "train/grad_norm": grad_norm(s),
             "train/clip_frac": 0.002, "train/skipped_steps": 0, "train/reward_timeouts": 0,
             "train/reward_errors": 0, "time/step_s": 1.0} for s in range(1, steps + 1)]


def test_a_healthy_finished_run_passes(tmp_path, capsys):
    run = make_run(tmp_path / "good", rows(30), 30)
    assert doctor.main([str(run)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{run}: finished: 30 of 30 steps")
    assert "WARN" not in out and "=> healthy" in out
    assert "n/a   KL to the reference" in out  # no reference model: train/kl never logged
    assert (run / "health.png").read_bytes()[:4] == b"\x89PNG"


def test_an_unhealthy_run_warns_with_step_ranges(tmp_path, capsys):
    # Entropy 1.6 falls to 0.3 from step 15 on (19% of its peak); the gradient norm jumps to 6 at step 20.
    sick = rows(30, entropy=lambda s: 1.6 if s < 15 else 0.3, grad_norm=lambda s: 6.0 if s == 20 else 0.3)
    run = make_run(tmp_path / "sick", sick, 30, "health.smooth_steps=1")
    out_png = tmp_path / "sick.png"
    assert doctor.main([str(run), "-o", str(out_png)]) == 1
    out = capsys.readouterr().out
    assert "WARN  entropy collapse" in out
    assert "steps 15-30: smoothed entropy 0.3, 19% of its peak 1.6" in out
    assert "WARN  no gradient-norm spikes" in out and "step 20: gradient norm 6 at step 20, 20.0x the median 0.3" in out
    assert "=> 2 check(s) warn" in out and out_png.is_file()
    d = doctor.diagnose(run)
    assert doctor.flagged_ranges(d)["train/entropy"] == [(15, 30)]
    assert doctor.flagged_ranges(d)["train/grad_norm"] == [(20, 20)]


def test_a_crashed_run_is_reported_as_stopped_with_where_to_resume(tmp_path, capsys):
    run = make_run(tmp_path / "crashed", rows(12), 100, tail='{"step": 13, "train/rew')
    (run / "checkpoints" / "step_10").mkdir(parents=True)
    (run / "checkpoints" / "step_10" / "trainer_state.json").write_text("{}")
    write_manifest(run / "checkpoints" / "step_10")  # what makes a checkpoint complete
    hour_ago = time.time() - 3600
    os.utime(run / "metrics.jsonl", (hour_ago, hour_ago))
    assert doctor.main([str(run)]) == 0  # what it logged is healthy
    out = capsys.readouterr().out
    assert f"stopped: at step 12 of 100, last logged 60.0 min ago (crashed or killed); latest checkpoint " \
           f"step_10; resume with python train.py {run / 'config.yaml'} run.resume=true" in out
    assert "line 13: not a metrics row, skipped (a run killed mid-write leaves a partial last line)" in out


def test_a_running_run_and_a_missing_one(tmp_path, capsys):
    run = make_run(tmp_path / "live", rows(5), 100)
    assert doctor.diagnose(run).state.startswith("running: step 5 of 100, last logged ")
    assert doctor.main([str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_thresholds_are_the_runs_own(tmp_path):
    run = make_run(tmp_path / "strict", rows(5), 5, "health.entropy_start_max=1.5")
    [start] = [c for c in doctor.diagnose(run).checks if c.name == "entropy_start"]
    assert start.status == "warn" and "band 1-1.5" in start.episodes[0].worst.text
