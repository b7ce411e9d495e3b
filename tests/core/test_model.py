"""Equivalences of the lean log-prob path: chunked = naive, packed = padded, accumulated = whole batch."""

import dataclasses

import pytest
import torch

from justrl_min import tiny
from justrl_min.config import load_recipe
from justrl_min.model import (
    MicroBatcher,
    TokenScorer,
    build_microbatch,
    plan_microbatches,
    split_microbatches,
    unflatten,
)
from justrl_min.trainer import Batch, PolicyUpdate

TEMPERATURE = 0.7


@pytest.fixture(scope="module")
def scorer():
    torch.manual_seed(0)
    model = tiny.build_model(tiny.build_tokenizer(), seed=0, hidden=32, layers=2).double()
    return TokenScorer(model)


def random_sequences(count, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, 255, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist()
               for _ in range(count)]
    responses = [torch.randint(0, 255, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g).tolist()
                 for _ in range(count)]
    return prompts, responses


def naive_logprobs_and_entropy(model, prompt, response):
    """The reference: full logits of the whole sequence, log_softmax over the vocabulary."""
    ids = torch.tensor([prompt + response])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1] / TEMPERATURE    # (n, V)
    logp_all = logits.log_softmax(-1)
    logp = logp_all.gather(-1, torch.tensor(response)[:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def test_chunked_equals_naive_values_and_gradients(scorer):
    prompts, responses = random_sequences(3)
    micro = build_microbatch(prompts, responses, [0, 1, 2], packed=True)
    scorer.zero_grad()
    logp, entropy = scorer(micro, TEMPERATURE, chunk_tokens=3)  # chunks straddle sequence boundaries
    (logp.sum() + 0.1 * entropy.sum()).backward()
    chunked_grads = {n: p.grad.clone() for n, p in scorer.named_parameters()}

    scorer.zero_grad()
    naive = [naive_logprobs_and_entropy(scorer.causal_lm, p, r) for p, r in zip(prompts, responses)]
    naive_logp = torch.cat([n[0] for n in naive])
    naive_entropy = torch.cat([n[1] for n in naive])
    (naive_logp.sum() + 0.1 * naive_entropy.sum()).backward()

    assert torch.allclose(logp, naive_logp, atol=1e-10)
    assert torch.allclose(entropy, naive_entropy, atol=1e-10)
    for name, param in scorer.named_parameters():
        assert torch.allclose(chunked_grads[name], param.grad, atol=1e-10), name


def test_packed_equals_padded(scorer):
    prompts, responses = random_sequences(5, seed=1)
    with torch.no_grad():
        packed = scorer(build_microbatch(prompts, responses, list(range(5)), packed=True), TEMPERATURE, 4)
        padded = scorer(build_microbatch(prompts, responses, list(range(5)), packed=False), TEMPERATURE, 4)
    assert torch.allclose(packed[0], padded[0], atol=1e-10)
    assert torch.allclose(packed[1], padded[1], atol=1e-10)


def test_padding_values_do_not_matter(scorer):
    prompts, responses = random_sequences(3, seed=2)
    with torch.no_grad():
        a = scorer(build_microbatch(prompts, responses, [0, 1, 2], packed=False, pad_id=0), TEMPERATURE, 8)
        b = scorer(build_microbatch(prompts, responses, [0, 1, 2], packed=False, pad_id=200), TEMPERATURE, 8)
    assert torch.allclose(a[0], b[0], atol=1e-10)


def test_plan_microbatches_respects_budget_and_covers_everything():
    lengths = [50, 10, 40, 30, 30, 100, 5]
    for packed in (True, False):
        plan = plan_microbatches(lengths, max_tokens=60, packed=packed)
        assert sorted(i for g in plan for i in g) == list(range(len(lengths)))
        for g in plan:
            cost = sum(lengths[i] for i in g) if packed else len(g) * max(lengths[i] for i in g)
            assert cost <= 60 or len(g) == 1
    # first-fit decreasing: 100 alone; 50+10; 40+(nothing of 30 fits)... 30+30; 5 joins 40
    assert plan_microbatches(lengths, 60, packed=True) == [[5], [0, 1], [2, 6], [3, 4]]


def test_unflatten_pads_with_zeros():
    out = unflatten(torch.tensor([1.0, 2.0, 3.0]), [2, 1], width=3)
    assert torch.equal(out, torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]]))


def _batch(prompts, responses, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = [len(r) for r in responses]
    width = max(lengths)
    mask = unflatten(torch.ones(sum(lengths)), lengths, width)
    old_logp = unflatten(-torch.rand(sum(lengths), generator=g) * 5, lengths, width)
    advantages = torch.randn(len(responses), generator=g)
    return Batch(prompts, responses, mask, old_logp, torch.zeros_like(mask), advantages=advantages)


def _update(cfg, scorer, packed: bool) -> PolicyUpdate:
    """The recipe's policy update over `scorer`, for minibatch_backward alone (no optimizer)."""
    scorer.temperature, scorer.chunk_tokens = cfg.rollout.temperature, cfg.model.logprob_chunk_tokens
    return PolicyUpdate.from_config(cfg, scorer, None, None,
                                    MicroBatcher(cfg.train.max_tokens_per_microbatch, packed, torch.device("cpu")))


@pytest.mark.parametrize("packing", ["packed", "padded"])
def test_accumulated_microbatches_equal_whole_batch(scorer, packing):
    prompts, responses = random_sequences(6, seed=3)
    batch = _batch(prompts, responses)
    rows = list(range(6))
    grads = []
    for budget in (10_000, 25):  # one micro-batch vs several
        cfg = load_recipe(None, [f"train.max_tokens_per_microbatch={budget}", f"rollout.temperature={TEMPERATURE}",
                                 "model.logprob_chunk_tokens=5"])
        n_micro = len(plan_microbatches([len(p) + len(r) for p, r in zip(prompts, responses)], budget,
                                        packing == "packed"))
        scorer.zero_grad()
        result = _update(cfg, scorer, packing == "packed").minibatch_backward(batch, rows, batch.old_logp,
                                                                              batch.entropy)
        grads.append(({n: p.grad.clone() for n, p in scorer.named_parameters()}, result.loss, n_micro))
    (whole, whole_loss, one), (split, split_loss, many) = grads
    assert one == 1 and many >= 3
    assert abs(whole_loss - split_loss) < 1e-10
    for name in whole:
        assert torch.allclose(whole[name], split[name], atol=1e-10), name


@pytest.mark.parametrize("packed", [True, False])
def test_target_index_points_one_before_each_response_token(packed):
    prompts, responses = random_sequences(5, seed=4)
    micro = build_microbatch(prompts, responses, [4, 0, 2], packed, pad_id=0)
    flat = micro.input_ids.reshape(-1)
    # the hidden state at flat position t predicts the token at t + 1
    assert torch.equal(flat[micro.target_index + 1], micro.target_ids)
    assert micro.target_ids.tolist() == responses[4] + responses[0] + responses[2]
    assert micro.response_lengths == [len(responses[i]) for i in (4, 0, 2)]


@pytest.mark.parametrize("packing", ["packed", "padded"])
def test_fresh_rows_take_old_logprobs_from_the_update_forward(scorer, packing):
    """Skipping the old-log-prob pass for the first mini-batch changes nothing but float rounding.

    Same rollouts twice: once with every old log-prob from the separate no-grad pass, once with the
    first mini-batch's (rows 0..5 of 9) taken from its own update forward. The batch stores old
    log-probs in float32, so the separate pass's ratios are 1 only to ~1e-8 while the fresh ones are
    exactly 1: loss and gradients agree to 1e-7, the stored values to float32 resolution.
    """
    from justrl_min.rollout import Rollouts
    from justrl_min.trainer import prepare_batch

    prompts, responses = random_sequences(9, seed=5)
    rollouts = Rollouts(prompts, responses, None, [False] * 9)
    cfg = load_recipe(None, ["train.max_tokens_per_microbatch=40", f"rollout.temperature={TEMPERATURE}",
                             "model.logprob_chunk_tokens=5", "rollout.n=3", "train.mini_batch_prompts=2"])
    advantages = torch.randn(9, generator=torch.Generator().manual_seed(1))
    runs = []
    for fresh_rows in (0, 6):
        update = _update(cfg, scorer, packing == "packed")
        batch = prepare_batch(rollouts, update.microbatches, scorer, fresh_rows=fresh_rows)
        assert batch.old_logp[:fresh_rows].abs().sum() == 0  # not computed by the pass
        batch = dataclasses.replace(batch, advantages=advantages)
        old_logp, entropy = batch.old_logp.clone(), batch.entropy.clone()
        scorer.zero_grad()
        result = update.minibatch_backward(batch, list(range(6)), old_logp, entropy, batch.fresh_rows)
        runs.append((Batch(prompts, responses, batch.mask, old_logp, entropy), result,
                     {n: p.grad.clone() for n, p in scorer.named_parameters()}))
    (full, full_result, full_grads), (fresh, fresh_result, fresh_grads) = runs
    assert full.old_logp.abs().sum() > 0
    assert torch.equal(fresh.old_logp[6:], full.old_logp[6:])
    assert torch.allclose(fresh.old_logp, full.old_logp, atol=1e-6, rtol=0)
    assert torch.allclose(fresh.entropy, full.entropy, atol=1e-6, rtol=0)
    assert abs(fresh_result.loss - full_result.loss) < 1e-7
    assert fresh_result.token_weighted["approx_kl"] == 0.0  # the ratio is exactly 1
    assert full_result.token_weighted["approx_kl"] != 0.0   # float32 storage: 1 only up to rounding
    for name in full_grads:
        assert torch.allclose(fresh_grads[name], full_grads[name], atol=1e-7, rtol=0), name


@pytest.fixture
def float64_norms(monkeypatch):
    """transformers' Qwen2RMSNorm computes in float32 whatever the model's dtype, so float64 models
    still round like float32 there; in float64 throughout, layout bugs stand out from rounding."""
    from transformers.models.qwen2 import modeling_qwen2

    from tests.dist.grad_equivalence import float64_rms_norm

    monkeypatch.setattr(modeling_qwen2.Qwen2RMSNorm, "forward", float64_rms_norm)


def grouped_sequences(groups, n, seed=0):
    """`groups` prompts of ragged lengths, each repeated for n ragged responses (groups contiguous)."""
    prompts, responses = random_sequences(groups * n, seed=seed)
    return [prompts[i // n * n] for i in range(groups * n)], responses


def test_build_microbatch_numbers_distinct_prompts():
    prompts, responses = grouped_sequences(3, 2, seed=6)
    micro = build_microbatch(prompts, responses, [5, 0, 4, 1, 2], packed=False)
    # rows hold prompts 2, 0, 2, 0, 1: numbered by first appearance
    assert micro.prompt_of_row.tolist() == [0, 1, 0, 1, 2]
    assert micro.first_row_of_prompt.tolist() == [0, 1, 4]
    assert micro.prompt_lengths.tolist() == [len(prompts[i]) for i in (5, 0, 4, 1, 2)]
    assert build_microbatch(prompts, responses, [0, 1], packed=True).prompt_of_row is None


@pytest.mark.usefixtures("float64_norms")
@pytest.mark.parametrize("indices", [list(range(12)), [7, 0, 11, 3, 4], [2]])
def test_shared_prompts_equal_padded_values_and_gradients(indices):
    """One pass per distinct prompt + responses on its cache = the padded forward, to 1e-12 in float64.

    Ragged prompts and responses, rows of several groups in any order, groups split between
    micro-batches, a single row; gradients flow back through the cache into the prompt pass.
    """
    model = tiny.build_model(tiny.build_tokenizer(), seed=0, hidden=32, layers=2).double()
    prompts, responses = grouped_sequences(4, 3, seed=7)
    micro = build_microbatch(prompts, responses, indices, packed=False)
    results = []
    for share in ("never", "always"):
        scorer = TokenScorer(model, share_prompts=share)
        model.zero_grad()
        logp, entropy = scorer(micro, TEMPERATURE, chunk_tokens=4)
        (logp.sum() + 0.3 * entropy.sum()).backward()
        results.append((logp.detach(), entropy.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (logp, entropy, grads), (shared_logp, shared_entropy, shared_grads) = results
    assert shared_logp.shape == (sum(len(responses[i]) for i in indices),)
    assert torch.allclose(shared_logp, logp, atol=1e-12, rtol=0)
    assert torch.allclose(shared_entropy, entropy, atol=1e-12, rtol=0)
    for name in grads:
        assert torch.allclose(shared_grads[name], grads[name], atol=1e-12, rtol=0), name


def test_choose_prompt_sharing():
    from justrl_min.model import choose_prompt_sharing

    assert choose_prompt_sharing("auto", packed=False, gradient_checkpointing=False)[0] == "when_smaller"
    assert choose_prompt_sharing("true", packed=False, gradient_checkpointing=False)[0] == "always"
    assert choose_prompt_sharing("auto", packed=True, gradient_checkpointing=False)[0] == "never"
    assert choose_prompt_sharing("auto", packed=False, gradient_checkpointing=True)[0] == "never"
    assert choose_prompt_sharing("false", packed=False, gradient_checkpointing=False)[0] == "never"
    with pytest.raises(ValueError, match="gradient checkpointing"):
        choose_prompt_sharing("true", packed=False, gradient_checkpointing=True)
    with pytest.raises(ValueError, match="packed rows"):
        choose_prompt_sharing("true", packed=True, gradient_checkpointing=False)


def test_split_microbatches_reaches_the_count_by_halving_the_largest():
    assert split_microbatches([[0, 1, 2, 3, 4], [5]], 2) == [[0, 1, 2, 3, 4], [5]]
    assert split_microbatches([[0, 1, 2, 3, 4], [5]], 4) == [[0, 1], [2], [3, 4], [5]]
    with pytest.raises(RuntimeError, match="cannot make 3 micro-batches from 2"):
        split_microbatches([[0], [1]], 3)


def test_auto_shares_prompts_only_where_that_saves_a_quarter_of_the_tokens(monkeypatch):
    import justrl_min.model as model_module

    model = tiny.build_model(tiny.build_tokenizer(), seed=0, hidden=32, layers=2)
    scorer = TokenScorer(model, share_prompts="when_smaller")
    shared = []
    monkeypatch.setattr(model_module, "_shared_prompt_hidden",
                        lambda _backbone, batch: shared.append(batch) or torch.zeros(len(batch.target_ids), 32))
    long_prompt, other = [7] * 12, [9] * 12
    # 4 rows, 1 distinct prompt: 12 + 4 x 2 = 20 positions shared vs 4 x 14 = 56 padded -> share
    many = build_microbatch([long_prompt] * 4, [[1, 2]] * 4, [0, 1, 2, 3], packed=False)
    # 2 rows, 2 distinct prompts: 2 x 12 + 2 x 2 = 28 vs 2 x 14 = 28 -> no saving, padded forward
    few = build_microbatch([long_prompt, other], [[1, 2]] * 2, [0, 1], packed=False)
    assert (many.shared_prompt_tokens, many.computed_tokens) == (20, 56)
    assert (few.shared_prompt_tokens, few.computed_tokens) == (28, 28)
    scorer(many, 1.0, 8)
    scorer(few, 1.0, 8)
    assert shared == [many]
