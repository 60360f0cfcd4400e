"""PyTorch reference of the attention op: the oracle that tests compare the kernel against.

The output is PyTorch's own ``scaled_dot_product_attention`` with ``scale=``; the entropy is
computed from ``log_softmax`` of the logits, in query chunks so that memory stays bounded (no
``A + eps`` bias). ``entropy_attn.attention(backend="torch")`` uses it when autograd needs the
entropy or off the CPU; on the CPU without autograd it takes the faster log-sum-exp identity
(``entropy_attn.op.api.entropy_lse``), which the tests compare against this oracle.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Largest number of logits materialised at once by ``attention_entropy`` (4 MiB of fp32): small
# enough to stay in cache on CPUs, where it measured 2-4x faster than 128 MiB chunks.
_CHUNK_ELEMENTS = 1 << 20


def attention_entropy(
    query: torch.Tensor,
    key: torch.Tensor,
    scale: float | None = None,
    *,
    attn_mask: torch.Tensor | None = None,
    chunk_elements: int = _CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Per-row attention entropy ``H_i = -sum_j A_ij ln A_ij`` in nats.

    Args:
        query: ``(..., seq_q, head_dim)``.
        key: ``(..., seq_k, head_dim)``, broadcastable with ``query``'s leading dims.
        scale: softmax scale; ``None`` means ``1 / sqrt(head_dim)``.
        attn_mask: optional boolean (``True`` = attend) or additive float mask broadcastable to
            ``(..., seq_q, seq_k)``, with SDPA's meaning.
        chunk_elements: at most this many logits are materialised at once.

    Returns:
        ``(..., seq_q)`` entropies, float64 for float64 inputs and float32 otherwise (the logits
        are formed in that precision). Differentiable with respect to ``query`` and ``key``. A
        NaN in a query row gives that row NaN; a NaN in a key gives every row NaN.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    compute_dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    key_t = key.to(compute_dtype).transpose(-2, -1)
    differentiable = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad)
    seq_q, seq_k = query.shape[-2], key.shape[-2]
    rows_per_chunk = max(1, chunk_elements // max(1, seq_k * query[..., :1, :1].numel()))
    pieces = []
    for start in range(0, seq_q, rows_per_chunk):
        q_chunk = query[..., start : start + rows_per_chunk, :].to(compute_dtype)
        logits = torch.matmul(q_chunk, key_t)
        logits = logits * scale if differentiable else logits.mul_(scale)
        if attn_mask is not None:
            mask = attn_mask
            if mask.shape[-2] > 1:  # a per-query mask; (..., 1, seq_k) broadcasts over rows
                mask = mask[..., start : start + rows_per_chunk, :]
            if mask.dtype == torch.bool:
                logits = logits.masked_fill(~mask, float("-inf"))
            else:
                logits = logits + mask.to(compute_dtype)
        log_p = torch.log_softmax(logits, dim=-1)
        # In place only without autograd: exp() saves its result for the backward pass.
        terms = log_p.exp() * log_p if differentiable else log_p.exp().mul_(log_p)
        if attn_mask is not None:
            # Masked columns have log_p = -inf and p = 0: their term is 0, not 0 * -inf = NaN.
            terms = terms.masked_fill_(torch.isneginf(log_p), 0.0)
        pieces.append(-terms.sum(dim=-1))
    if not pieces:
        return query.new_empty(query.shape[:-1], dtype=compute_dtype)
    return torch.cat(pieces, dim=-1)


def attention_logsumexp(
    query: torch.Tensor,
    key: torch.Tensor,
    scale: float | None = None,
    *,
    chunk_elements: int = _CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Per-row log-sum-exp of the scaled logits, ``LSE_i = ln sum_j exp(scale q_i.k_j)`` (nats).

    Shapes as :func:`attention_entropy`; float64 for float64 inputs and float32 otherwise, in
    query chunks of at most ``chunk_elements`` logits; differentiable."""
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    compute_dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    key_t = key.to(compute_dtype).transpose(-2, -1)
    seq_k = key.shape[-2]
    rows_per_chunk = max(1, chunk_elements // max(1, seq_k * query[..., :1, :1].numel()))
    pieces = [
        torch.logsumexp(
            torch.matmul(query[..., start : start + rows_per_chunk, :].to(compute_dtype), key_t)
            * scale,
            dim=-1,
        )
        for start in range(0, query.shape[-2], rows_per_chunk)
    ]
    if not pieces:
        return query.new_empty(query.shape[:-1], dtype=compute_dtype)
    return torch.cat(pieces, dim=-1)


def attention_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale: float | None = None,
    *,
    return_entropy: bool = False,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``softmax(scale * Q K^T) V`` with PyTorch SDPA, and optionally the row entropies.

    Shapes follow SDPA: ``(batch, heads, seq, head_dim)``. Returns ``out`` or ``(out, entropy)``
    with ``entropy`` as returned by :func:`attention_entropy`.
    """
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, scale=scale)
    if not return_entropy:
        return out
    return out, attention_entropy(query, key, scale, attn_mask=attn_mask)


__all__ = ["attention_entropy", "attention_logsumexp", "attention_reference"]
