"""Health checks: each check's verdict on hand-made step metrics, episodes reported once, a resumed run's
history replayed silently, events kept apart from metrics, and a live warning from the trainer."""

import dataclasses
from pathlib import Path

import pytest

from justrl_min import health
from justrl_min.config import HealthConfig, load_recipe
from justrl_min.tracking import Tracker, read_events, read_metrics

ROOT = Path(__file__).resolve().parents[2]
RAW = HealthConfig(smooth_steps=1)  # span 1: the smoothed values are the raw ones, so the expected values are plain


def feed(cfg: HealthConfig, metric_rows: list[dict]) -> dict[str, list[tuple[int, int]]]:
    """Run the monitor over rows (step = position from 1); returns each check's episodes as (first, last)."""
    monitor = health.HealthMonitor(cfg)
    for step, metrics in enumerate(metric_rows, 1):
        monitor.observe(step, metrics)
    return {s.name: [(e.first_step, e.last_step) for e in s.episodes] for s in monitor.summary() if s.episodes}


def column(metric: str, values: list[float]) -> list[dict]:
    return [{metric: v} for v in values]


def test_debiased_ema():
    # span 3 -> weight 2 / (3 + 1) = 0.5. Biased: 0.5*2 = 1, then 0.5*1 + 0.5*4 = 2.5;
    # debiased by 1 - 0.5^t: 1 / 0.5 = 2 (the first value itself), 2.5 / 0.75 = 3.3333.
    series = health.Series(3)
    series.add(1, 2.0)
    series.add(2, 4.0)
    assert series.smooth == pytest.approx([2.0, 10 / 3], abs=1e-12)
    assert series.raw == [2.0, 4.0]


def test_entropy_outside_the_start_band_is_one_episode_over_the_first_steps():
    cfg = dataclasses.replace(RAW, entropy_start_min=1.0, entropy_start_max=2.5, entropy_start_steps=3)
    # Steps 1-3 are checked (0.2 < 1.0), step 4 is past the start: the episode is 1-3.
    assert feed(cfg, column(health.ENTROPY, [0.2, 0.2, 0.2, 0.2]))["entropy_start"] == [(1, 3)]
    assert "entropy_start" not in feed(cfg, column(health.ENTROPY, [1.6, 1.7, 1.6]))


def test_sudden_entropy_drop_is_a_collapse_and_a_slow_fall_is_not():
    cfg = dataclasses.replace(RAW, entropy_start_min=0.0, entropy_collapse_ratio=0.5, entropy_collapse_window=3)
    # 0.3 / peak 1.5 = 20% < 50% at step 4.
    assert feed(cfg, column(health.ENTROPY, [1.5, 1.5, 1.5, 0.3]))["entropy_collapse"] == [(4, 4)]
    # Each step 90% of the one before; within 3 steps the worst is 0.9^3 = 73% of the peak.
    slow = [1.5 * 0.9 ** i for i in range(30)]
    assert "entropy_collapse" not in feed(cfg, column(health.ENTROPY, slow))


def test_flat_accuracy_warns_and_rising_accuracy_does_not():
    cfg = dataclasses.replace(RAW, reward_flat_window=2, reward_flat_min_rise=0.05)
    # Step 4: last two steps average 0.51, first two 0.50: +0.01 < +0.05.
    assert feed(cfg, column(health.ACCURACY, [0.5, 0.5, 0.52, 0.5]))["reward_flat"] == [(4, 4)]
    # 0.55 against 0.35: +0.2.
    assert "reward_flat" not in feed(cfg, column(health.ACCURACY, [0.3, 0.4, 0.5, 0.6]))


def test_accuracy_that_stops_rising_within_the_window_is_a_plateau():
    cfg = dataclasses.replace(RAW, plateau_window=3, plateau_min_rise=0.05)
    # Step 4 looks at steps 2-4 against step 1's 0.30: best 0.41, +0.11. Step 5: 0.42 against 0.35 (+0.07).
    # Step 6: steps 4-6 against step 3's 0.40: best 0.42, +0.02 < 0.05, a plateau from there.
    rows = column(health.ACCURACY, [0.30, 0.35, 0.40, 0.41, 0.42, 0.42, 0.42])
    assert feed(cfg, rows)["reward_plateau"] == [(6, 7)]
    assert "reward_plateau" not in feed(cfg, column(health.ACCURACY, [0.1 * i for i in range(10)]))


def test_an_evaluation_that_does_not_beat_its_best_for_the_patience_is_a_plateau():
    cfg = dataclasses.replace(RAW, eval_patience=2)
    # Evaluations (every other step) 0.2, 0.3, 0.3, 0.25: at the fourth, the last two (0.3, 0.25) do not beat
    # 0.3; at the third, the last two (0.3, 0.3) beat 0.2. Steps without an evaluation are not judged.
    rows = [{health.EVAL_AVERAGE: v} if v is not None else {} for v in (0.2, None, 0.3, None, 0.3, None, 0.25)]
    assert feed(cfg, rows)["eval_plateau"] == [(7, 7)]


def test_accuracy_falling_below_its_best_is_a_drop():
    cfg = dataclasses.replace(RAW, reward_drop_max=0.15)
    # Step 3: 0.8 - 0.6 = 0.2 > 0.15; step 4: 0.8 - 0.7 = 0.1, recovered.
    assert feed(cfg, column(health.ACCURACY, [0.5, 0.8, 0.6, 0.7]))["reward_drop"] == [(3, 3)]


def test_length_drift_and_truncation():
    cfg = dataclasses.replace(RAW, length_window=2, length_drift_max=0.5, truncation_max=0.1, truncation_rise=0.05)
    # Step 3 against step 1: 160 / 100 - 1 = +60% > 50%.
    assert feed(cfg, column(health.LENGTH, [100, 100, 160]))["length_drift"] == [(3, 3)]
    # Level: 0.2 > 0.1 at step 2. Growth: 0.08 - 0.02 = +0.06 over 2 steps > +0.05 at step 3, below the level.
    assert feed(cfg, column(health.TRUNCATED, [0.0, 0.2, 0.0]))["truncation"] == [(2, 2)]
    assert feed(cfg, column(health.TRUNCATED, [0.02, 0.05, 0.08]))["truncation"] == [(3, 3)]


def test_kl_and_no_signal_bounds():
    cfg = dataclasses.replace(RAW, kl_max=0.1, no_signal_max=0.8)
    assert feed(cfg, column(health.KL, [0.05, 0.2, 0.05]))["kl"] == [(2, 2)]
    rows = [{health.SOLVE_NONE: 0.5, health.SOLVE_ALL: 0.2}, {health.SOLVE_NONE: 0.5, health.SOLVE_ALL: 0.4}]
    assert feed(cfg, rows)["no_signal"] == [(2, 2)]  # 0.7, then 0.9 > 0.8


def test_spikes_are_measured_against_the_median_of_the_steps_before():
    cfg = dataclasses.replace(RAW, spike_factor=5.0, spike_window=20, clip_frac_spike_min=0.05)
    # Step 6: 10 / median 1 = 10x > 5x; step 7: 4.9 / median 1 (of 1,1,1,1,1,10) = 4.9x.
    assert feed(cfg, column(health.GRAD_NORM, [1, 1, 1, 1, 1, 10, 4.9]))["grad_norm_spike"] == [(6, 6)]
    # A median of 0 makes any clip "infinitely" many times larger: 0.01 is still under the floor.
    assert "clip_frac_spike" not in feed(cfg, column(health.CLIP, [0, 0, 0, 0, 0, 0.01]))
    assert feed(cfg, column(health.CLIP, [0, 0, 0, 0, 0, 0.3]))["clip_frac_spike"] == [(6, 6)]


def test_skipped_steps_and_verifier_timeouts():
    # Cumulative count 0, 0, 1, 1: the skip happened at step 3 only.
    assert feed(RAW, column(health.SKIPPED, [0, 0, 1, 1]))["skipped_steps"] == [(3, 3)]
    rows = [{health.TIMEOUTS: 0, health.ERRORS: 0}, {health.TIMEOUTS: 2, health.ERRORS: 1}]
    assert feed(RAW, rows)["verifier_timeouts"] == [(2, 2)]


def test_a_warning_is_reported_once_per_episode():
    monitor = health.HealthMonitor(dataclasses.replace(RAW, kl_max=0.1))
    opened = [monitor.observe(step, {health.KL: kl}) for step, kl in enumerate([0.2, 0.3, 0.2, 0.0, 0.5], 1)]
    assert [[e.check for e in o] for o in opened] == [["kl"], [], [], [], ["kl"]]
    [summary] = [s for s in monitor.summary() if s.name == "kl"]
    assert [(e.first_step, e.last_step) for e in summary.episodes] == [(1, 3), (5, 5)]
    # The episode's text is that of its worst step (0.3).
    assert "0.3" in summary.episodes[0].worst.text and summary.status == "warn"
    assert opened[0][0].message == "health warning [kl] KL to the reference: smoothed KL 0.2 (limit 0.1)"


def test_replayed_history_does_not_report_again_and_off_reports_nothing():
    cfg = dataclasses.replace(RAW, kl_max=0.1)
    resumed = health.HealthMonitor(cfg, history=[{"step": 1, health.KL: 0.2}, {"step": 2, health.KL: 0.3}])
    assert resumed.observe(3, {health.KL: 0.4}) == []  # the episode opened at step 1 goes on
    assert resumed.observe(4, {health.KL: 0.0}) == [] and resumed.observe(5, {health.KL: 0.2})[0].first_step == 5
    off = health.HealthMonitor(None)
    assert off.observe(1, {health.KL: 5.0}) == [] and off.summary() == []


def test_checks_that_never_apply_are_not_applicable():
    monitor = health.HealthMonitor(RAW)
    monitor.observe(1, {health.REWARD: 0.5, "train/loss": float("nan")})
    assert {s.status for s in monitor.summary()} == {"n/a"}


def test_events_go_to_metrics_jsonl_and_tensorboard_apart_from_the_metric_rows(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracker = Tracker(tmp_path, total_steps=2)
    monitor = health.HealthMonitor(dataclasses.replace(RAW, kl_max=0.1))
    for step, kl in ((1, 0.05), (2, 0.5)):
        tracker.log(step, {health.KL: kl})
        tracker.log_events(monitor.observe(step, {health.KL: kl}))
    tracker.close()
    assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2]
    [event] = read_events(tmp_path)
    assert event["step"] == 2 and event["event"] == "health/kl" and "smoothed KL 0.5" in event["message"]
    accumulator = EventAccumulator(str(tmp_path / "tb"))
    accumulator.Reload()
    assert "events/health/kl/text_summary" in accumulator.Tags()["tensors"]


def test_trainer_warns_live_once(warm_model, tmp_path, capsys):
    from justrl_min import trainer

    run_dir = tmp_path / "live"
    # A band no run meets: entropy_start fails on steps 1 and 2, one episode, one warning.
    trainer.train(load_recipe(ROOT / "recipes/tiny_cpu.yaml", [
        f"model.path={warm_model}", f"run.output_dir={tmp_path}", "run.name=live", "train.prompts_per_step=8",
        "train.mini_batch_prompts=4", "rollout.n=4", "train.steps=2", "reward.workers=1", "log.curves_at_end=false",
        "data.tiny_problems=64", "log.tensorboard=false", "health.entropy_start_max=0.001"]))
    events = read_events(run_dir)
    assert [(e["step"], e["event"]) for e in events] == [(1, "health/entropy_start")]
    assert capsys.readouterr().out.count("health warning [entropy_start]") == 1
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2]
