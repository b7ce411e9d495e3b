"""Packed attention: per-sequence cost (no dense mask), same numbers as the padded reference."""

import inspect

import pytest
import torch

from justrl_min import attention, tiny
from justrl_min.model import TokenScorer, build_microbatch, choose_packing

TEMPERATURE = 0.7


@pytest.fixture(scope="module")
def scorer():
    torch.manual_seed(0)
    return TokenScorer(tiny.build_model(tiny.build_tokenizer(), seed=0, hidden=32, layers=2).double())


def random_sequences(count, seed):
    g = torch.Generator().manual_seed(seed)
    lengths = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g))  # noqa: E731
    prompts = [torch.randint(0, 255, (lengths(2, 9),), generator=g).tolist() for _ in range(count)]
    responses = [torch.randint(0, 255, (lengths(1, 12),), generator=g).tolist() for _ in range(count)]
    return prompts, responses


def values_and_grads(scorer, micro):
    scorer.zero_grad()
    logp, entropy = scorer(micro, TEMPERATURE, 4)
    (logp.sum() + 0.1 * entropy.sum()).backward()
    return logp.detach(), entropy.detach(), {n: p.grad.clone() for n, p in scorer.named_parameters()}


def test_scorer_switches_sdpa_to_packed_attention(scorer):
    assert scorer.causal_lm.config._attn_implementation == attention.PACKED_ATTENTION


def test_packed_equals_padded_values_and_gradients(scorer):
    prompts, responses = random_sequences(6, seed=1)
    rows = list(range(6))
    packed = values_and_grads(scorer, build_microbatch(prompts, responses, rows, packed=True))
    padded = values_and_grads(scorer, build_microbatch(prompts, responses, rows, packed=False))
    assert torch.allclose(packed[0], padded[0], atol=1e-12, rtol=0)
    assert torch.allclose(packed[1], padded[1], atol=1e-12, rtol=0)
    for name, grad in packed[2].items():
        assert torch.allclose(grad, padded[2][name], atol=1e-12, rtol=0), name


def test_packed_row_never_attends_beyond_its_sequences(scorer, monkeypatch):
    """Every SDPA call of a packed forward sees one sequence and no mask: no (L, L) work at all."""
    prompts, responses = random_sequences(5, seed=2)
    micro = build_microbatch(prompts, responses, list(range(5)), packed=True)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, **kwargs):
        calls.append((key.shape[-2], attn_mask))
        return sdpa(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        scorer(micro, TEMPERATURE, 8)
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    assert [k for k, _ in calls] == lengths * 2  # 2 layers, one call per sequence each
    assert all(mask is None for _, mask in calls)


def test_generation_path_is_plain_sdpa(scorer):
    """Without cu_seqlens (padded rows, generation) the switched model computes what sdpa computes."""
    prompts, responses = random_sequences(4, seed=3)
    micro = build_microbatch(prompts, responses, list(range(4)), packed=False)
    model = scorer.causal_lm
    with torch.no_grad():
        switched = model(input_ids=micro.input_ids, attention_mask=micro.attention_mask).logits
        model.set_attn_implementation("sdpa")
        try:
            plain = model(input_ids=micro.input_ids, attention_mask=micro.attention_mask).logits
        finally:
            model.set_attn_implementation(attention.PACKED_ATTENTION)
    assert torch.equal(switched, plain)


def test_cu_seqlens_bookkeeping():
    # lengths 3, 1, 4 -> boundaries 0, 3, 4, 8
    assert attention.cu_seqlens_of([3, 1, 4]).tolist() == [0, 3, 4, 8]
    assert attention.cu_seqlens_of([3, 1, 4]).dtype == torch.int32  # what varlen kernels take
    prompts, responses = [[1, 2], [3], [4, 5, 6]], [[7], [8, 9], [10]]
    micro = build_microbatch(prompts, responses, [2, 0], packed=True)
    # sequence 2 is 4 tokens, sequence 0 is 3: positions restart exactly at the boundaries
    assert micro.cu_seqlens.tolist() == [0, 4, 7]
    assert micro.max_length == 4
    assert micro.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2]]
    assert build_microbatch(prompts, responses, [2, 0], packed=False).cu_seqlens is None


def reference_varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1),
                          enable_gqa=False):
    """What varlen_attn computes, written plainly: causal attention within each [cu[i], cu[i+1])."""
    assert window_size == (-1, 0) and torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32
    bounds = cu_q.tolist()
    assert max_q == max_k == max(e - s for s, e in zip(bounds[:-1], bounds[1:]))
    out = []
    for s, e in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (t[s:e].transpose(0, 1) for t in (q, k, v))           # (H, n, D)
        if enable_gqa:
            ks, vs = (t.repeat_interleave(qs.shape[0] // t.shape[0], 0) for t in (ks, vs))
        scores = qs @ ks.transpose(1, 2) * scale
        scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
        out.append((scores.softmax(-1) @ vs).transpose(0, 1))
    return torch.cat(out)


def test_varlen_call_bookkeeping_matches_per_sequence_sdpa(monkeypatch):
    """The CUDA path's reshapes and cu_seqlens, checked on CPU against a plain varlen reference."""
    g = torch.Generator().manual_seed(0)
    lengths = [5, 1, 3]
    cu = attention.cu_seqlens_of(lengths)
    query = torch.randn(1, 4, sum(lengths), 8, generator=g, dtype=torch.float64)
    key, value = (torch.randn(1, 2, sum(lengths), 8, generator=g, dtype=torch.float64) for _ in range(2))
    monkeypatch.setattr(attention, "varlen_attn", reference_varlen_attn)
    via_varlen = attention.varlen_sdpa(query, key, value, cu, max(lengths), 0.3)
    per_sequence = attention.per_sequence_sdpa(query, key, value, cu, 0.3)
    assert via_varlen.shape == per_sequence.shape == (1, sum(lengths), 4, 8)
    assert torch.allclose(via_varlen, per_sequence, atol=1e-12, rtol=0)


def test_varlen_attn_signature_contract():
    """The keyword names attention.varlen_sdpa relies on (checked without running the CUDA kernel)."""
    if attention.varlen_attn is None:
        pytest.skip("torch.nn.attention.varlen is not in this torch")
    params = inspect.signature(attention.varlen_attn).parameters
    assert list(params)[:7] == ["query", "key", "value", "cu_seq_q", "cu_seq_k", "max_q", "max_k"]
    for name in ("scale", "window_size", "enable_gqa"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name


def test_attention_function_takes_what_transformers_passes():
    from transformers.models.qwen2 import modeling_qwen2

    source = inspect.getsource(modeling_qwen2.Qwen2Attention.forward)
    for keyword in ("dropout=", "scaling=", "sliding_window="):  # passed by the decoder layer
        assert keyword in source
    params = inspect.signature(attention.packed_attention_forward).parameters
    assert {"dropout", "scaling", "sliding_window", "cu_seq_lens_q", "max_length_q"} <= set(params)
    from transformers.modeling_flash_attention_utils import FlashAttentionKwargs

    expected = {"cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"}
    assert expected <= set(FlashAttentionKwargs.__annotations__)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_varlen_kernel_matches_per_sequence_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(0)
    lengths = [37, 5, 128]
    cu = attention.cu_seqlens_of(lengths).cuda()
    query = torch.randn(1, 4, sum(lengths), 64, generator=g, device="cuda", dtype=torch.bfloat16)
    key, value = (torch.randn(1, 2, sum(lengths), 64, generator=g, device="cuda", dtype=torch.bfloat16)
                  for _ in range(2))
    via_varlen = attention.varlen_sdpa(query, key, value, cu, max(lengths), 0.125)
    per_sequence = attention.per_sequence_sdpa(query, key, value, cu, 0.125)
    assert torch.allclose(via_varlen.float(), per_sequence.float(), atol=2e-2)


def test_choose_packing():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_packing("auto", "sdpa", cpu)[0] is False           # CPU: padded measured fastest
    assert choose_packing("auto", "flash_attention_2", cuda)[0] is True
    assert choose_packing("auto", "sdpa", cuda)[0] is (attention.varlen_attn is not None)
    assert choose_packing("padded", "flash_attention_2", cuda)[0] is False
    assert choose_packing("packed", "sdpa", cpu)[0] is True
    with pytest.raises(ValueError, match="flex_attention"):
        choose_packing("packed", "flex_attention", cpu)
