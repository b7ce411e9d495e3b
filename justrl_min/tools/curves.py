"""Training curves of one or more runs, overlaid, to one PNG.

    python -m justrl_min.tools.curves runs/x [runs/y ...] -o curves.png [--smooth 10] [--paper deepseek]

Panels, each only when some run logged its metric: mean reward, entropy, mean response length (the
three dynamics the JustRL paper reports), truncated fraction, gradient norm, clip fraction, KL, the
critic's value loss and explained variance (algorithm.advantage=gae), and eval accuracy
(`eval/<benchmark>/avg@n`). Each line is an EMA (debiased, span `--smooth` steps, by default a
twentieth of the run) over the raw values, drawn faint behind it. The y axis is fitted to the data;
panels of quantities that cannot be negative (lengths, entropy, fractions, norms) start at 0, so
that noise of a fraction of a token does not fill the axis.

Each run is read from `RUN_DIR/metrics.jsonl`, or from the TensorBoard events under `RUN_DIR/tb/`
when there is no metrics.jsonl. A step logged twice (a resumed run replays the steps after its last
checkpoint) keeps the later value; event rows (health warnings) are not metrics. `--paper deepseek`
shades the ranges the paper reports for JustRL-DeepSeek-1.5B as bands over the run's own axes (a
short run is not stretched to the paper's 4,380 steps), and beside them, in their own colours, those
of its ablations (overlong penalty; + DeepScaleR's grader: entropy, AIME24); a band off the axes is
named in the panel.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from justrl_min.health import Series as SmoothedSeries

EVAL_ACCURACY = re.compile(r"^eval/([^/]+)/avg@(\d+)$")
PAPER_LABEL = "JustRL paper (DeepSeek-1.5B)"
MIN_RELATIVE_SPAN = 0.05
"""The y axis spans at least this share of the data's magnitude (a flat line stays flat)."""

Flagged = Mapping[str, Sequence[tuple[int, int]]]
"""panel metric -> step ranges (first, last) to shade, e.g. a health check's episodes."""


class CurvesError(ValueError):
    """A run directory that cannot be read, with the path named."""


@dataclass(frozen=True)
class Panel:
    title: str
    metric: str
    ylabel: str
    zero_based: bool
    """The quantity cannot be negative: the axis starts at 0."""


PANELS = (
    Panel("Mean reward", "train/reward_mean", "reward", False),
    Panel("Entropy", "train/entropy", "nats / token", True),
    Panel("Mean response length", "train/response_length_mean", "tokens", True),
    Panel("Truncated fraction", "train/truncated_frac", "share of responses at the length limit", True),
    Panel("Gradient norm", "train/grad_norm", "norm before clipping", True),
    Panel("Clip fraction", "train/clip_frac", "fraction of tokens", True),
    Panel("KL", "train/kl", "KL(policy || ref)", True),
    Panel("Value loss", "train/value_loss", "clipped value loss", True),
    Panel("Explained variance", "train/explained_variance", "1 - Var(R - V) / Var(R)", False),
)
EVAL_PANEL = Panel("Eval accuracy", "eval/*/avg@*", "avg@n", True)

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
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            step = int(row["step"])
            if "event" in row:  # a health warning, not a metric
                continue
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


def ema(values: Sequence[float], span: int) -> list[float]:
    """Debiased exponential moving average with weight 2 / (span + 1) (span 1: the values)."""
    smoothed = SmoothedSeries(span)
    for i, v in enumerate(values):
        smoothed.add(i, v)
    return smoothed.smooth


def auto_span(steps: int) -> int:
    """The default smoothing: a twentieth of the run, so that a short run and a long one read alike."""
    return max(1, round(steps / 20))


# --------------------------------------------------------------------------------------------------
# Drawing


def plot_runs(run_dirs: Sequence[str | Path], out_path: str | Path, smooth: int | None = None,
              paper: str | None = None, flagged: Sequence[Flagged] | None = None) -> list[str]:
    """Draw the panels for `run_dirs` overlaid into `out_path` (PNG); returns the panel titles drawn.

    `smooth`: EMA span in steps (None: `auto_span` of each run); `flagged`: one mapping per run of
    step ranges to shade on the panel of each metric, in the run's colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if paper not in (None, "deepseek"):
        raise ValueError(f"--paper: only 'deepseek' has reference ranges, got {paper!r}")
    if not run_dirs:
        raise CurvesError("no run directory given")
    runs = {label: read_run(d) for label, d in zip(_labels(run_dirs), run_dirs, strict=True)}
    flagged = list(flagged) if flagged is not None else [{} for _ in runs]
    logged = set().union(*(series.keys() for series in runs.values()))
    panels = [p for p in PANELS if p.metric in logged]
    if any(EVAL_ACCURACY.match(key) for key in logged):
        panels.append(EVAL_PANEL)
    if not panels:
        raise CurvesError(f"{', '.join(map(str, run_dirs))}: none of the plotted metrics "
                          f"({', '.join(p.metric for p in PANELS)}) was logged")

    rows, columns = grid(len(panels))
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.8 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, panel in zip(axes.flat, panels, strict=False):
        drawn: list[float] = []
        for r, (label, series) in enumerate(runs.items()):
            color = colors[r % len(colors)]
            if panel is EVAL_PANEL:
                drawn += _draw_eval(ax, series, label, color)
            elif panel.metric in series:
                steps, values = series[panel.metric]
                _draw_line(ax, steps, values, label, color, smooth or auto_span(len(steps)))
                drawn += values
            for first, last in flagged[r].get(panel.metric, ()):
                ax.axvspan(first - 0.5, last + 0.5, color=color, alpha=0.15, linewidth=0)
        ax.set(ylim=y_limits(drawn, panel.zero_based), title=panel.title, xlabel="step", ylabel=panel.ylabel)
        if paper == "deepseek":
            _draw_paper_ranges(ax, panel)
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


def grid(panels: int) -> tuple[int, int]:
    """(rows, columns) with as few empty cells as fit: 3 -> 1x3, 4 -> 2x2, 5-6 -> 2x3, 7-8 -> 2x4."""
    rows = 1 if panels <= 3 else 2 if panels <= 8 else math.ceil(panels / 4)
    return rows, math.ceil(panels / rows)


def y_limits(values: Sequence[float], zero_based: bool) -> tuple[float, float]:
    """The data's range plus 5% each side; from 0 for a non-negative quantity; never narrower than
    MIN_RELATIVE_SPAN of the data's magnitude, so rounding noise on a flat line stays flat."""
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    if zero_based and low >= 0:
        low = 0.0
    magnitude = max(abs(low), abs(high))
    missing = MIN_RELATIVE_SPAN * magnitude - (high - low)
    if missing > 0:
        low, high = low - missing / 2, high + missing / 2
    if high == low:  # all zero
        return -0.05, 1.0
    pad = 0.05 * (high - low)
    return (0.0 if zero_based and low >= 0 else low - pad), high + pad


def _labels(run_dirs: Sequence[str | Path]) -> list[str]:
    """Legend names: each run dir's name, with its parent added where two names collide."""
    paths = [Path(d).resolve() for d in run_dirs]
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def _draw_line(ax, steps: list[int], values: list[float], label: str, color: str, span: int) -> None:
    if span > 1:
        ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(steps, ema(values, span), color=color, label=f"{label} (EMA {span})", linewidth=1.6)
    else:
        ax.plot(steps, values, color=color, label=label, linewidth=1.4)


def _draw_eval(ax, series: Series, label: str, color: str) -> list[float]:
    markers = "osD^vP*Xh"
    accuracy = sorted((m.group(1), key) for key in series if (m := EVAL_ACCURACY.match(key)))
    drawn: list[float] = []
    for i, (benchmark, key) in enumerate(accuracy):
        steps, values = series[key]
        ax.plot(steps, values, color=color, marker=markers[i % len(markers)], markersize=4,
                linestyle=("-", "--", ":", "-.")[i % 4], label=f"{label} {benchmark} {key.rsplit('/', 1)[1]}")
        drawn += values
    return drawn


@dataclass(frozen=True)
class PaperBand:
    low: float
    high: float
    text: str
    from_step: int = 0
    to_step: int | None = None
    """The steps the paper reports it for; None: to the end of the run."""
    variant: str = "base"
    """The paper's run it belongs to: the base recipe, or one of its ablations (a key of VARIANT_COLORS)."""


OVERLONG = "+ overlong penalty"
OVERLONG_DEEPSCALER = "+ overlong penalty + DeepScaleR grader"
VARIANT_COLORS = {"base": "tab:gray", OVERLONG: "tab:orange", OVERLONG_DEEPSCALER: "tab:purple"}
# The ablations' levels are their plateaus (Fig. 3 runs went 3,000+ steps). The paper gives levels,
# not the step where they are reached; from step 1,000 (where the base run's length settles) is our
# choice, so that a run's first steps are not compared with a plateau.
PLATEAU_FROM = 1000

PAPER_BANDS = {
    # JustRL-DeepSeek-1.5B (paper Fig. 1): entropy 1.2-1.4 throughout; mean reward on the +/-1 scale
    # about -0.6 at the start and +0.4 later; mean response length 7-8k tokens at the start, 4-5k
    # from step 1,000 on. Ablations (paper Fig. 3, each on top of the base recipe): DAPO's overlong
    # penalty over the last 4,096 tokens collapses entropy to 0.5-0.6 (with or without DeepScaleR's
    # grader); AIME24 plateaus at ~55% (base), ~50% (+ overlong), ~45% (+ overlong + DeepScaleR
    # grader), drawn as +-2 points. Source: arXiv 2512.16649 Figs. 1 and 3, as summarised in
    # DESIGN.md section 4 and issue 21.
    "train/entropy": (PaperBand(1.2, 1.4, "paper: entropy 1.2-1.4"),
                      PaperBand(0.5, 0.6, "paper ablations: entropy collapses to 0.5-0.6", PLATEAU_FROM,
                                variant=OVERLONG)),
    "train/reward_mean": (PaperBand(-0.65, -0.55, "paper: reward ~ -0.6 at start (+/-1 scale)", 0, 100),
                          PaperBand(0.35, 0.45, "paper: reward ~ +0.4 later (+/-1 scale)", 1000)),
    "train/response_length_mean": (PaperBand(7000, 8000, "paper: 7-8k tokens at start", 0, 100),
                                   PaperBand(4000, 5000, "paper: 4-5k tokens from step 1,000", 1000)),
    EVAL_PANEL.metric: (PaperBand(0.53, 0.57, "paper: AIME24 ~55%", PLATEAU_FROM),
                        PaperBand(0.48, 0.52, "paper + overlong: AIME24 ~50%", PLATEAU_FROM, variant=OVERLONG),
                        PaperBand(0.43, 0.47, "paper + overlong + DeepScaleR: AIME24 ~45%", PLATEAU_FROM,
                                  variant=OVERLONG_DEEPSCALER)),
}


def _draw_paper_ranges(ax, panel: Panel) -> None:
    """The paper's ranges as bands within the run's own axes, one colour per paper run (the base
    recipe, each ablation): the axes are not moved to fit them, and a band outside them is named in
    a corner note instead."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    off_axes = []
    labelled = set()
    for band in PAPER_BANDS.get(panel.metric, ()):
        end = x1 if band.to_step is None else min(band.to_step, x1)
        if band.high < y0 or band.low > y1 or band.from_step > x1:
            off_axes.append(band.text)
            continue
        label = None if band.variant in labelled else (PAPER_LABEL if band.variant == "base"
                                                       else f"paper ablation: {band.variant}")
        labelled.add(band.variant)
        ax.fill_between([max(band.from_step, x0), end], band.low, band.high, color=VARIANT_COLORS[band.variant],
                        alpha=0.18, linewidth=0, label=label)
        ax.annotate(band.text, (max(band.from_step, x0), min(band.high, y1)), va="bottom", fontsize="x-small",
                    color="0.35")
    if off_axes:
        ax.text(0.99, 0.02, "off these axes:\n" + "\n".join(off_axes), transform=ax.transAxes, ha="right",
                va="bottom", fontsize="x-small", color="0.35")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)


# --------------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m justrl_min.tools.curves", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("-o", "--out", default="curves.png", help="output PNG")
    p.add_argument("--smooth", type=int, default=None, metavar="SPAN",
                   help="EMA span in steps (1: raw values; default: a twentieth of each run)")
    p.add_argument("--paper", choices=("deepseek",), default=None,
                   help="shade the ranges the JustRL paper reports for this model and its ablations")
    args = p.parse_args(argv)
    if args.smooth is not None and args.smooth < 1:
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
