"""Metrics out: one flat dict of namespaced numbers per step to metrics.jsonl, TensorBoard and the
console (a tqdm bar on a terminal, one plain line per step otherwise, e.g. in CI logs).

Events (health warnings) go to the same places: a row `{"step": N, "event": NAME, "message": TEXT}`
in metrics.jsonl, a TensorBoard text entry under `events/NAME`, and a console line.
`read_metrics` returns the metric rows, `read_events` the event rows."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from justrl_min.health import Episode

CONSOLE_KEYS = (("reward", "train/reward_mean"), ("acc", "train/accuracy"), ("ent", "train/entropy"),
                ("len", "train/response_length_mean"), ("clip", "train/clip_frac"))


class Tracker:
    def __init__(self, run_dir: Path, *, total_steps: int, start_step: int = 0,
                 tensorboard: bool = True, hparams: dict[str, Any] | None = None, enabled: bool = True):
        self.enabled, self.run_dir, self.total_steps, self.start_step = enabled, run_dir, total_steps, start_step
        self.writer = self.bar = None
        self.started = time.monotonic()
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_file = open(run_dir / "metrics.jsonl", "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tb"))
            if hparams:
                table = "\n".join(f"|{k}|{v}|" for k, v in hparams.items())
                self.writer.add_text("hyperparameters", "|key|value|\n|-|-|\n" + table, 0)
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()}
        self.metrics_file.write(json.dumps({"step": step, **clean}) + "\n")
        self.metrics_file.flush()
        if self.writer is not None:
            for key, value in clean.items():
                if value is not None:
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()
        summary = " ".join(f"{name} {metrics[key]:.3g}" for name, key in CONSOLE_KEYS if key in metrics)
        if self.bar is not None:
            self.bar.set_postfix_str(summary, refresh=False)
            self.bar.update(step - self.bar.n)
        else:
            eta = (time.monotonic() - self.started) / max(step - self.start_step, 1) * (self.total_steps - step)
            print(f"step {step}/{self.total_steps} {summary} "
                  f"step_s {metrics.get('time/step_s', 0):.1f} eta {eta / 60:.1f}m", flush=True)

    def log_events(self, episodes: list[Episode]) -> None:
        """Health episodes that opened at this step: printed, and kept in metrics.jsonl and TensorBoard."""
        if not self.enabled or not episodes:  # most steps open none: `log` has flushed already
            return
        for episode in episodes:
            name = f"health/{episode.check}"
            self.metrics_file.write(json.dumps({"step": episode.first_step, "event": name,
                                                "message": episode.message}) + "\n")
            if self.writer is not None:
                self.writer.add_text(f"events/{name}", episode.message, episode.first_step)
            self.message(f"step {episode.first_step} {episode.message}")
        self.metrics_file.flush()
        if self.writer is not None:
            self.writer.flush()

    def write_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        if not self.enabled or not samples:
            return
        folder = self.run_dir / "samples"
        folder.mkdir(exist_ok=True)
        with open(folder / f"step_{step}.jsonl", "w") as f:
            f.writelines(json.dumps(sample) + "\n" for sample in samples)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        self.metrics_file.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The step rows of metrics.jsonl, in order (event rows left out)."""
    return [row for row in _rows(run_dir) if "event" not in row]


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    return [row for row in _rows(run_dir) if "event" in row]


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
