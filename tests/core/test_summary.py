"""summary.json and metrics.csv: what they hold, and that a resumed run keeps them consistent."""

import csv
import json
from pathlib import Path

from justrl_min import trainer
from justrl_min.config import load_recipe
from justrl_min.summary import config_hash, summarize, write_csv
from justrl_min.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[2]


def test_summary_has_final_and_best_metrics_time_and_tokens():
    cfg = load_recipe(None, ["train.prompts_per_step=2", "train.mini_batch_prompts=2", "rollout.n=4",
                                    "train.steps=10"])   # 8 responses a step
    rows = [
        {"step": 1, "train/reward_mean": 0.2, "train/accuracy": 0.2, "train/response_length_mean": 10.0,
         "time/step_s": 2.0, "throughput/tokens_per_s": 50.0, "train/grad_norm": 9.0},
        {"step": 2, "train/reward_mean": 0.6, "train/accuracy": None, "train/response_length_mean": 12.5,
         "time/step_s": 3.0, "throughput/tokens_per_s": 40.0, "eval/aime24/avg@32": 0.1},
        {"step": 3, "train/reward_mean": 0.4, "train/accuracy": 0.4, "train/response_length_mean": 5.0,
         "time/step_s": 1.0, "throughput/tokens_per_s": 100.0},
    ]
    s = summarize(rows, cfg, status="finished", wall_time_s=7.5, last_checkpoint=Path("runs/x/checkpoints/step_3"))
    assert s["steps"] == {"done": 3, "planned": 10} and s["final"] == rows[-1] and s["status"] == "finished"
    # highest value and its step; a non-finite (None) value is no candidate; grad norm is not a score
    assert s["best"] == {"train/reward_mean": {"value": 0.6, "step": 2}, "train/accuracy": {"value": 0.4, "step": 3},
                         "eval/aime24/avg@32": {"value": 0.1, "step": 2}}
    assert s["step_time_s"] == 6.0 and s["wall_time_s"] == 7.5
    # generated: mean length x 8 responses, summed (80 + 100 + 40); processed: tokens/s x step time (100 + 120 + 100)
    assert s["tokens"] == {"generated": 220, "processed": 320}
    assert s["last_checkpoint"] == "runs/x/checkpoints/step_3" and s["config_sha256"] == config_hash(cfg)


def test_config_hash_ignores_how_the_run_was_started_only():
    base = config_hash(load_recipe(None))
    assert config_hash(load_recipe(None, ["run.resume=true", "run.overwrite=true"])) == base
    assert config_hash(load_recipe(None, ["train.lr=2e-6"])) != base


def test_csv_columns_are_the_union_of_keys_in_order_of_first_appearance(tmp_path):
    rows = [{"step": 1, "a": 1.0}, {"step": 2, "b": 2.0, "a": None}, {"step": 3, "a": 3.0, "c": 0.5}]
    write_csv(rows, tmp_path / "metrics.csv")
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["step,a,b,c", "1,1.0,,", "2,,2.0,", "3,3.0,,0.5"]
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]  # the temporary file was renamed away


def test_a_resumed_run_rewrites_summary_and_csv_from_the_kept_rows(warm_model, tmp_path):
    run_dir = tmp_path / "run"

    def run(steps: int) -> None:
        trainer.train(load_recipe(ROOT / "recipes/tiny_cpu.yaml", [
            f"model.path={warm_model}", f"run.output_dir={tmp_path}", "run.name=run", f"train.steps={steps}",
            "train.prompts_per_step=8", "train.mini_batch_prompts=4", "rollout.n=4", "reward.workers=1",
            "log.curves_at_end=false", "log.tensorboard=false", "data.tiny_problems=64"]))

    run(2)
    first = json.loads((run_dir / "summary.json").read_text())
    assert first["status"] == "finished" and first["steps"] == {"done": 2, "planned": 2}
    assert first["last_checkpoint"].endswith("checkpoints/step_2")
    # A session that logged step 3 and died before its checkpoint: the resume redoes step 3.
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "train/from_a_crashed_session": 1.0}) + "\n")
    run(3)
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = read_metrics(run_dir)
    assert summary["steps"] == {"done": 3, "planned": 3} and summary["final"] == rows[-1]
    assert summary["last_checkpoint"].endswith("checkpoints/step_3")
    assert summary["wall_time_s"] > first["wall_time_s"]  # the sessions' times add up
    assert summary["step_time_s"] == sum(row["time/step_s"] for row in rows)
    with open(run_dir / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert [int(r["step"]) for r in table] == [1, 2, 3]
    assert "train/from_a_crashed_session" not in table[0]
    assert list(table[0]) == list(dict.fromkeys(key for row in rows for key in row))
    for row, line in zip(rows, table):
        assert all(float(line[key]) == value for key, value in row.items() if value is not None)
