"""The op's per-row log-sum-exp (``attention(..., return_lse=True)``), on the PyTorch path and the
fused kernel (under TRITON_INTERPRET=1 here, at small sizes), against a float64 oracle."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close, randn

import entropy_attn
from entropy_attn.op.reference import attention_entropy, attention_logsumexp

# |LSE| is ~ln(seq_k) + a few nats here; fp32 rounding of the logits and their sum costs ~1e-6.
LSE_TOL = dict(atol=2e-5, rtol=1e-6)


def oracle(q, k, scale):
    return attention_logsumexp(q.double(), k.double(), scale), attention_entropy(
        q.double(), k.double(), scale
    )


def qkv(shape_q, seq_k, dtype, generator, layout="contiguous"):
    batch, heads, seq_q, head_dim = shape_q
    if layout == "bshd":
        make = lambda n: randn((batch, n, heads, head_dim), dtype, generator, "cpu").transpose(1, 2)  # noqa: E731
    else:
        make = lambda n: randn((batch, heads, n, head_dim), dtype, generator, "cpu")  # noqa: E731
    return make(seq_q), make(seq_k), make(seq_k)


BACKENDS = [
    pytest.param("torch", torch.float32, id="torch-fp32"),
    pytest.param("torch", torch.float64, id="torch-fp64"),
    pytest.param("torch", torch.float16, id="torch-fp16"),
    pytest.param("torch", torch.bfloat16, id="torch-bf16"),
    pytest.param("triton", torch.float32, id="triton-fp32"),
    pytest.param("triton", torch.float16, id="triton-fp16"),
]


@pytest.mark.parametrize("backend,dtype", BACKENDS)
def test_lse_matches_float64_oracle(backend, dtype, generator):
    """Ragged key tiles (45 keys), head dim 40 (main + tail tile), diffusers' (B, L, H, D) view;
    a scale of 2 spreads the logits over tens of nats (the kernel moves its reference max)."""
    q, k, v = qkv((1, 2, 37, 40), 45, dtype, generator, layout="bshd")
    for scale in (0.3, 2.0):
        ref_lse, ref_entropy = oracle(q, k, scale)
        out, lse = entropy_attn.attention(q, k, v, scale, return_lse=True, backend=backend)
        out2, entropy, lse2 = entropy_attn.attention(
            q, k, v, scale, return_entropy=True, return_lse=True, backend=backend
        )
        plain = entropy_attn.attention(q, k, v, scale, backend=backend)
        assert lse.dtype == lse2.dtype == torch.float32 and lse.shape == q.shape[:3]
        assert_close(lse, ref_lse, **LSE_TOL, what=f"{backend} {dtype} lse, scale {scale}")
        assert_close(lse2, ref_lse, **LSE_TOL, what=f"{backend} {dtype} lse with entropy")
        tol = (
            dict(atol=2e-5, rtol=0)
            if dtype in (torch.float32, torch.float64)
            else dict(atol=2e-3, rtol=0)
        )
        assert_close(entropy, ref_entropy, **tol, what=f"{backend} {dtype} entropy with lse")
        # The output is the op's usual output, to rounding (the CPU flash op with the keys
        # appended may sum in another order; the kernel launches another variant).
        out_tol = (
            dict(atol=1e-6, rtol=0)
            if dtype in (torch.float32, torch.float64)
            else dict(atol=2e-3, rtol=0)
        )
        assert_close(out, plain, **out_tol, what=f"{backend} {dtype} out with lse")
        assert_close(out2, plain, **out_tol, what=f"{backend} {dtype} out with lse and entropy")


def test_lse_with_autograd_is_differentiable(generator):
    q, k, v = qkv((1, 2, 9, 8), 11, torch.float32, generator)
    q.requires_grad_()
    out, lse = entropy_attn.attention(q, k, v, 0.5, return_lse=True)
    assert lse.requires_grad
    lse.sum().backward()
    ref = q.detach().double().requires_grad_()
    attention_logsumexp(ref, k.double(), 0.5).sum().backward()
    assert_close(q.grad, ref.grad, atol=1e-6, rtol=1e-6, what="d lse / d q")


def test_lse_at_tiny_scale_is_log_of_key_count(generator):
    """The kernel's uniform-attention shortcut (scale below fp32's reach) gives ln(seq_k)."""
    q, k, v = qkv((1, 1, 5, 16), 33, torch.float32, generator)
    _, lse = entropy_attn.attention(q, k, v, 1e-39, return_lse=True, backend="triton")
    assert_close(lse, torch.full_like(lse, torch.tensor(33.0).log().item()), atol=1e-6, rtol=0)


def test_return_lse_must_be_bool(generator):
    q, k, v = qkv((1, 1, 4, 8), 4, torch.float32, generator)
    with pytest.raises(TypeError, match="return_lse must be a bool"):
        entropy_attn.attention(q, k, v, return_lse=1)
