"""Attention over packed rows that costs what its sequences cost apart.

A packed micro-batch is one row holding several sequences back to back, with `cu_seqlens`
(int32, (b + 1,)) marking where each begins. Transformers' `sdpa` / `eager` paths would see the
restarting position ids and build a dense block-diagonal (L, L) mask over the whole row, then
compute attention for every pair of positions in it, masked or not: quadratic in the micro-batch's
token budget instead of linear in each sequence's square. This module registers one attention
implementation with transformers' `AttentionInterface` that never builds that mask:

- CUDA with `torch.nn.attention.varlen.varlen_attn` (torch >= 2.10): PyTorch's variable-length
  flash kernel over the packed row, backward included.
- otherwise (CPU): causal SDPA over each sequence's slice of the row, outputs concatenated.

Calls without `cu_seq_lens_q` (generation, padded rows) go to transformers' own sdpa forward and
sdpa mask unchanged, so a model switched to this implementation generates exactly as with `sdpa`.
"""

from __future__ import annotations

import torch

PACKED_ATTENTION = "justrl_packed_sdpa"
"""Name under which `packed_attention_forward` is registered with transformers."""
NATIVE_VARLEN = ("flash_attention_2", "flash_attention_3", "flash_attention_4")
"""Implementations whose transformers path already runs variable-length kernels from cu_seqlens."""
SWITCHED_TO_PACKED = ("sdpa", "eager")
"""Implementations that would build a dense mask over a packed row; replaced by PACKED_ATTENTION."""

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # torch < 2.10
    varlen_attn = None


def cu_seqlens_of(lengths: list[int]) -> torch.Tensor:
    """Sequence boundaries in a packed row: (b + 1,) int32, [0, l0, l0 + l1, ..., sum]."""
    return torch.tensor([0] + list(lengths), dtype=torch.int32).cumsum(0, dtype=torch.int32)


def varlen_available(device: torch.device) -> bool:
    return varlen_attn is not None and device.type == "cuda"


def per_sequence_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seqlens: torch.Tensor,
                      scaling: float | None) -> torch.Tensor:
    """Causal SDPA within each sequence of one packed row.

    query (1, Hq, L, D), key/value (1, Hkv, L, D) -> (1, L, Hq, D). Cost: sum over sequences of
    length^2, never L^2.
    """
    bounds = cu_seqlens.tolist()
    gqa = query.shape[1] != key.shape[1]
    outputs = [torch.nn.functional.scaled_dot_product_attention(
        query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True, scale=scaling, enable_gqa=gqa)
        for s, e in zip(bounds[:-1], bounds[1:])]
    return torch.cat(outputs, dim=2).transpose(1, 2)


def varlen_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seqlens: torch.Tensor,
                max_length: int, scaling: float | None) -> torch.Tensor:
    """The same through PyTorch's variable-length kernel (CUDA). Shapes as `per_sequence_sdpa`."""
    # varlen_attn takes (total tokens, heads, head_dim); window (-1, 0) is causal.
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    out = varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_length, max_length, scale=scaling, window_size=(-1, 0),
                      enable_gqa=q.shape[1] != k.shape[1])
    return out[None]


def packed_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                             sliding_window: int | None = None, cu_seq_lens_q: torch.Tensor | None = None,
                             max_length_q: int | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention-function signature; packed when `cu_seq_lens_q` is given."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      sliding_window=sliding_window, **kwargs)
    if query.shape[0] != 1 or attention_mask is not None or sliding_window is not None or dropout:
        raise ValueError("packed attention takes one packed row with no mask, no sliding window and no dropout")
    if varlen_available(query.device):
        return varlen_sdpa(query, key, value, cu_seq_lens_q, max_length_q, scaling), None
    return per_sequence_sdpa(query, key, value, cu_seq_lens_q, scaling), None


def _mask_unless_packed(*args, attention_mask: torch.Tensor | None = None, **kwargs):
    """sdpa's mask when a padding mask is given; a packed row (no padding mask) gets none at all."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def prepare_for_packing(causal_lm: torch.nn.Module) -> None:
    """Switch a model whose attention would densify packed rows to the per-sequence implementation."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    if causal_lm.config._attn_implementation in SWITCHED_TO_PACKED:
        AttentionInterface.register(PACKED_ATTENTION, packed_attention_forward)
        AttentionMaskInterface.register(PACKED_ATTENTION, _mask_unless_packed)
        causal_lm.set_attn_implementation(PACKED_ATTENTION)


def handles_packing(attn_implementation: str) -> bool:
    return attn_implementation in (PACKED_ATTENTION, *NATIVE_VARLEN, *SWITCHED_TO_PACKED)
