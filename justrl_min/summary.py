"""The run at a glance: `runs/<name>/summary.json` and `metrics.csv` beside `metrics.jsonl`.

Both are rewritten from metrics.jsonl, the run's one record, at every checkpoint and at the end, each
atomically (a temporary file renamed over the old one). A resumed run has dropped the rows past its
checkpoint from metrics.jsonl before it redoes those steps, so both files always hold each step once.

summary.json: status (`finished`, `stopped` by a signal, `plateaued` by train.stop_on_plateau with its
`stop_reason`, or `running`: written at a checkpoint of a run still going, or one that crashed after
it), steps done and planned, the last row's metrics (`final`), the highest value and its step of
every reward, accuracy and evaluation metric (`best`), step time summed over the logged steps and wall
time summed over the sessions (start-up, evaluation and checkpoints included; a crashed session's time
after its last checkpoint is not known), tokens generated and processed, the sha256 of the resolved
config (how the run was started, `run.resume` and `run.overwrite`, left out) and the last checkpoint.

metrics.csv: one row per step, the columns the union of every row's keys in order of first
appearance (`step` first); a key a step did not log, or a non-finite value, is an empty cell.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import yaml

from justrl_min.config import Config, config_to_dict
from justrl_min.tracking import read_metrics

SUMMARY_FILE = "summary.json"
CSV_FILE = "metrics.csv"
BEST_PREFIXES = ("train/reward_mean", "train/accuracy", "reward/", "eval/")
"""Metrics whose best (highest) value is reported: the reward, accuracy, each reward term and
source, and evaluation scores."""
LAUNCH_KEYS = ("resume", "overwrite")
"""run.* keys that say how a run was started, not what it trains: left out of the config hash."""


def config_hash(cfg: Config) -> str:
    """sha256 of the resolved config (minus LAUNCH_KEYS), the same for a run and its resumptions."""
    tree = config_to_dict(cfg)
    tree["run"] = {k: v for k, v in tree["run"].items() if k not in LAUNCH_KEYS}
    return hashlib.sha256(yaml.safe_dump(tree, sort_keys=True).encode()).hexdigest()


def summarize(rows: list[dict[str, Any]], cfg: Config, *, status: str, wall_time_s: float,
              last_checkpoint: Path | None) -> dict[str, Any]:
    """summary.json's content from the metric rows (in step order)."""
    final = rows[-1] if rows else {}
    best: dict[str, dict[str, float]] = {}
    for row in rows:
        for key, value in row.items():
            if value is not None and key.startswith(BEST_PREFIXES) and (key not in best or value > best[key]["value"]):
                best[key] = {"value": value, "step": row["step"]}
    responses = cfg.responses_per_step
    return {
        "run": cfg.run.name,
        "status": status,
        "steps": {"done": final.get("step", 0), "planned": cfg.train.steps},
        "final": final,
        "best": best,
        "step_time_s": sum(row.get("time/step_s") or 0.0 for row in rows),
        "wall_time_s": wall_time_s,
        "tokens": {
            "generated": round(sum((row.get("train/response_length_mean") or 0.0) * responses for row in rows)),
            "processed": round(sum((row.get("throughput/tokens_per_s") or 0.0) * (row.get("time/step_s") or 0.0)
                                   for row in rows)),
        },
        "config_sha256": config_hash(cfg),
        "last_checkpoint": str(last_checkpoint) if last_checkpoint else None,
    }


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    columns = list(dict.fromkeys(key for row in [{"step": None}, *rows] for key in row))
    with _atomic(path) as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[TextIO]:
    """Open `path.tmp` for writing; on success rename it over `path`, else remove it."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", newline="") as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class RunSummary:
    """Writes summary.json and metrics.csv for one session of a run (rank 0 only: `enabled`).

    Wall time counts from this object's creation, plus what the run's summary.json held for earlier
    sessions when `resumed`."""

    def __init__(self, run_dir: Path, cfg: Config, *, resumed: bool, enabled: bool = True):
        self.run_dir, self.cfg, self.enabled = Path(run_dir), cfg, enabled
        self.started = time.monotonic()
        previous = self.run_dir / SUMMARY_FILE
        self.earlier_s = (json.loads(previous.read_text()).get("wall_time_s", 0.0)
                          if enabled and resumed and previous.is_file() else 0.0)

    def write(self, status: str, last_checkpoint: Path | None, reason: str | None = None) -> None:
        """`reason`: why the run stopped before train.steps (train.stop_on_plateau), as `stop_reason`."""
        if not self.enabled:
            return
        rows = read_metrics(self.run_dir)
        write_csv(rows, self.run_dir / CSV_FILE)
        summary = summarize(rows, self.cfg, status=status, last_checkpoint=last_checkpoint,
                            wall_time_s=self.earlier_s + time.monotonic() - self.started)
        if reason is not None:
            summary["stop_reason"] = reason
        with _atomic(self.run_dir / SUMMARY_FILE) as f:
            json.dump(summary, f, indent=1)

