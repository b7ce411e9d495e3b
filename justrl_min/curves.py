"""Training curves of one or more runs, overlaid, to one PNG.

    python -m justrl_min.curves runs/x [runs/y ...] -o curves.png [--smooth 10] [--paper deepseek]

Panels: mean reward, entropy and mean response length always (the three dynamics the JustRL paper
reports); KL, clip fraction, the critic's value loss and explained variance (algorithm.advantage=gae)
and eval accuracy (`eval/<benchmark>/avg@n`) when any run logged them.
Each run is read from `RUN_DIR/metrics.jsonl`, or from the TensorBoard events under `RUN_DIR/tb/`
when there is no metrics.jsonl. A step logged twice (a resumed run replays the steps after its last
checkpoint) keeps the later value. `--paper deepseek` shades the ranges the paper reports for
JustRL-DeepSeek-1.5B, to read a reproduction against.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

EVAL_ACCURACY = re.compile(r"^eval/([^/]+)/avg@(\d+)$")
PAPER_LABEL = "JustRL paper (DeepSeek-1.5B)"
PAPER_STEPS = 4380  # the DeepSeek run's length: the x extent of the paper's bands


class CurvesError(ValueError):
    """A run directory that cannot be read, with the path named."""


@dataclass(frozen=True)
class Panel:
    title: str
    metric: str
    ylabel: str
    always: bool
    """Drawn even when no run logged the metric (an empty panel says so)."""


PANELS = (
    Panel("Mean reward", "train/reward_mean", "reward", True),
    Panel("Entropy", "train/entropy", "nats / token", True),
    Panel("Mean response length", "train/response_length_mean", "tokens", True),
    Panel("KL", "train/kl", "KL(policy || ref)", False),
    Panel("Clip fraction", "train/clip_frac", "fraction of tokens", False),
    Panel("Value loss", "train/value_loss", "clipped value loss", False),
    Panel("Explained variance", "train/explained_variance", "1 - Var(R - V) / Var(R)", False),
)
EVAL_PANEL = Panel("Eval accuracy", "eval/*/avg@*", "avg@n", False)

Series = dict[str, tuple[list[int], list[float]]]
"""metric name -> (steps, values), steps ascending."""


# --------------------------------------------------------------------------------------------------
# Reading runs


def read_run(run_dir: str | Path) -> Series:
    """Every scalar metric of a run: metrics.jsonl if present, else TensorBoard events under tb/."""
    run_dir = Path(run_dir)
    jsonl = run_dir / "metrics.jsonl"
    tb_dir = run_dir / "tb"
    if jsonl.is_file():
        return _read_jsonl(jsonl)
    if tb_dir.is_dir() and any(tb_dir.rglob("*tfevents*")):
        return _read_tensorboard(tb_dir)
    if not run_dir.is_dir():
        raise CurvesError(f"{run_dir}: no such run directory")
    raise CurvesError(f"{run_dir}: no metrics.jsonl and no TensorBoard events under {tb_dir}")


def _read_jsonl(path: Path) -> Series:
    by_metric: dict[str, dict[int, float]] = {}
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            step = int(row["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            # A run killed mid-write leaves a partial last line; anything else is worth a warning too.
            warnings.warn(f"{path} line {number}: not a metrics row, skipped", stacklevel=2)
            continue
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                by_metric.setdefault(key, {})[step] = float(value)  # a replayed step: the later wins
    return _as_series(by_metric)


def _read_tensorboard(tb_dir: Path) -> Series:
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    by_metric: dict[str, dict[int, float]] = {}
    # Each resume opens a new events file in the same folder; the accumulator reads them in order.
    accumulator = EventAccumulator(str(tb_dir), size_guidance={SCALARS: 0})  # 0 = keep every point
    accumulator.Reload()
    for tag in accumulator.Tags().get("scalars", []):
        for event in accumulator.Scalars(tag):
            if math.isfinite(event.value):
                by_metric.setdefault(tag, {})[int(event.step)] = float(event.value)
    if not by_metric:
        raise CurvesError(f"{tb_dir}: TensorBoard events hold no scalars")
    return _as_series(by_metric)


def _as_series(by_metric: dict[str, dict[int, float]]) -> Series:
    return {key: (sorted(points), [points[s] for s in sorted(points)]) for key, points in by_metric.items()}


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average over up to `window` points (the first points average what exists)."""
    if window <= 1:
        return list(values)
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


# --------------------------------------------------------------------------------------------------
# Drawing


def plot_runs(run_dirs: Sequence[str | Path], out_path: str | Path, smooth: int = 1,
              paper: str | None = None) -> list[str]:
    """Draw the panels for `run_dirs` overlaid into `out_path` (PNG); returns the panel titles drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if paper not in (None, "deepseek"):
        raise ValueError(f"--paper: only 'deepseek' has reference ranges, got {paper!r}")
    if not run_dirs:
        raise CurvesError("no run directory given")
    runs = {label: read_run(d) for label, d in zip(_labels(run_dirs), run_dirs, strict=True)}
    logged = set().union(*(series.keys() for series in runs.values()))
    panels = [p for p in PANELS if p.always or p.metric in logged]
    if any(EVAL_ACCURACY.match(key) for key in logged):
        panels.append(EVAL_PANEL)

    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.8 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, panel in zip(axes.flat, panels, strict=False):
        drawn = False
        for r, (label, series) in enumerate(runs.items()):
            color = colors[r % len(colors)]
            if panel is EVAL_PANEL:
                drawn |= _draw_eval(ax, series, label, color)
            elif panel.metric in series:
                _draw_line(ax, *series[panel.metric], label, color, smooth)
                drawn = True
        if paper == "deepseek":
            _draw_paper_ranges(ax, panel)
        if not drawn:
            ax.text(0.5, 0.5, f"no run logged\n{panel.metric}", ha="center", va="center",
                    transform=ax.transAxes, color="0.5")
        ax.set_title(panel.title)
        ax.set_xlabel("step")
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return [p.title for p in panels]


def _labels(run_dirs: Sequence[str | Path]) -> list[str]:
    """Legend names: each run dir's name, with its parent added where two names collide."""
    paths = [Path(d).resolve() for d in run_dirs]
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def _draw_line(ax, steps: list[int], values: list[float], label: str, color: str, window: int) -> None:
    if window > 1:
        ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(steps, moving_average(values, window), color=color, label=label, linewidth=1.6)
    else:
        ax.plot(steps, values, color=color, label=label, linewidth=1.4)


def _draw_eval(ax, series: Series, label: str, color: str) -> bool:
    markers = "osD^vP*Xh"
    accuracy = sorted((m.group(1), key) for key in series if (m := EVAL_ACCURACY.match(key)))
    for i, (benchmark, key) in enumerate(accuracy):
        steps, values = series[key]
        ax.plot(steps, values, color=color, marker=markers[i % len(markers)], markersize=4,
                linestyle=("-", "--", ":", "-.")[i % 4], label=f"{label} {benchmark} {key.rsplit('/', 1)[1]}")
    return bool(accuracy)


def _draw_paper_ranges(ax, panel: Panel) -> None:
    """What the paper reports for DeepSeek-1.5B: entropy 1.2-1.4 throughout; reward (+/-1 scale) from
    about -0.6 to +0.4; response length from 7-8k tokens to 4-5k by step 1,000, then flat."""
    style = {"color": "tab:gray", "alpha": 0.18, "linewidth": 0}
    if panel.metric == "train/entropy":
        ax.axhspan(1.2, 1.4, label=PAPER_LABEL, **style)
    elif panel.metric == "train/reward_mean":
        ax.axhline(-0.6, color="tab:gray", linestyle="--", linewidth=1, label=f"{PAPER_LABEL}, +/-1 scale")
        ax.axhline(0.4, color="tab:gray", linestyle="--", linewidth=1)
        ax.annotate("paper start ~ -0.6", (0.01, -0.6), xycoords=("axes fraction", "data"),
                    va="bottom", fontsize="x-small", color="0.35")
        ax.annotate("paper later ~ +0.4", (0.01, 0.4), xycoords=("axes fraction", "data"),
                    va="bottom", fontsize="x-small", color="0.35")
    elif panel.metric == "train/response_length_mean":
        ax.fill_between([0, 100], 7000, 8000, label=PAPER_LABEL, **style)
        ax.fill_between([1000, PAPER_STEPS], 4000, 5000, **style)
        ax.annotate("paper: 7-8k at start", (0, 8000), va="bottom", fontsize="x-small", color="0.35")
        ax.annotate("paper: 4-5k from step 1,000", (1000, 5000), va="bottom", fontsize="x-small", color="0.35")


# --------------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m justrl_min.curves", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("-o", "--out", default="curves.png", help="output PNG")
    p.add_argument("--smooth", type=int, default=1, metavar="W", help="trailing moving average over W steps")
    p.add_argument("--paper", choices=("deepseek",), default=None,
                   help="shade the ranges the JustRL paper reports for this model")
    args = p.parse_args(argv)
    if args.smooth < 1:
        p.error("--smooth must be >= 1")
    try:
        titles = plot_runs(args.run_dirs, args.out, smooth=args.smooth, paper=args.paper)
    except CurvesError as e:
        print(f"curves: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({', '.join(titles)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
