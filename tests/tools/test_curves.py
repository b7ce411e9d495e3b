"""Curves: runs read from metrics.jsonl or TensorBoard events, only the panels present in the data drawn,
in a grid without empty cells where one fits, EMA smoothing, axes fitted to the data, the paper's bands
drawn without stretching a short run, flagged steps shaded, a valid PNG written, and clear errors for
a run directory with neither source."""

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from justrl_min.tools import curves

ROOT = Path(__file__).resolve().parents[2]
BASE_PANELS = ["Mean reward", "Entropy", "Mean response length", "Gradient norm", "Clip fraction"]


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
    assert titles == BASE_PANELS + ["KL", "Eval accuracy"]
    assert png_size(out)[0] > png_size(out)[1]  # 4 columns x 2 rows


def test_reading_merges_rows_of_one_step_and_keeps_the_later_value(tmp_path):
    rows = training_rows(5, eval_every=5)
    rows.append({"step": 4, "train/reward_mean": 0.9})  # a resumed run replays step 4
    rows.append({"step": 5, "event": "health/kl", "message": "health warning"})  # not a metric
    run = write_jsonl_run(tmp_path / "resumed", rows)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "train/rew')  # killed mid-write
    with pytest.warns(UserWarning, match="line 9"):
        series = curves.read_run(run)
    steps, values = series["train/reward_mean"]
    assert steps == [1, 2, 3, 4, 5] and values[3] == 0.9
    assert series["eval/aime24/avg@32"] == ([5], [0.3 + 5 / 1000])
    assert "train/loss" not in series  # only nulls
    assert "message" not in series and "event" not in series


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
    assert curves.plot_runs([run], out) == BASE_PANELS + ["KL"]
    png_size(out)


def test_run_without_metrics_is_a_clear_error(tmp_path):
    (tmp_path / "empty" / "tb").mkdir(parents=True)
    with pytest.raises(curves.CurvesError, match="no metrics.jsonl and no TensorBoard events"):
        curves.plot_runs([tmp_path / "empty"], tmp_path / "x.png")
    with pytest.raises(curves.CurvesError, match="no such run directory"):
        curves.read_run(tmp_path / "missing")
    with pytest.raises(ValueError, match="only 'deepseek'"):
        curves.plot_runs([tmp_path / "empty"], tmp_path / "x.png", paper="nemotron")


def test_ema_and_its_default_span():
    # span 3: weight 0.5, debiased (TensorBoard-style): 2, (0.5*1 + 0.5*4) / 0.75 = 10/3, and
    # ((0.5*2.5 + 0.5*1) / 0.875 = 2.
    assert curves.ema([2, 4, 1], 3) == pytest.approx([2, 10 / 3, 2], abs=1e-12)
    assert curves.ema([1, 2], 1) == [1, 2]
    assert [curves.auto_span(n) for n in (5, 60, 100, 4380)] == [1, 3, 5, 219]


def test_grid_leaves_no_empty_cell_where_one_fits():
    assert [curves.grid(n) for n in (1, 2, 3, 4, 5, 6, 8, 9)] == \
        [(1, 1), (1, 2), (1, 3), (2, 2), (2, 3), (2, 3), (2, 4), (3, 3)]


def test_only_logged_metrics_get_panels(tmp_path):
    rows = [{"step": s, "train/reward_mean": 0.1 * s, "train/entropy": 0.2} for s in range(1, 6)]
    assert curves.plot_runs([write_jsonl_run(tmp_path / "two", rows)], tmp_path / "two.png") == \
        ["Mean reward", "Entropy"]
    with pytest.raises(curves.CurvesError, match="none of the plotted metrics"):
        curves.plot_runs([write_jsonl_run(tmp_path / "none", [{"step": 1, "time/step_s": 1.0}])], tmp_path / "n.png")


def test_y_axis_reads_at_any_scale():
    # Lengths 10.2-10.6 start at 0 (noise of 0.4 tokens stays small); padded by 5% of the span above.
    assert curves.y_limits([10.2, 10.6], zero_based=True) == pytest.approx((0.0, 10.6 * 1.05))
    # A reward from 0.3 to 0.9: the data's range, 5% (0.03) either side.
    assert curves.y_limits([0.3, 0.9], zero_based=False) == pytest.approx((0.27, 0.93))
    # A flat 0.5 +- 0.001 is widened to 5% of 0.501 (0.02505) before padding: it stays flat.
    low, high = curves.y_limits([0.499, 0.501], zero_based=False)
    assert high - low == pytest.approx(0.02505 * 1.1)


def test_paper_bands_do_not_stretch_a_short_run():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot(range(1, 61), [10.5] * 60)
    ax.set_ylim(0, 11)
    limits = ax.get_xlim(), ax.get_ylim()
    curves._draw_paper_ranges(ax, curves.PANELS[2])  # mean response length: 7-8k, 4-5k tokens
    assert (ax.get_xlim(), ax.get_ylim()) == limits
    [note] = [t.get_text() for t in ax.texts]
    assert "off these axes" in note and "7-8k tokens at start" in note and "4-5k tokens" in note
    fig.clf()
    ax = fig.add_subplot()
    ax.plot(range(1, 61), [1.3] * 60)
    ax.set_ylim(0, 2)
    curves._draw_paper_ranges(ax, curves.PANELS[1])  # entropy 1.2-1.4 is on these axes: a band
    assert len(ax.collections) == 1 and ax.get_xlim()[1] < 100
    # The ablations' collapse to 0.5-0.6 is a plateau from step 1,000: past this 60-step run, named.
    [note] = [t.get_text() for t in ax.texts if "off these axes" in t.get_text()]
    assert "1.2-1.4" not in note and "collapses to 0.5-0.6" in note
    plt.close(fig)


def test_paper_ablation_bands_stand_beside_the_base_ones_in_their_own_colours():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 3000], [0.4, 0.6])  # an eval panel of a long run: every AIME24 plateau is on these axes
    curves._draw_paper_ranges(ax, curves.EVAL_PANEL)
    bands = {tuple(c.get_facecolor()[0][:3]) for c in ax.collections}
    assert len(ax.collections) == 3 and len(bands) == 3
    assert [t.get_text() for t in ax.texts] == ["paper: AIME24 ~55%", "paper + overlong: AIME24 ~50%",
                                                "paper + overlong + DeepScaleR: AIME24 ~45%"]
    labels = ax.get_legend_handles_labels()[1]
    assert labels == [curves.PAPER_LABEL, "paper ablation: + overlong penalty",
                      "paper ablation: + overlong penalty + DeepScaleR grader"]
    plt.close(fig)


def test_flagged_ranges_are_shaded(tmp_path):
    run = write_jsonl_run(tmp_path / "r", training_rows(20))
    plain, shaded = tmp_path / "plain.png", tmp_path / "shaded.png"
    curves.plot_runs([run], plain)
    curves.plot_runs([run], shaded, flagged=[{"train/entropy": [(5, 9)]}])
    assert plain.read_bytes() != shaded.read_bytes()


def test_cli(tmp_path):
    run = write_jsonl_run(tmp_path / "r", training_rows(10, eval_every=5))
    out = tmp_path / "cli.png"
    done = subprocess.run([sys.executable, "-m", "justrl_min.tools.curves", str(run), "-o", str(out), "--smooth", "3",
                           "--paper", "deepseek"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Eval accuracy" in done.stdout
    png_size(out)
    bad = subprocess.run([sys.executable, "-m", "justrl_min.tools.curves", str(tmp_path / "nope"), "-o", str(out)],
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
