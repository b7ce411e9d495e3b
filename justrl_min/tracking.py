"""Metrics out: one flat dict of namespaced numbers per step to metrics.jsonl, TensorBoard and the
console (a tqdm bar on a terminal, one plain line per step otherwise, e.g. in CI logs)."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

CONSOLE_KEYS = (("reward", "train/reward_mean"), ("acc", "train/accuracy"), ("ent", "train/entropy"),
                ("len", "train/response_length_mean"), ("clip", "train/clip_frac"))


class Tracker:
    def __init__(self, run_dir: Path, *, total_steps: int, start_step: int = 0,
                 tensorboard: bool = True, hparams: dict[str, Any] | None = None, enabled: bool = True):
        self.enabled = enabled
        self.run_dir = run_dir
        self.total_steps = total_steps
        self.writer = None
        self.bar = None
        self.started = time.monotonic()
        self.start_step = start_step
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
            elapsed = time.monotonic() - self.started
            done = max(step - self.start_step, 1)
            eta = elapsed / done * (self.total_steps - step)
            print(f"step {step}/{self.total_steps} {summary} "
                  f"step_s {metrics.get('time/step_s', 0):.1f} eta {eta / 60:.1f}m", flush=True)

    def write_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        if not self.enabled or not samples:
            return
        folder = self.run_dir / "samples"
        folder.mkdir(exist_ok=True)
        with open(folder / f"step_{step}.jsonl", "w") as f:
            for sample in samples:
                f.write(json.dumps(sample) + "\n")

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
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
