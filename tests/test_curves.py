"""Curves: runs read from metrics.jsonl or TensorBoard events, the panels present in the data drawn, a
valid PNG written, and clear errors for a run directory with neither source."""

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from justrl_min import curves

ROOT = Path(__file__).resolve().parents[1]
BASE_PANELS = ["Mean reward", "Entropy", "Mean response length", "Clip fraction"]


def training_rows(steps: int, *, kl: bool = False, eval_every: int = 0) -> list[dict]:
    """Rows shaped like the trainer's: one per step, plus an eval row at the same step when due."""
    rows = []
    for step in range(1, steps + 1):
        row = {"step": step, "train/reward_mean": -0.6 + step / steps, "train/accuracy": 0.2 + 0.5 * step / steps,
               "train/entropy": 1.3 + 0.05 * math.sin(step), "train/response_length_mean": 7500 - 30 * step,
               "train/clip_frac": 0.002, "train/grad_norm": 0.3, "train/lr": 1e-6, "time/step_s": 40.0,
               "train/loss": None}  # a non-finite value is logged as null
        if kl:
            row["train/kl"] = 0.001 * step
        rows.append(row)
        if eval_every and step % eval_every == 0:
            rows.append({"step": step, "eval/aime24/avg@32": 0.3 + step / 1000, "eval/aime24/pass@1": 0.3,
                         "eval/math500/avg@4": 0.8, "eval/overall/avg": 0.55})
    return rows


def write_jsonl_run(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_metrics_jsonl_run_gets_the_base_panels(tmp_path):
    run = write_jsonl_run(tmp_path / "baseline", training_rows(30))
    out = tmp_path / "curves.png"
    titles = curves.plot_runs([run], out)
    assert titles == BASE_PANELS
    width, height = png_size(out)
    assert 800 <= width <= 3000 and 400 <= height <= 2000
    assert out.stat().st_size > 10_000  # something was drawn


def test_kl_and_eval_panels_appear_when_logged(tmp_path):
    with_extras = write_jsonl_run(tmp_path / "kl_run", training_rows(40, kl=True, eval_every=10))
    plain = write_jsonl_run(tmp_path / "plain", training_rows(25))
    out = tmp_path / "sub" / "both.png"
    titles = curves.plot_runs([with_extras, plain], out, smooth=5, paper="deepseek")
    assert titles == ["Mean reward", "Entropy", "Mean response length", "KL", "Clip fraction", "Eval accuracy"]
    assert png_size(out)[0] > png_size(out)[1]  # 3 columns x 2 rows


def test_reading_merges_rows_of_one_step_and_keeps_the_later_value(tmp_path):
    rows = training_rows(5, eval_every=5)
    rows.append({"step": 4, "train/reward_mean": 0.9})  # a resumed run replays step 4
    run = write_jsonl_run(tmp_path / "resumed", rows)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "train/rew')  # killed mid-write
    with pytest.warns(UserWarning, match="line 8"):
        series = curves.read_run(run)
    steps, values = series["train/reward_mean"]
    assert steps == [1, 2, 3, 4, 5] and values[3] == 0.9
    assert series["eval/aime24/avg@32"] == ([5], [0.3 + 5 / 1000])
    assert "train/loss" not in series  # only nulls


def test_tensorboard_only_run(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "tb_only"
    writer = SummaryWriter(str(run / "tb"))
    for row in training_rows(20, kl=True):
        for key, value in row.items():
            if key != "step" and value is not None:
                writer.add_scalar(key, value, row["step"])
    writer.add_text("hyperparameters", "|key|value|", 0)  # not a scalar: ignored
    writer.close()
    series = curves.read_run(run)
    assert series["train/entropy"][0] == list(range(1, 21))
    assert series["train/kl"][1][-1] == pytest.approx(0.02)
    out = tmp_path / "tb.png"
    assert curves.plot_runs([run], out) == ["Mean reward", "Entropy", "Mean response length", "KL", "Clip fraction"]
    png_size(out)


def test_run_without_metrics_is_a_clear_error(tmp_path):
    (tmp_path / "empty" / "tb").mkdir(parents=True)
    with pytest.raises(curves.CurvesError, match="no metrics.jsonl and no TensorBoard events"):
        curves.plot_runs([tmp_path / "empty"], tmp_path / "x.png")
    with pytest.raises(curves.CurvesError, match="no such run directory"):
        curves.read_run(tmp_path / "missing")
    with pytest.raises(ValueError, match="only 'deepseek'"):
        curves.plot_runs([tmp_path / "empty"], tmp_path / "x.png", paper="nemotron")


def test_moving_average():
    # Trailing window of 3: [1], [1,2], [1,2,3], [2,3,4], [3,4,5]
    assert curves.moving_average([1, 2, 3, 4, 5], 3) == [1, 1.5, 2, 3, 4]
    assert curves.moving_average([1, 2], 1) == [1, 2]


def test_cli(tmp_path):
    run = write_jsonl_run(tmp_path / "r", training_rows(10, eval_every=5))
    out = tmp_path / "cli.png"
    done = subprocess.run([sys.executable, "-m", "justrl_min.curves", str(run), "-o", str(out), "--smooth", "3",
                           "--paper", "deepseek"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Eval accuracy" in done.stdout
    png_size(out)
    bad = subprocess.run([sys.executable, "-m", "justrl_min.curves", str(tmp_path / "nope"), "-o", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no such run directory" in bad.stderr


def test_critic_runs_get_value_loss_and_explained_variance_panels(tmp_path):
    rows = training_rows(10)
    for row in rows:
        row.update({"train/value_loss": 0.1 / row["step"], "train/explained_variance": 0.05 * row["step"]})
    titles = curves.plot_runs([write_jsonl_run(tmp_path / "ppo", rows)], tmp_path / "c.png")
    assert titles == BASE_PANELS + ["Value loss", "Explained variance"]
    assert "Value loss" not in curves.plot_runs([write_jsonl_run(tmp_path / "grpo", training_rows(10))],
                                                tmp_path / "g.png")
