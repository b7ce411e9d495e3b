"""HFEngine: sharing each prompt's prefill among its n samples changes nothing but float rounding.

The reference is a direct `model.generate` over the expanded rows (every row prefilled on its own),
seeded per chunk as the engine seeds; in float64 the two must draw the same tokens and give the same
log-probs to 1e-10.
"""

import pytest
import torch

from justrl_min import tiny
from justrl_min.model import load_causal_lm, load_tokenizer
from justrl_min.rollout import HFEngine, Sampling

QUESTIONS = ["What is 3+4?", "What is 12+5? Answer briefly.", "What is 7+8?", "Add 2 and 2."]


@pytest.fixture(scope="module")
def model_and_tokenizer(warm_model):
    """The warm-started model in float64: it ends answers with EOS, so both stop reasons occur."""
    return load_causal_lm(str(warm_model), dtype="float64", trainable=False), load_tokenizer(str(warm_model))


def reference_rollouts(model, tokenizer, prompts, n, sampling, batch_size):
    """Tokens, log-probs and truncation flags from plain `generate`, one left-padded chunk at a time."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = [p for p in prompts for _ in range(n)]
    tokens, logprobs, truncated = [], [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = max(len(p) for p in chunk)
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        torch.manual_seed(sampling.seed + start)
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=True,
                             temperature=sampling.temperature, top_p=sampling.top_p, top_k=0,
                             max_new_tokens=sampling.max_tokens, eos_token_id=[eos], pad_token_id=pad,
                             output_scores=True, return_dict_in_generate=True)
        new = out.sequences[:, width:]
        step_logprobs = torch.stack([s.log_softmax(-1).gather(-1, new[:, t, None]).squeeze(-1)
                                     for t, s in enumerate(out.scores)], dim=1)
        for row, row_logprobs in zip(new.tolist(), step_logprobs.tolist()):
            length = row.index(eos) + 1 if eos in row else len(row)
            tokens.append(row[:length])
            logprobs.append(row_logprobs[:length])
            truncated.append(eos not in row[:length])
    return tokens, logprobs, truncated


@pytest.mark.parametrize(("n", "batch_size"), [
    (3, 4),     # chunks of 4 rows split groups of 3: rows 0-3 are prompt 0 x3 + prompt 1 x1, ...
    (4, 64),    # one chunk, every group whole
    (1, 3),     # n = 1: nothing to share, but prefilled by the engine all the same
])
def test_shared_prefill_samples_what_plain_generate_samples(model_and_tokenizer, n, batch_size):
    model, tokenizer = model_and_tokenizer
    # Different lengths (left padding), including a one-token prompt whose prefix is all padding.
    prompts = [tiny.prompt_token_ids(tokenizer, q) for q in QUESTIONS] + [[tokenizer.encode("7")[0]]]
    assert len({len(p) for p in prompts}) >= 3
    sampling = Sampling(temperature=1.0, top_p=1.0, max_tokens=10, seed=5)  # answers take 10-11 tokens

    out = HFEngine(model, tokenizer, batch_size=batch_size).generate(prompts, n, sampling)
    tokens, logprobs, truncated = reference_rollouts(model, tokenizer, prompts, n, sampling, batch_size)

    assert out.prompt_ids == [p for p in prompts for _ in range(n)]
    assert out.response_ids == tokens
    assert out.truncated == truncated
    assert True in truncated and False in truncated  # both stop reasons are exercised
    for got, want in zip(out.rollout_logprobs, logprobs, strict=True):
        assert len(got) == len(want)
        assert torch.allclose(torch.tensor(got), torch.tensor(want), rtol=0, atol=1e-10)


def test_shared_prefill_keeps_temperature_and_top_p(model_and_tokenizer):
    """The processed distribution (temperature 0.7, top-p 0.9) is what both paths sample and score."""
    model, tokenizer = model_and_tokenizer
    prompts = [tiny.prompt_token_ids(tokenizer, q) for q in QUESTIONS]
    sampling = Sampling(temperature=0.7, top_p=0.9, max_tokens=8, seed=11)

    out = HFEngine(model, tokenizer, batch_size=5).generate(prompts, 2, sampling)
    tokens, logprobs, _ = reference_rollouts(model, tokenizer, prompts, 2, sampling, 5)

    assert out.response_ids == tokens
    flat = torch.tensor([x for row in out.rollout_logprobs for x in row])
    assert torch.allclose(flat, torch.tensor([x for row in logprobs for x in row]), rtol=0, atol=1e-10)


def test_each_prompt_prefix_is_computed_once_per_chunk(model_and_tokenizer):
    """The model sees the (prompt, n) rows' shared prefixes once per distinct prompt, then one token a row."""
    model, tokenizer = model_and_tokenizer
    prompts = [tiny.prompt_token_ids(tokenizer, q) for q in QUESTIONS[:2]]    # 14 and 31 tokens
    width = max(len(p) for p in prompts)
    shapes = []
    hook = model.get_input_embeddings().register_forward_hook(lambda _m, args, _out: shapes.append(args[0].shape))
    try:
        HFEngine(model, tokenizer, batch_size=8).generate(prompts, 4, Sampling(1.0, 1.0, 3, seed=0))
    finally:
        hook.remove()
    # prefix of both prompts, then the last prompt token of all 8 rows, then 2 more decode steps
    assert shapes == [(2, width - 1), (8, 1), (8, 1), (8, 1)]


def test_with_one_sample_per_prompt_the_engine_still_prefills_without_the_lm_head(model_and_tokenizer):
    """Evaluation (n = 1): generate's own prefill would run the LM head over the prompts, which on a
    frozen model at a 151,936-row vocabulary costs a [prompts, hidden, vocab] copy of its weight."""
    model, tokenizer = model_and_tokenizer
    prompts = [tiny.prompt_token_ids(tokenizer, q) for q in QUESTIONS[:3]]
    width = max(len(p) for p in prompts)
    embedded, head_inputs = [], []
    hooks = [model.get_input_embeddings().register_forward_hook(lambda _m, a, _o: embedded.append(a[0].shape)),
             model.get_output_embeddings().register_forward_hook(lambda _m, a, _o: head_inputs.append(a[0].shape))]
    try:
        HFEngine(model, tokenizer, batch_size=8).generate(prompts, 1, Sampling(1.0, 1.0, 2, seed=0))
    finally:
        for hook in hooks:
            hook.remove()
    assert embedded == [(3, width - 1), (3, 1), (3, 1)]
    assert head_inputs == [(3, 1, model.config.hidden_size)] * 2  # only ever the decode steps' positions


def test_the_copy_engine_samples_from_the_trainers_weights_in_its_own_dtype(warm_model):
    """rollout.hf_copy: after load_weights the copy holds the trainer's weights cast to its dtype, and
    samples exactly what an engine on the trainer's module cast to that dtype samples."""
    from justrl_min import dist
    from justrl_min.config import load_recipe
    from justrl_min.model import TokenScorer, weights_for_engine
    from justrl_min.options import rollout_engine as build_engine
    from justrl_min.rollout import HFCopyEngine

    tokenizer = load_tokenizer(str(warm_model))
    policy = load_causal_lm(str(warm_model), dtype="float32")
    said = []
    cfg = load_recipe(None, [f"model.path={warm_model}", "model.compute_dtype=float64"])
    engine = build_engine(cfg, policy, tokenizer, lambda: None, log=said.append)
    assert isinstance(engine, HFCopyEngine) and engine.model is not policy
    assert said == ["HF engine: samples from its own float64 copy of the policy (rollout.hf_copy)"]
    with torch.no_grad():  # the trainer's update, standing in
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    engine.load_weights(weights_for_engine(TokenScorer(policy), dist.DistInfo(), torch.float64))
    for name, tensor in policy.state_dict().items():
        assert torch.equal(engine.model.state_dict()[name], tensor.double()), name

    prompts = [tiny.prompt_token_ids(tokenizer, q) for q in QUESTIONS]
    sampling = Sampling(temperature=1.0, top_p=1.0, max_tokens=10, seed=3)
    cast = load_causal_lm(str(warm_model), dtype="float64", trainable=False)
    cast.load_state_dict({k: v.double() for k, v in policy.state_dict().items()})
    expected = HFEngine(cast, tokenizer, batch_size=8).generate(prompts, 2, sampling)
    assert engine.generate(prompts, 2, sampling) == expected

    never = load_recipe(None, [f"model.path={warm_model}", "model.compute_dtype=float64", "rollout.hf_copy=never"])
    assert build_engine(never, policy, tokenizer, lambda: None).model is policy
    with pytest.raises(KeyError, match="'lm_head.bias'"):
        engine.load_weights([("lm_head.bias", torch.zeros(3))])
