"""Run health: the RL debugging checklist as checks over the step metrics.

A practitioner watching a GRPO/PPO run looks for the same things on every dashboard; each is a check
here, fed one step-metrics dict at a time (the trainer's, live, or a finished run's, by the doctor):

- entropy_start: entropy in a sane band at the start (a real reasoning model: about 1.5-2 nats);
- entropy_collapse: the smoothed entropy falls below a share of its recent peak (premature collapse);
- reward_flat: accuracy does not rise (a learning-rate, batch or reward bug);
- reward_drop: the smoothed accuracy falls well below its best so far;
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

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from justrl_min.config import HealthConfig

ENTROPY, ACCURACY, LENGTH = "train/entropy", "train/accuracy", "train/response_length_mean"
TRUNCATED, KL, GRAD_NORM, CLIP = "train/truncated_frac", "train/kl", "train/grad_norm", "train/clip_frac"
SOLVE_NONE, SOLVE_ALL, SKIPPED = "train/solve_none_frac", "train/solve_all_frac", "train/skipped_steps"
TIMEOUTS, ERRORS, REWARD = "train/reward_timeouts", "train/reward_errors", "train/reward_mean"


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
# The checks: each a small object with a name, the curve panel it is drawn on, and evaluate(history).


@dataclass(frozen=True)
class EntropyStart:
    low: float
    high: float
    steps: int
    name: str = "entropy_start"
    title: str = "entropy at the start"
    panel: str = ENTROPY

    def evaluate(self, h: History) -> Finding | None:
        s = h.get(ENTROPY)
        if s is None or len(s.raw) > self.steps:
            return None
        v = s.raw[-1]
        outside = max(self.low - v, v - self.high, 0.0)
        return Finding(outside == 0, outside, f"entropy {v:.3g} nats/token at step {h.step} "
                                              f"(band {self.low:g}-{self.high:g})")


@dataclass(frozen=True)
class EntropyCollapse:
    ratio: float
    window: int
    name: str = "entropy_collapse"
    title: str = "entropy collapse"
    panel: str = ENTROPY

    def evaluate(self, h: History) -> Finding | None:
        s = h.get(ENTROPY)
        if s is None or len(s.smooth) < 2:
            return None
        peak = max(s.smooth[-self.window - 1:-1])
        share = s.smooth[-1] / peak if peak > 0 else 1.0
        return Finding(share >= self.ratio, 1.0 - share,
                       f"smoothed entropy {s.smooth[-1]:.3g}, {share:.0%} of its peak {peak:.3g} in the "
                       f"{self.window} steps before (limit {self.ratio:.0%})")


@dataclass(frozen=True)
class RewardFlat:
    window: int
    min_rise: float
    name: str = "reward_flat"
    title: str = "reward rises"
    panel: str = REWARD

    def evaluate(self, h: History) -> Finding | None:
        s = h.get(ACCURACY)
        if s is None or len(s.raw) < 2 * self.window:
            return None
        first = statistics.fmean(s.raw[:self.window])
        latest = statistics.fmean(s.raw[-self.window:])
        rise = latest - first
        return Finding(rise >= self.min_rise, -rise,
                       f"accuracy {latest:.3f} over the last {self.window} steps against {first:.3f} over the "
                       f"first {self.window}: {rise:+.3f} (needs {self.min_rise:+g})")


@dataclass(frozen=True)
class RewardDrop:
    max_drop: float
    name: str = "reward_drop"
    title: str = "reward holds"
    panel: str = REWARD

    def evaluate(self, h: History) -> Finding | None:
        s = h.get(ACCURACY)
        if s is None or len(s.smooth) < 2:
            return None
        best = max(s.smooth[:-1])
        drop = best - s.smooth[-1]
        return Finding(drop <= self.max_drop, drop,
                       f"smoothed accuracy {s.smooth[-1]:.3f}, {max(drop, 0):.3f} below its best {best:.3f} "
                       f"(limit {self.max_drop:g})")


@dataclass(frozen=True)
class LengthDrift:
    max_change: float
    window: int
    name: str = "length_drift"
    title: str = "response length steady"
    panel: str = LENGTH

    def evaluate(self, h: History) -> Finding | None:
        s = h.get(LENGTH)
        if s is None or len(s.smooth) <= self.window or s.smooth[-self.window - 1] <= 0:
            return None
        before = s.smooth[-self.window - 1]
        change = s.smooth[-1] / before - 1.0
        return Finding(abs(change) <= self.max_change, abs(change),
                       f"smoothed mean length {s.smooth[-1]:.4g} tokens, {change:+.0%} from {before:.4g} "
                       f"{self.window} steps before (limit +-{self.max_change:.0%})")


@dataclass(frozen=True)
class Truncation:
    max_frac: float
    max_rise: float
    window: int
    name: str = "truncation"
    title: str = "truncation low and not growing"
    panel: str = TRUNCATED

    def evaluate(self, h: History) -> Finding | None:
        s = h.get(TRUNCATED)
        if s is None:
            return None
        now = s.smooth[-1]
        text = f"smoothed truncated share {now:.3f} (limit {self.max_frac:g})"
        excess = now - self.max_frac
        if len(s.smooth) > self.window:
            rise = now - s.smooth[-self.window - 1]
            excess = max(excess, rise - self.max_rise)
            text += f", {rise:+.3f} over {self.window} steps (limit {self.max_rise:+g})"
        return Finding(excess <= 0, excess, text)


@dataclass(frozen=True)
class KLBound:
    max_kl: float
    name: str = "kl"
    title: str = "KL to the reference"
    panel: str = KL

    def evaluate(self, h: History) -> Finding | None:
        s = h.get(KL)
        if s is None:
            return None
        return Finding(s.smooth[-1] <= self.max_kl, s.smooth[-1],
                       f"smoothed KL {s.smooth[-1]:.3g} (limit {self.max_kl:g})")


@dataclass(frozen=True)
class NoSignal:
    max_frac: float
    name: str = "no_signal"
    title: str = "groups with signal"
    panel: str = REWARD

    def evaluate(self, h: History) -> Finding | None:
        none, every = h.get(SOLVE_NONE), h.get(SOLVE_ALL)
        if none is None or every is None:
            return None
        share = none.smooth[-1] + every.smooth[-1]  # the EMA is linear: the sum's EMA
        return Finding(share <= self.max_frac, share,
                       f"{share:.0%} of groups all wrong ({none.smooth[-1]:.0%}) or all right "
                       f"({every.smooth[-1]:.0%}), smoothed (limit {self.max_frac:.0%})")


@dataclass(frozen=True)
class Spike:
    metric: str
    label: str
    factor: float
    window: int
    floor: float
    name: str
    title: str

    @property
    def panel(self) -> str:
        return self.metric

    def evaluate(self, h: History) -> Finding | None:
        s = h.get(self.metric)
        if s is None or len(s.raw) < min(5, self.window) + 1:
            return None
        median = statistics.median(s.raw[-self.window - 1:-1])
        value = s.raw[-1]
        times = value / median if median > 0 else (math.inf if value > 0 else 0.0)
        return Finding(times <= self.factor or value <= self.floor, times,
                       f"{self.label} {value:.3g} at step {h.step}, {times:.1f}x the median {median:.3g} of the "
                       f"steps before (limit {self.factor:g}x)")


@dataclass(frozen=True)
class SkippedSteps:
    name: str = "skipped_steps"
    title: str = "no skipped steps"
    panel: str = GRAD_NORM

    def evaluate(self, h: History) -> Finding | None:
        s = h.get(SKIPPED)
        if s is None:
            return None
        new = s.raw[-1] - (s.raw[-2] if len(s.raw) > 1 else 0.0)
        return Finding(new <= 0, new, f"{new:.0f} optimizer steps skipped at step {h.step} (non-finite loss "
                                      f"or gradient; {s.raw[-1]:.0f} in all)")


@dataclass(frozen=True)
class VerifierTimeouts:
    max_count: int
    name: str = "verifier_timeouts"
    title: str = "verifier answers in time"
    panel: str = REWARD

    def evaluate(self, h: History) -> Finding | None:
        timeouts, errors = h.get(TIMEOUTS), h.get(ERRORS)
        if timeouts is None and errors is None:
            return None
        t = timeouts.raw[-1] if timeouts else 0.0
        e = errors.raw[-1] if errors else 0.0
        return Finding(t + e <= self.max_count, t + e,
                       f"{t:.0f} verifier timeouts and {e:.0f} errors at step {h.step} (limit {self.max_count})")


def build_checks(cfg: HealthConfig) -> list:
    return [
        EntropyStart(cfg.entropy_start_min, cfg.entropy_start_max, cfg.entropy_start_steps),
        EntropyCollapse(cfg.entropy_collapse_ratio, cfg.entropy_collapse_window),
        RewardFlat(cfg.reward_flat_window, cfg.reward_flat_min_rise),
        RewardDrop(cfg.reward_drop_max),
        LengthDrift(cfg.length_drift_max, cfg.length_window),
        Truncation(cfg.truncation_max, cfg.truncation_rise, cfg.length_window),
        KLBound(cfg.kl_max),
        NoSignal(cfg.no_signal_max),
        Spike(GRAD_NORM, "gradient norm", cfg.spike_factor, cfg.spike_window, 0.0,
              "grad_norm_spike", "no gradient-norm spikes"),
        Spike(CLIP, "clip fraction", cfg.spike_factor, cfg.spike_window, cfg.clip_frac_spike_min,
              "clip_frac_spike", "no clip-fraction spikes"),
        SkippedSteps(),
        VerifierTimeouts(cfg.verifier_timeouts_max),
    ]


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

