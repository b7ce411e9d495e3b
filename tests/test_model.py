"""Equivalences of the lean log-prob path: chunked = naive, packed = padded, accumulated = whole batch."""

import pytest
import torch

from justrl_min import dist, tiny
from justrl_min.config import load_recipe
from justrl_min.model import TokenScorer, build_microbatch, plan_microbatches, unflatten
from justrl_min.trainer import Batch, minibatch_backward

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
    return Batch(prompts, responses, mask, advantages, old_logp, None, None, None, pad_id=0)


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
        result = minibatch_backward(cfg, batch, rows, scorer, packing == "packed", torch.device("cpu"),
                                    dist.DistInfo())
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
