"""Run health: the RL debugging checklist as checks over the step metrics.

A practitioner watching a GRPO/PPO run looks for the same things on every dashboard; each is a check
here, fed one step-metrics dict at a time (the trainer's, live, or a finished run's, by the doctor):

- entropy_start: entropy in a sane band at the start (a real reasoning model: about 1.5-2 nats);
- entropy_collapse: the smoothed entropy falls below a share of its recent peak (premature collapse);
- reward_flat: accuracy does not rise (a learning-rate, batch or reward bug);
- reward_drop: the smoothed accuracy falls well below its best so far;
- reward_plateau / eval_plateau: learning has stopped: the smoothed accuracy has not risen within a
  window, or the in-training evaluation has not beaten its best for some evaluations (with
  train.stop_on_plateau the run stops on either);
- length_drift / truncation: mean response length moves by more than a fraction over a phase, or more
  responses hit the length limit (the policy found that longer guesses pay);
- kl: KL to the reference above a bound (only when a reference is loaded);
- no_signal: groups all right or all wrong (zero advantage) dominate, so learning stops;
- grad_norm_spike / clip_frac_spike: a step far above the median of the steps before it;
- skipped_steps: optimizer steps skipped for a non-finite loss or gradient;
- verifier_timeouts: the verifier timed out or failed on some responses.

Accuracy (`train/accuracy`, the verifier's share correct) stands for the reward in the reward checks:
it reads the same whatever `reward.correct` / `reward.incorrect` are. A failing check opens an
*episode*, reported once when it opens and closed when the check passes again.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from justrl_min.config import HealthConfig

ENTROPY, ACCURACY, LENGTH = "train/entropy", "train/accuracy", "train/response_length_mean"
TRUNCATED, KL, GRAD_NORM, CLIP = "train/truncated_frac", "train/kl", "train/grad_norm", "train/clip_frac"
SOLVE_NONE, SOLVE_ALL, SKIPPED = "train/solve_none_frac", "train/solve_all_frac", "train/skipped_steps"
TIMEOUTS, ERRORS, REWARD = "train/reward_timeouts", "train/reward_errors", "train/reward_mean"
EVAL_AVERAGE = "eval/overall/avg"
PLATEAU_CHECKS = ("reward_plateau", "eval_plateau")
"""The checks train.stop_on_plateau stops a run on."""


class Series:
    """One metric's values so far, raw and smoothed (a debiased EMA, as TensorBoard's smoothing:
    the first point equals the raw value instead of being pulled toward 0)."""

    def __init__(self, span: int):
        self.beta = 1.0 - 2.0 / (span + 1)
        self.steps: list[int] = []
        self.raw: list[float] = []
        self.smooth: list[float] = []
        self._biased = 0.0

    def add(self, step: int, value: float) -> None:
        self._biased = self.beta * self._biased + (1.0 - self.beta) * value
        self.steps.append(step)
        self.raw.append(value)
        self.smooth.append(self._biased / (1.0 - self.beta ** len(self.raw)) if self.beta > 0 else value)


class History:
    """Every numeric metric seen, per metric; `fresh` holds the metrics of the latest step only."""

    def __init__(self, span: int):
        self.span = span
        self.series: dict[str, Series] = {}
        self.step = 0
        self.fresh: set[str] = set()

    def add(self, step: int, metrics: Mapping[str, object]) -> None:
        self.step = step
        self.fresh = set()
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.series.setdefault(key, Series(self.span)).add(step, float(value))
                self.fresh.add(key)

    def get(self, metric: str) -> Series | None:
        """The metric's series when this step logged it, else None (the check does not apply)."""
        return self.series[metric] if metric in self.fresh else None


@dataclass(frozen=True)
class Finding:
    """One check's verdict on one step: `badness` orders findings (higher is worse), `text` says it."""
    ok: bool
    badness: float
    text: str


@dataclass
class Episode:
    """Consecutive steps on which a check failed: the finding that opened it (what was reported
    live) and its worst one."""
    check: str
    title: str
    first_step: int
    last_step: int
    opened: Finding
    worst: Finding

    @property
    def steps(self) -> str:
        return f"step {self.first_step}" if self.first_step == self.last_step else \
            f"steps {self.first_step}-{self.last_step}"

    @property
    def message(self) -> str:
        return f"health warning [{self.check}] {self.title}: {self.opened.text}"


# --------------------------------------------------------------------------------------------------
# The checks: each a function of the thresholds and the history, with a name and the curve panel it
# is drawn on.


@dataclass(frozen=True)
class Check:
    name: str
    title: str
    panel: str
    evaluate: Callable[[History], Finding | None]


def entropy_start(c: HealthConfig, h: History) -> Finding | None:
    s = h.get(ENTROPY)
    if s is None or len(s.raw) > c.entropy_start_steps:
        return None
    v = s.raw[-1]
    outside = max(c.entropy_start_min - v, v - c.entropy_start_max, 0.0)
    return Finding(outside == 0, outside, f"entropy {v:.3g} nats/token at step {h.step} "
                                          f"(band {c.entropy_start_min:g}-{c.entropy_start_max:g})")


def entropy_collapse(c: HealthConfig, h: History) -> Finding | None:
    s, window = h.get(ENTROPY), c.entropy_collapse_window
    if s is None or len(s.smooth) < 2:
        return None
    peak = max(s.smooth[-window - 1:-1])
    share = s.smooth[-1] / peak if peak > 0 else 1.0
    return Finding(share >= c.entropy_collapse_ratio, 1.0 - share,
                   f"smoothed entropy {s.smooth[-1]:.3g}, {share:.0%} of its peak {peak:.3g} in the "
                   f"{window} steps before (limit {c.entropy_collapse_ratio:.0%})")


def reward_flat(c: HealthConfig, h: History) -> Finding | None:
    s, window = h.get(ACCURACY), c.reward_flat_window
    if s is None or len(s.raw) < 2 * window:
        return None
    first = statistics.fmean(s.raw[:window])
    latest = statistics.fmean(s.raw[-window:])
    rise = latest - first
    return Finding(rise >= c.reward_flat_min_rise, -rise,
                   f"accuracy {latest:.3f} over the last {window} steps against {first:.3f} over the "
                   f"first {window}: {rise:+.3f} (needs {c.reward_flat_min_rise:+g})")


def reward_drop(c: HealthConfig, h: History) -> Finding | None:
    s = h.get(ACCURACY)
    if s is None or len(s.smooth) < 2:
        return None
    best = max(s.smooth[:-1])
    drop = best - s.smooth[-1]
    return Finding(drop <= c.reward_drop_max, drop,
                   f"smoothed accuracy {s.smooth[-1]:.3f}, {max(drop, 0):.3f} below its best {best:.3f} "
                   f"(limit {c.reward_drop_max:g})")


def reward_plateau(c: HealthConfig, h: History) -> Finding | None:
    s, window = h.get(ACCURACY), c.plateau_window
    if s is None or len(s.smooth) <= window:
        return None
    start = s.smooth[-window - 1]
    rise = max(s.smooth[-window:]) - start
    return Finding(rise >= c.plateau_min_rise, -rise,
                   f"smoothed accuracy rose {rise:+.4f} in the last {window} steps, from {start:.3f} "
                   f"(needs {c.plateau_min_rise:+g})")


def eval_plateau(c: HealthConfig, h: History) -> Finding | None:
    s, patience = h.get(EVAL_AVERAGE), c.eval_patience
    if s is None or len(s.raw) <= patience:
        return None
    best_before, recent = max(s.raw[:-patience]), max(s.raw[-patience:])
    return Finding(recent > best_before, best_before - recent,
                   f"{EVAL_AVERAGE} {recent:.4f} at best over the last {patience} evaluations, not above "
                   f"{best_before:.4f} before them")


def length_drift(c: HealthConfig, h: History) -> Finding | None:
    s, window = h.get(LENGTH), c.length_window
    if s is None or len(s.smooth) <= window or s.smooth[-window - 1] <= 0:
        return None
    before = s.smooth[-window - 1]
    change = s.smooth[-1] / before - 1.0
    return Finding(abs(change) <= c.length_drift_max, abs(change),
                   f"smoothed mean length {s.smooth[-1]:.4g} tokens, {change:+.0%} from {before:.4g} "
                   f"{window} steps before (limit +-{c.length_drift_max:.0%})")


def truncation(c: HealthConfig, h: History) -> Finding | None:
    s, window = h.get(TRUNCATED), c.length_window
    if s is None:
        return None
    now = s.smooth[-1]
    text = f"smoothed truncated share {now:.3f} (limit {c.truncation_max:g})"
    excess = now - c.truncation_max
    if len(s.smooth) > window:
        rise = now - s.smooth[-window - 1]
        excess = max(excess, rise - c.truncation_rise)
        text += f", {rise:+.3f} over {window} steps (limit {c.truncation_rise:+g})"
    return Finding(excess <= 0, excess, text)


def kl_bound(c: HealthConfig, h: History) -> Finding | None:
    s = h.get(KL)
    return None if s is None else Finding(s.smooth[-1] <= c.kl_max, s.smooth[-1],
                                          f"smoothed KL {s.smooth[-1]:.3g} (limit {c.kl_max:g})")


def no_signal(c: HealthConfig, h: History) -> Finding | None:
    none, every = h.get(SOLVE_NONE), h.get(SOLVE_ALL)
    if none is None or every is None:
        return None
    share = none.smooth[-1] + every.smooth[-1]  # the EMA is linear: the sum's EMA
    return Finding(share <= c.no_signal_max, share,
                   f"{share:.0%} of groups all wrong ({none.smooth[-1]:.0%}) or all right "
                   f"({every.smooth[-1]:.0%}), smoothed (limit {c.no_signal_max:.0%})")


def spike(c: HealthConfig, h: History, metric: str, label: str, floor: float) -> Finding | None:
    s, window = h.get(metric), c.spike_window
    if s is None or len(s.raw) < min(5, window) + 1:
        return None
    median = statistics.median(s.raw[-window - 1:-1])
    value = s.raw[-1]
    times = value / median if median > 0 else (math.inf if value > 0 else 0.0)
    return Finding(times <= c.spike_factor or value <= floor, times,
                   f"{label} {value:.3g} at step {h.step}, {times:.1f}x the median {median:.3g} of the "
                   f"steps before (limit {c.spike_factor:g}x)")


def skipped_steps(_: HealthConfig, h: History) -> Finding | None:  # no threshold: any skip is one too many
    s = h.get(SKIPPED)
    if s is None:
        return None
    new = s.raw[-1] - (s.raw[-2] if len(s.raw) > 1 else 0.0)
    return Finding(new <= 0, new, f"{new:.0f} optimizer steps skipped at step {h.step} (non-finite loss "
                                  f"or gradient; {s.raw[-1]:.0f} in all)")


def verifier_timeouts(c: HealthConfig, h: History) -> Finding | None:
    timeouts, errors = h.get(TIMEOUTS), h.get(ERRORS)
    if timeouts is None and errors is None:
        return None
    t = timeouts.raw[-1] if timeouts else 0.0
    e = errors.raw[-1] if errors else 0.0
    return Finding(t + e <= c.verifier_timeouts_max, t + e,
                   f"{t:.0f} verifier timeouts and {e:.0f} errors at step {h.step} "
                   f"(limit {c.verifier_timeouts_max})")


CHECKS = [  # name, title, panel, fn(cfg, history)
    ("entropy_start", "entropy at the start", ENTROPY, entropy_start),
    ("entropy_collapse", "entropy collapse", ENTROPY, entropy_collapse),
    ("reward_flat", "reward rises", REWARD, reward_flat),
    ("reward_drop", "reward holds", REWARD, reward_drop),
    ("reward_plateau", "reward still rising", REWARD, reward_plateau),
    ("eval_plateau", "evaluation still improving", REWARD, eval_plateau),
    ("length_drift", "response length steady", LENGTH, length_drift),
    ("truncation", "truncation low and not growing", TRUNCATED, truncation),
    ("kl", "KL to the reference", KL, kl_bound),
    ("no_signal", "groups with signal", REWARD, no_signal),
    ("grad_norm_spike", "no gradient-norm spikes", GRAD_NORM,
     lambda c, h: spike(c, h, GRAD_NORM, "gradient norm", 0.0)),
    ("clip_frac_spike", "no clip-fraction spikes", CLIP,
     lambda c, h: spike(c, h, CLIP, "clip fraction", c.clip_frac_spike_min)),
    ("skipped_steps", "no skipped steps", GRAD_NORM, skipped_steps),
    ("verifier_timeouts", "verifier answers in time", REWARD, verifier_timeouts),
]


def build_checks(cfg: HealthConfig) -> list[Check]:
    return [Check(name, title, panel, functools.partial(fn, cfg)) for name, title, panel, fn in CHECKS]


# --------------------------------------------------------------------------------------------------
# The monitor: checks over a stream of steps, grouped into episodes


@dataclass
class CheckSummary:
    """What one check found over a whole run: its episodes, and its worst step (None: never applied)."""
    name: str
    title: str
    panel: str
    episodes: list[Episode] = field(default_factory=list)
    worst: Finding | None = None

    @property
    def status(self) -> str:
        return "warn" if self.episodes else ("pass" if self.worst is not None else "n/a")


class HealthMonitor:
    """Feed it each step's metrics in order; `observe` returns the episodes that open at that step.

    `HealthMonitor(None)` checks nothing (log.health=false). `history` replays earlier steps silently
    (a resumed run), so an episode already reported is not reported again."""

    def __init__(self, cfg: HealthConfig | None, history: Iterable[Mapping[str, object]] = ()):
        self.enabled = cfg is not None
        cfg = cfg or HealthConfig()
        self.history = History(cfg.smooth_steps)
        checks = build_checks(cfg)
        self.summaries = {c.name: CheckSummary(c.name, c.title, c.panel) for c in checks}
        self.checks = checks if self.enabled else []
        self.open: dict[str, Episode] = {}
        for row in history:
            self.observe(int(row["step"]), row)

    def observe(self, step: int, metrics: Mapping[str, object]) -> list[Episode]:
        self.history.add(step, metrics)
        opened = []
        for check in self.checks:
            finding = check.evaluate(self.history)
            if finding is None:
                continue
            summary = self.summaries[check.name]
            if summary.worst is None or finding.badness > summary.worst.badness:
                summary.worst = finding
            episode = self.open.get(check.name)
            if finding.ok:
                self.open.pop(check.name, None)
            elif episode is None:
                episode = self.open[check.name] = Episode(check.name, check.title, step, step, finding, finding)
                summary.episodes.append(episode)
                opened.append(episode)
            else:
                episode.last_step = step
                if finding.badness > episode.worst.badness:
                    episode.worst = finding
        return opened

    def summary(self) -> list[CheckSummary]:
        return list(self.summaries.values()) if self.enabled else []

