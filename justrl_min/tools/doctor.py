"""The health checklist over a run's logged metrics: a report, and the curves with the flagged steps shaded.

    python -m justrl_min.tools.doctor RUN [RUN ...] [--paper deepseek] [-o health.png]

For each run: whether it finished, is still running or stopped early (a crash or a kill), where it
can resume from, then every check of `justrl_min.health` as PASS (with its worst step), WARN (each
episode's step range and values) or n/a (the run never logged what the check reads). Thresholds
are the run's own (the `health` section of RUN/config.yaml), else the defaults. It reads what the
trainer writes as it goes, so it works on a finished, running or crashed run alike. Exit status:
0 when every check passes, 1 when any warns, 2 when a run cannot be read.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from justrl_min.checkpoint import Checkpointer
from justrl_min.config import ConfigError, HealthConfig, load_recipe
from justrl_min.health import CheckSummary, HealthMonitor
from justrl_min.tools.curves import CurvesError, plot_runs, read_run

STILL_RUNNING_STEPS = 5
"""A run that logged within this many of its median steps (and two minutes) counts as running."""


@dataclass
class Diagnosis:
    run_dir: Path
    state: str
    """finished | running | stopped, with the detail after a colon."""
    notes: list[str]
    checks: list[CheckSummary]

    @property
    def healthy(self) -> bool:
        return all(c.status != "warn" for c in self.checks)


def diagnose(run_dir: str | Path, now: float | None = None) -> Diagnosis:
    """Replay a run's logged steps through the health checks (raises CurvesError if nothing is logged)."""
    run_dir = Path(run_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        series = read_run(run_dir)
    notes = [str(w.message) + " (a run killed mid-write leaves a partial last line)" for w in caught]
    rows = steps_as_rows(series)
    health, total_steps = HealthConfig(), None
    config = run_dir / "config.yaml"
    if config.is_file():
        try:
            cfg = load_recipe(config)
            health, total_steps = cfg.health, cfg.train.steps
        except ConfigError as e:
            notes.append(f"{config} does not load ({e}): default thresholds")
    else:
        notes.append(f"no {config}: default thresholds")
    monitor = HealthMonitor(health, rows)
    return Diagnosis(run_dir, run_state(run_dir, rows, total_steps, time.time() if now is None else now),
                     notes, monitor.summary())


def steps_as_rows(series: dict[str, tuple[list[int], list[float]]]) -> list[dict[str, float]]:
    """Per-metric series back into one dict per step, in step order."""
    by_step: dict[int, dict[str, float]] = {}
    for metric, (steps, values) in series.items():
        for step, value in zip(steps, values):
            by_step.setdefault(step, {"step": step})[metric] = value
    return [by_step[s] for s in sorted(by_step)]


def run_state(run_dir: Path, rows: list[dict[str, float]], total_steps: int | None, now: float) -> str:
    last = int(rows[-1]["step"]) if rows else 0
    latest = Checkpointer(run_dir, keep=1).latest()
    resume = (f"latest checkpoint {latest.name}; resume with python train.py {run_dir / 'config.yaml'} "
              f"run.resume=true" if latest else "no checkpoint yet")
    if total_steps is not None and last >= total_steps:
        return f"finished: {last} of {total_steps} steps"
    logged = [p for p in (run_dir / "metrics.jsonl", run_dir / "tb") if p.exists()]
    age = now - max(p.stat().st_mtime for p in logged) if logged else float("inf")
    step_times = [r["time/step_s"] for r in rows if "time/step_s" in r]
    patience = max(120.0, STILL_RUNNING_STEPS * statistics.median(step_times)) if step_times else 120.0
    of = f" of {total_steps}" if total_steps is not None else ""
    if age <= patience:
        return f"running: step {last}{of}, last logged {age:.0f} s ago"
    return f"stopped: at step {last}{of}, last logged {age / 60:.1f} min ago (crashed or killed); {resume}"


def report(d: Diagnosis) -> str:
    lines = [f"{d.run_dir}: {d.state}"]
    lines += [f"  note: {n}" for n in d.notes]
    width = max(len(c.title) for c in d.checks)
    for c in d.checks:
        if c.status == "warn":
            lines.append(f"  WARN  {c.title:<{width}}  {len(c.episodes)} episode(s)")
            lines += [f"          {e.steps}: {e.worst.text}" for e in c.episodes]
        elif c.status == "pass":
            lines.append(f"  pass  {c.title:<{width}}  worst: {c.worst.text}")
        else:
            lines.append(f"  n/a   {c.title:<{width}}  not logged by this run, or too few steps for it")
    warned = sum(c.status == "warn" for c in d.checks)
    lines.append(f"  => {'healthy' if not warned else f'{warned} check(s) warn'}")
    return "\n".join(lines)


def flagged_ranges(d: Diagnosis) -> dict[str, list[tuple[int, int]]]:
    """Each warning episode's steps, on the curve panel of its check."""
    ranges: dict[str, list[tuple[int, int]]] = {}
    for c in d.checks:
        ranges.setdefault(c.panel, []).extend((e.first_step, e.last_step) for e in c.episodes)
    return ranges


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m justrl_min.tools.doctor", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", metavar="RUN")
    p.add_argument("-o", "--out", default=None,
                   help="PNG of the curves with flagged steps shaded (default: RUN/health.png for one run, "
                        "health.png for several)")
    p.add_argument("--paper", choices=("deepseek",), default=None,
                   help="also draw the ranges the JustRL paper reports for this model")
    args = p.parse_args(argv)
    try:
        diagnoses = [diagnose(run) for run in args.run_dirs]
    except CurvesError as e:
        print(f"doctor: error: {e}", file=sys.stderr)
        return 2
    for d in diagnoses:
        print(report(d))
    out = Path(args.out) if args.out else (Path(args.run_dirs[0]) / "health.png" if len(args.run_dirs) == 1
                                           else Path("health.png"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a partial last line is already in the report's notes
        plot_runs(args.run_dirs, out, paper=args.paper, flagged=[flagged_ranges(d) for d in diagnoses])
    print(f"curves with flagged steps shaded: {out}")
    return 0 if all(d.healthy for d in diagnoses) else 1


if __name__ == "__main__":
    sys.exit(main())
