"""The entropy baselines the fused kernel is measured against, both in plain PyTorch.

``materialised_attention_entropy``: the straightforward O(N²) entropy from the full attention
matrix. ``lse_attention_entropy``: the strongest unfused one, one stock SDPA call and the
log-sum-exp identity, O(N) memory.
"""

from __future__ import annotations

import torch

from benchmarks.cases import AttentionCase


def materialised_attention_entropy(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The straightforward entropy: materialise ``A = softmax(scale Q K^T)``, then sum ``A ln A``.

    ``A`` is a full fp32 ``(B, H, Lq, Lk)`` tensor (as diffusers' ``upcast_softmax`` path builds
    it); ``entropy = -(A * A.log()).sum(-1)``; ``out = A V`` in the input dtype. Memory is
    ``O(Lq * Lk)``: this is the baseline the fused kernel's O(N) entropy is measured against.
    """
    probs = torch.softmax(torch.matmul(query, key.transpose(-2, -1)).float() * scale, dim=-1)
    entropy = -(probs * probs.log()).sum(dim=-1)
    out = torch.matmul(probs.to(value.dtype), value)
    return out, entropy


def _sdpa_with_lse(query, key, value, scale: float) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Stock SDPA kernels that also return the log-sum-exp of the scaled logits (natural log):
    ``(out, lse, backend)``. ``value``'s head dim may exceed ``query``'s: queries and keys are
    zero-padded to it (zeros add nothing to the logits), since flash and cuDNN want one head dim.
    On CUDA the first of cuDNN, flash, efficient that accepts the call; on CPU the CPU flash."""
    extra = value.shape[-1] - query.shape[-1]
    query = torch.nn.functional.pad(query, (0, extra))
    key = torch.nn.functional.pad(key, (0, extra))
    aten = torch.ops.aten
    if query.device.type != "cuda":
        out, lse = aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, scale=scale)
        return out, lse, "cpu-flash"
    attempts = {
        "CUDNN_ATTENTION": lambda: aten._scaled_dot_product_cudnn_attention(
            query, key, value, None, True, scale=scale
        ),
        "FLASH_ATTENTION": lambda: aten._scaled_dot_product_flash_attention(
            query, key, value, scale=scale
        ),
        "EFFICIENT_ATTENTION": lambda: aten._scaled_dot_product_efficient_attention(
            query, key, value, None, True, scale=scale
        ),
    }
    errors = []
    for name, call in attempts.items():
        try:
            result = call()
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as error:
            errors.append(f"{name}: {type(error).__name__}: {str(error).strip()[:200]}")
            continue
        return result[0], result[1], name
    raise RuntimeError("no SDPA kernel returned the log-sum-exp: " + "; ".join(errors))


def lse_attention_entropy(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The strongest unfused entropy: one stock SDPA call and the log-sum-exp identity.

    ``H_i = LSE_i - scale * <q_i, sum_j A_ij k_j>``, since ``ln A_ij = scale q_i.k_j - LSE_i``.
    One SDPA call attends with values ``[V | K]`` (head dim ``2D``): its first ``D`` columns are the
    output, the last ``D`` the attention-weighted mean key ``sum_j A_ij k_j``; the kernel's own
    log-sum-exp gives ``LSE``; the entropy is formed in fp32. Memory is O(N) like the fused kernel;
    the cost is an attention with twice the value width plus the concatenation. The mean key is
    rounded to the input dtype by SDPA, so in fp16/bf16 the entropy is less exact than the fused
    kernel's (the benchmark records its error).

    Returns ``(out, entropy, backend)``: ``out`` ``(B, H, Lq, D)`` in the input dtype, ``entropy``
    fp32 ``(B, H, Lq)`` in nats, ``backend`` the SDPA kernel that ran.
    """
    head_dim = value.shape[-1]
    out_and_mean_key, lse, backend = _sdpa_with_lse(
        query, key, torch.cat([value, key], dim=-1), scale
    )
    mean_key = out_and_mean_key[..., head_dim:].float()
    lse = lse[..., : query.shape[-2]].float()  # some kernels pad the query axis of the LSE
    entropy = lse - scale * (query.float() * mean_key).sum(-1)
    return out_and_mean_key[..., :head_dim], entropy, backend


def materialised_bytes(case: AttentionCase, dtype: torch.dtype) -> int:
    """Upper estimate of the transient memory of :func:`materialised_attention_entropy`.

    Per logit: the scores in the input dtype, then up to three fp32 tensors alive at once
    (``probs``, ``probs.log()``, their product) and ``probs`` cast back to the input dtype.
    """
    logits = case.batch * case.heads * case.seq_q * case.seq_k
    element = torch.empty((), dtype=dtype).element_size()
    return logits * (2 * element + 3 * 4)
