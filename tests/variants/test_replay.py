"""train.replay_steps: a step's update equals that of a hand-built batch of its own and the kept rows,
and a replaying run resumes exactly."""

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from justrl_min import algo, trainer
from justrl_min.config import load_recipe
from justrl_min.dist import DistInfo
from justrl_min.model import MicroBatcher, TokenScorer, load_causal_lm, unflatten
from justrl_min.tracking import read_metrics
from justrl_min.variants.replay import ReplayBuffer
from tests import tiny_models

ROOT = Path(__file__).resolve().parents[2]
CAP = 1.5


def _batch(scorer, microbatches, prompts, responses, advantages) -> trainer.Batch:
    lengths = [len(r) for r in responses]
    mask = unflatten(torch.ones(sum(lengths)), lengths)
    old_logp, entropy = torch.zeros_like(mask), torch.zeros_like(mask)
    with torch.no_grad():
        microbatches.score(scorer, prompts, responses, list(range(len(responses))), old_logp, entropy)
    return trainer.Batch(prompts, responses, mask, old_logp, entropy, advantages=torch.tensor(advantages))


def _update(scorer, microbatches, rows: int) -> trainer.PolicyUpdate:
    objective = algo.policy_objective("ppo_clip", clip_low=0.2, clip_high=0.28, dual_clip=10.0)
    optimizer = torch.optim.SGD(scorer.parameters(), lr=0.5)
    return trainer.PolicyUpdate(scorer, optimizer, None, objective, microbatches, rows_per_minibatch=rows)


def test_replaying_one_step_is_the_update_of_both_steps_rows_with_their_stored_log_probs(tmp_path):
    torch.manual_seed(0)
    folder = tiny_models.save_random_model(tmp_path / "m", hidden=32, layers=1)
    scorer = TokenScorer(load_causal_lm(str(folder), dtype="float32"))
    microbatches = MicroBatcher(64, packed=False, device=torch.device("cpu"))
    prompts_a, responses_a = [[1, 2, 3], [1, 2, 3], [4, 5], [4, 5]], [[6, 7], [8], [9, 10, 11], [12, 13]]
    prompts_b, responses_b = [[7, 8, 9], [7, 8, 9], [3], [3]], [[20, 21, 22, 23], [24], [25], [26, 27]]
    advantages_a, advantages_b = [1.0, -1.0, 0.7, -0.7], [-1.0, 1.0, 1.0, -1.0]

    # Step 1 samples A: the log-probs of the weights that sampled it, computed by hand, are its behaviour.
    fresh_a = _batch(scorer, microbatches, prompts_a, responses_a, advantages_a)
    behaviour_a = fresh_a.old_logp.clone()
    buffer = ReplayBuffer(steps=1, is_cap=CAP, info=DistInfo())
    assert buffer.extend(fresh_a, microbatches, scorer) is fresh_a          # nothing kept yet
    update = _update(scorer, microbatches, rows=4)
    _, updated = update(fresh_a)
    buffer.remember(1, fresh_a, updated)

    # Step 2 samples B; the update trains on B and A.
    fresh_b = _batch(scorer, microbatches, prompts_b, responses_b, advantages_b)
    before = copy.deepcopy(scorer.state_dict())
    update.rows_per_minibatch = 8
    update(buffer.extend(fresh_b, microbatches, scorer))
    replayed = {k: v.clone() for k, v in scorer.state_dict().items()}

    # By hand: B's rows, then A's with the proximal policy's log-probs as old ones, each token weighted
    # by min(pi_proximal / pi_behaviour, cap), A's advantages as scored in step 1.
    scorer.load_state_dict(before)
    proximal_a = _batch(scorer, microbatches, prompts_a, responses_a, advantages_a).old_logp
    width = 4
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
    weights_a = torch.exp(proximal_a - behaviour_a).clamp(max=CAP) * fresh_a.mask
    assert (weights_a != fresh_a.mask).any()                              # the policy moved: weights differ from 1
    by_hand = trainer.Batch(prompts_b + prompts_a, responses_b + responses_a,
                            torch.cat([pad(fresh_b.mask), pad(fresh_a.mask)]),
                            torch.cat([pad(fresh_b.old_logp), pad(proximal_a)]), torch.zeros(8, width),
                            tis_weights=torch.cat([pad(fresh_b.mask), pad(weights_a)]),
                            advantages=torch.tensor(advantages_b + advantages_a))
    update(by_hand)
    for name, value in scorer.state_dict().items():
        torch.testing.assert_close(replayed[name], value, rtol=0, atol=0, msg=name)
    assert not torch.equal(replayed["causal_lm.lm_head.weight"], before["causal_lm.lm_head.weight"])


def test_the_buffer_keeps_the_last_k_steps_and_says_how_much_it_replayed(tmp_path):
    torch.manual_seed(0)
    folder = tiny_models.save_random_model(tmp_path / "m", hidden=32, layers=1)
    scorer = TokenScorer(load_causal_lm(str(folder), dtype="float32"))
    microbatches = MicroBatcher(64, packed=False, device=torch.device("cpu"))
    buffer = ReplayBuffer(steps=2, is_cap=CAP, info=DistInfo())
    for step in (1, 2, 3):
        fresh = _batch(scorer, microbatches, [[1, step]], [[2] * step], [1.0])
        buffer.remember(step, fresh, fresh)
    assert [kept.step for kept in buffer.kept] == [2, 3]
    extended = buffer.extend(_batch(scorer, microbatches, [[5]], [[6]], [0.5]), microbatches, scorer)
    assert extended.responses == [[6], [2, 2], [2, 2, 2]] and extended.mask.shape == (3, 3)
    metrics = buffer.metrics()
    assert metrics["replay/token_share"] == pytest.approx(5 / 6)
    assert metrics["replay/is_weight_mean"] == pytest.approx(1.0)          # nothing moved: ratio 1
    assert metrics["replay/is_capped_frac"] == 0.0


def _overrides(model: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f"model.path={model}", f"run.output_dir={run_dir.parent}", f"run.name={run_dir.name}",
            "train.prompts_per_step=8", "train.mini_batch_prompts=4", "rollout.n=4", "train.steps=4",
            "reward.workers=1", "log.curves_at_end=false", "data.tiny_problems=64", "log.tensorboard=false",
            "train.replay_steps=1", "checkpoint.every_steps=2", "checkpoint.keep=3", *extra]


def test_a_replaying_run_logs_its_share_and_resumes_exactly(warm_model, tmp_path):
    from safetensors.torch import load_file

    straight = tmp_path / "straight"
    trainer.train(load_recipe(ROOT / "recipes/tiny_cpu.yaml", _overrides(warm_model, straight)))
    metrics = read_metrics(straight)
    assert metrics[0]["replay/token_share"] == 0.0                           # step 1 has nothing to replay
    assert all(0.3 < m["replay/token_share"] < 0.7 for m in metrics[1:])    # then one step's worth beside its own
    assert all(0 < m["replay/is_weight_mean"] <= 2.0 for m in metrics[1:])
    kept = json.loads((straight / "checkpoints/step_2/replay/rank0.json").read_text())
    assert [row["step"] for row in kept] == [2] and len(kept[0]["responses"]) == 8 * 4
    assert load_file(straight / "checkpoints/step_2/replay/rank0.safetensors")["behaviour_logp_0"].shape[0] == 32

    # The same run, resumed from its step-2 checkpoint (as after a crash in step 3 or 4).
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed, symlinks=True)
    shutil.rmtree(resumed / "checkpoints/step_4")
    (resumed / "checkpoints/latest").unlink()
    trainer.train(load_recipe(ROOT / "recipes/tiny_cpu.yaml", _overrides(warm_model, resumed, "run.resume=true")))
    again = read_metrics(resumed)
    assert [m["step"] for m in again] == [1, 2, 3, 4]
    for a, b in zip(metrics[2:], again[2:], strict=True):
        for key in ("train/loss", "train/grad_norm", "train/reward_mean", "replay/token_share",
                    "replay/is_weight_mean", "replay/is_capped_frac"):
            assert a[key] == b[key], (a["step"], key)
