"""The op layer: log_scale, the PyTorch oracle, backend dispatch and input validation."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICE, assert_close, randn

import entropy_attn
from entropy_attn.op.reference import attention_entropy, attention_reference

# ---------------------------------------------------------------------------------------------
# log_scale


@pytest.mark.parametrize("head_dim", [40, 64, 80, 160])
@pytest.mark.parametrize("tokens", [16, 64, 256, 1024, 4096])
def test_log_scale_is_default_at_training_size(head_dim, tokens):
    assert entropy_attn.log_scale(tokens, tokens, head_dim) == 1.0 / math.sqrt(head_dim)


@pytest.mark.parametrize(
    "n_tokens,train_tokens,head_dim",
    [(784, 4096, 64), (9216, 4096, 64), (49, 256, 64), (16, 64, 64), (576, 1024, 40)],
)
def test_log_scale_formula(n_tokens, train_tokens, head_dim):
    expected = math.sqrt(math.log(n_tokens, train_tokens) / head_dim)
    assert entropy_attn.log_scale(n_tokens, train_tokens, head_dim) == pytest.approx(
        expected, rel=1e-12
    )
    default = 1.0 / math.sqrt(head_dim)
    if n_tokens < train_tokens:
        assert entropy_attn.log_scale(n_tokens, train_tokens, head_dim) < default
    else:
        assert entropy_attn.log_scale(n_tokens, train_tokens, head_dim) > default


def test_log_scale_sd21_224_level0():
    # SD-2.1-base at 224 px: the first self-attention level sees 28 * 28 = 784 of 4096 tokens.
    # ln 784 / ln 4096 = 6.66441 / 8.31777 = 0.801226; sqrt(0.801226 / 64) = 0.111889.
    assert entropy_attn.log_scale(784, 4096, 64) == pytest.approx(0.111889, abs=1e-6)


@pytest.mark.parametrize(
    "args,exc,name",
    [
        ((0, 4096, 64), ValueError, "n_tokens"),
        ((100, 1, 64), ValueError, "train_tokens"),
        ((100, 0, 64), ValueError, "train_tokens"),
        ((100, 4096, 0), ValueError, "head_dim"),
        ((100.0, 4096, 64), TypeError, "n_tokens"),
        ((100, True, 64), TypeError, "train_tokens"),
    ],
)
def test_log_scale_bad_input(args, exc, name):
    with pytest.raises(exc, match=name):
        entropy_attn.log_scale(*args)


def test_log_scale_single_token_is_zero():
    assert entropy_attn.log_scale(1, 4096, 64) == 0.0


# ---------------------------------------------------------------------------------------------
# The PyTorch oracle


def explicit_entropy(q, k, scale):
    a = torch.softmax((q.double() @ k.double().transpose(-1, -2)) * scale, dim=-1)
    return -(a * a.log()).sum(-1)


def test_reference_entropy_matches_explicit_formula(generator):
    q = randn((2, 3, 50, 32), torch.float64, generator, device="cpu")
    k = randn((2, 3, 70, 32), torch.float64, generator, device="cpu")
    got = attention_entropy(q, k, 0.3)
    assert got.dtype == torch.float64
    assert_close(got, explicit_entropy(q, k, 0.3), atol=1e-12, rtol=1e-12, what="entropy")


def test_reference_entropy_chunking_is_exact(generator):
    q = randn((1, 2, 97, 16), torch.float32, generator, device="cpu")
    k = randn((1, 2, 61, 16), torch.float32, generator, device="cpu")
    whole = attention_entropy(q, k, 0.5)
    # 2 * 61 logits per query row: 300 elements is one row per chunk, with a ragged remainder.
    chunked = attention_entropy(q, k, 0.5, chunk_elements=300)
    # Row by row the matmul may take another summation order: equal to fp32 rounding, not bits.
    assert_close(chunked, whole, atol=1e-6, rtol=1e-6, what="chunked entropy")


def test_reference_entropy_with_boolean_mask(generator):
    q = randn((1, 1, 10, 8), torch.float64, generator, device="cpu")
    k = randn((1, 1, 12, 8), torch.float64, generator, device="cpu")
    keep = torch.ones(10, 12, dtype=torch.bool)
    keep[:, 7:] = False
    got = attention_entropy(q, k, 0.4, attn_mask=keep)
    assert torch.isfinite(got).all()
    assert_close(got, explicit_entropy(q, k[..., :7, :], 0.4), atol=1e-12, rtol=0, what="mask")


def test_reference_uniform_rows_have_entropy_ln_n():
    q = torch.zeros(1, 1, 4, 8)
    k = torch.randn(1, 1, 333, 8)
    assert_close(attention_entropy(q, k), torch.full((1, 1, 4), math.log(333)), atol=1e-5, rtol=0)


def test_reference_output_is_sdpa(generator):
    q, k, v = (randn((1, 2, 9, 16), torch.float32, generator, device="cpu") for _ in range(3))
    out = attention_reference(q, k, v, 0.7)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, scale=0.7))


# ---------------------------------------------------------------------------------------------
# The public op


def test_default_scale_is_sdpa_default(generator):
    q, k, v = (randn((1, 2, 30, 40), torch.float32, generator) for _ in range(3))
    out = entropy_attn.attention(q, k, v, backend="torch")
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v))


def test_torch_backend_entropy_is_float32(generator):
    q, k, v = (randn((1, 2, 30, 40), torch.float16, generator) for _ in range(3))
    out, ent = entropy_attn.attention(q, k, v, 0.2, return_entropy=True, backend="torch")
    assert out.dtype == torch.float16 and ent.dtype == torch.float32 and ent.shape == (1, 2, 30)
    assert_close(ent, explicit_entropy(q, k, 0.2), atol=1e-5, rtol=1e-5, what="entropy")


def test_auto_backend_off_cuda_is_torch(generator):
    if DEVICE == "cuda":
        pytest.skip("auto picks Triton on CUDA")
    q, k, v = (randn((1, 2, 30, 40), torch.float32, generator) for _ in range(3))
    assert torch.equal(
        entropy_attn.attention(q, k, v, 0.2), entropy_attn.attention(q, k, v, 0.2, backend="torch")
    )


def test_auto_backend_with_autograd_uses_torch(generator):
    q, k, v = (randn((1, 2, 12, 16), torch.float32, generator) for _ in range(3))
    q.requires_grad_(True)
    out = entropy_attn.attention(q, k, v, 0.3)
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_float64_on_torch_backend(generator):
    q, k, v = (randn((1, 1, 5, 8), torch.float64, generator, device="cpu") for _ in range(3))
    out, ent = entropy_attn.attention(q, k, v, return_entropy=True, backend="torch")
    assert out.dtype == torch.float64 and ent.dtype == torch.float32


def test_done_when_command():
    """The issue's acceptance command, in a fresh interpreter, for both backends."""
    code = (
        "import entropy_attn, torch\n"
        "q = torch.randn(1, 2, 77, 40, generator=torch.Generator().manual_seed(0))\n"
        "o, h = entropy_attn.attention(q, q, q, return_entropy=True)\n"
        "print(h.shape)\n"
        "o2, h2 = entropy_attn.attention(q, q, q, return_entropy=True, backend='triton')\n"
        "torch.testing.assert_close(o2, o, atol=2e-5, rtol=2e-5)\n"
        "torch.testing.assert_close(h2, h, atol=5e-5, rtol=2e-5)\n"
        "print('match')\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["torch.Size([1, 2, 77])", "match"]


# ---------------------------------------------------------------------------------------------
# Validation


def _qkv(shape_q=(1, 2, 8, 16), shape_k=(1, 2, 9, 16), shape_v=None, dtype=torch.float32):
    shape_v = shape_v or shape_k
    return tuple(torch.randn(s).to(dtype) for s in (shape_q, shape_k, shape_v))


@pytest.mark.parametrize("backend", ["torch", "triton", "auto"])
@pytest.mark.parametrize(
    "make,kwargs,exc,pattern",
    [
        (lambda: (torch.randn(2, 8, 16), *_qkv()[1:]), {}, ValueError, "query must be 4-D"),
        (lambda: (_qkv()[0], torch.randn(2, 9, 16), _qkv()[2]), {}, ValueError, "key must be 4-D"),
        (lambda: (*_qkv()[:2], torch.randn(1, 2, 9)), {}, ValueError, "value must be 4-D"),
        (lambda: ([1.0], *_qkv()[1:]), {}, TypeError, "query must be a torch.Tensor"),
        (
            lambda: (_qkv()[0], _qkv()[1].half(), _qkv()[2]),
            {},
            TypeError,
            "key dtype",
        ),
        (lambda: _qkv(shape_k=(1, 2, 9, 8)), {}, ValueError, "key head_dim 8"),
        (lambda: _qkv(shape_v=(1, 2, 10, 16)), {}, ValueError, "value length 10"),
        (lambda: _qkv(shape_v=(1, 2, 9, 32)), {}, ValueError, "value head_dim 32"),
        (lambda: _qkv(shape_k=(1, 3, 9, 16)), {}, ValueError, r"key \(batch, heads\)"),
        (lambda: _qkv(shape_k=(1, 2, 0, 16), shape_v=(1, 2, 0, 16)), {}, ValueError, "seq_k"),
        (lambda: _qkv(), {"scale": -0.1}, ValueError, "scale must be finite and >= 0"),
        (lambda: _qkv(), {"scale": -1e-320}, ValueError, "scale must be finite and >= 0"),
        (lambda: _qkv(), {"scale": 10**400}, ValueError, "scale .* int too large for a float"),
        (lambda: _qkv(), {"scale": "0.1"}, TypeError, "scale must be a Python float"),
        (lambda: _qkv(), {"scale": float("nan")}, ValueError, "scale must be finite"),
        (lambda: _qkv(), {"scale": float("inf")}, ValueError, "scale must be finite"),
        (lambda: _qkv(), {"scale": torch.tensor(0.1)}, TypeError, "scale must be a Python float"),
        (lambda: _qkv(), {"return_entropy": 1}, TypeError, "return_entropy must be a bool"),
        (lambda: _qkv(dtype=torch.int32), {}, TypeError, "query dtype"),
    ],
)
def test_bad_inputs_raise_named_errors(backend, make, kwargs, exc, pattern):
    q, k, v = make()
    with pytest.raises(exc, match=pattern):
        entropy_attn.attention(q, k, v, backend=backend, **kwargs)


def test_bad_backend_name():
    with pytest.raises(ValueError, match="backend must be one of"):
        entropy_attn.attention(*_qkv(), backend="flash")


def test_device_mismatch_is_named():
    q, k, v = _qkv()
    k = k.to("meta")
    with pytest.raises(ValueError, match="key is on meta"):
        entropy_attn.attention(q, k, v)


def test_triton_head_dim_limit():
    q, k, v = _qkv((1, 1, 4, 264), (1, 1, 4, 264))
    with pytest.raises(ValueError, match="head_dim <= 256"):
        entropy_attn.attention(q, k, v, backend="triton")
    # The PyTorch path has no such limit, and auto falls back to it.
    assert entropy_attn.attention(q, k, v).shape == q.shape


def test_triton_rejects_float64():
    q, k, v = _qkv(dtype=torch.float64)
    with pytest.raises(TypeError, match="float64"):
        entropy_attn.attention(q, k, v, backend="triton")


def test_triton_is_forward_only():
    q, k, v = (t.to(DEVICE) for t in _qkv())  # on CUDA, CPU tensors would fail the device check
    v.requires_grad_(True)
    with pytest.raises(ValueError, match="value requires grad"):
        entropy_attn.attention(q, k, v, backend="triton")
    with torch.no_grad():
        entropy_attn.attention(q, k, v, backend="triton")


@pytest.mark.skipif(DEVICE == "cuda", reason="the bf16 refusal applies to the CPU interpreter")
def test_triton_interpreter_refuses_bf16():
    q, k, v = _qkv(dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="bfloat16"):
        entropy_attn.attention(q, k, v, backend="triton")


def test_triton_on_cpu_without_interpreter_is_explained(monkeypatch):
    if DEVICE == "cuda":
        pytest.skip("needs a CPU-only machine")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        entropy_attn.attention(*_qkv(), backend="triton")


def test_validation_skipped_while_compiling(monkeypatch):
    calls = []
    import entropy_attn.op.api as ops

    monkeypatch.setattr(ops, "_validate", lambda *a: calls.append(a))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    entropy_attn.attention(*_qkv(), backend="torch")
    assert calls == []


# ---------------------------------------------------------------------------------------------
# Numeric edges (issue #10, items 7-10), on the PyTorch path and the Triton kernel (CUDA, or the
# interpreter on CPU)

BOTH_BACKENDS = ["torch", "triton"]


def _edge_qkv(generator, seq_q=24, seq_k=45, head_dim=16, dtype=torch.float32):
    """Small inputs whose key count is ragged for the kernel's tiles (masked key columns)."""
    shapes = [(1, 2, seq_q, head_dim), (1, 2, seq_k, head_dim), (1, 2, seq_k, head_dim)]
    return tuple(randn(shape, dtype, generator) for shape in shapes)


def _fp64(q, k, v, scale):
    """fp64 output and entropy: SDPA and the oracle on float64 copies."""
    q64, k64, v64 = q.double(), k.double(), v.double()
    out = F.scaled_dot_product_attention(q64, k64, v64, scale=scale)
    return out, attention_entropy(q64, k64, scale)


@pytest.mark.parametrize("backend", BOTH_BACKENDS)
def test_item7_nan_query_gives_nan_entropy(backend, generator):
    q, k, v = _edge_qkv(generator)
    q[0, 1, 5, 3] = float("nan")
    out, ent = entropy_attn.attention(q, k, v, 0.3, return_entropy=True, backend=backend)
    assert torch.isnan(ent[0, 1, 5]), f"NaN query row gave entropy {ent[0, 1, 5].item()}"
    assert torch.isnan(out[0, 1, 5]).all()
    # Every other row is untouched by the NaN and matches fp64.
    keep = torch.ones(ent.shape, dtype=torch.bool, device=ent.device)
    keep[0, 1, 5] = False
    out64, ent64 = _fp64(q, k, v, 0.3)
    assert_close(ent[keep], ent64[keep.cpu()], atol=5e-5, rtol=2e-5, what="other rows' entropy")
    assert_close(out[keep], out64[keep.cpu()], atol=2e-5, rtol=2e-5, what="other rows' output")


@pytest.mark.parametrize("backend", BOTH_BACKENDS)
def test_item7_nan_key_gives_nan_entropy_for_its_head(backend, generator):
    q, k, v = _edge_qkv(generator)
    k[0, 0, 40, 7] = float("nan")  # in the ragged last key tile
    out, ent = entropy_attn.attention(q, k, v, 0.3, return_entropy=True, backend=backend)
    assert torch.isnan(ent[0, 0]).all(), ent[0, 0]
    assert torch.isnan(out[0, 0]).all()
    out64, ent64 = _fp64(q[:, 1:], k[:, 1:], v[:, 1:], 0.3)  # the other head is finite
    assert_close(ent[:, 1:], ent64, atol=5e-5, rtol=2e-5, what="finite head's entropy")


@pytest.mark.parametrize("backend", BOTH_BACKENDS)
def test_item7_huge_logits_entropy_stays_finite_and_non_negative(backend, generator):
    """The NaN-keeping clamp still clamps: rows with one dominant logit give 0, never < 0."""
    q, k, v = _edge_qkv(generator)
    q[0, 0, :8] = k[0, 0, :8] * 6.0
    out, ent = entropy_attn.attention(q, k, v, 1.0, return_entropy=True, backend=backend)
    assert torch.isfinite(ent).all() and (ent >= 0).all()
    _, ent64 = _fp64(q, k, v, 1.0)
    assert_close(ent, ent64, atol=5e-5, rtol=2e-5, what="peaked rows")


@pytest.mark.parametrize("backend", BOTH_BACKENDS)
@pytest.mark.parametrize("scale", [0.0, 1e-46, 1e-320, 5e-324])
def test_item8_zero_and_tiny_scales_are_uniform_attention(backend, scale, generator):
    """Softmax at scale 0 is uniform: out = mean of the values, entropy = ln Lk. Scales that
    underflow fp32 are the same to fp32 precision (fp64 reference at the same scale)."""
    q, k, v = _edge_qkv(generator)
    out, ent = entropy_attn.attention(q, k, v, scale, return_entropy=True, backend=backend)
    seq_k = k.shape[2]
    mean = v.double().mean(2, keepdim=True).expand(out.shape)
    assert_close(out, mean, atol=1e-6, rtol=1e-6, what=f"scale {scale} output")
    expected = torch.full(ent.shape, math.log(seq_k), dtype=torch.float64)
    assert_close(ent, expected, atol=2e-6, rtol=0, what=f"scale {scale} entropy")
    out64, ent64 = _fp64(q, k, v, scale)
    assert_close(out, out64, atol=1e-6, rtol=1e-6, what=f"scale {scale} vs fp64")


@pytest.mark.parametrize("backend", BOTH_BACKENDS)
def test_item8_zero_scale_keeps_nan(backend, generator):
    q, k, v = _edge_qkv(generator)
    q[0, 0, 2, 0] = float("nan")
    out, ent = entropy_attn.attention(q, k, v, 0.0, return_entropy=True, backend=backend)
    assert torch.isnan(ent[0, 0, 2]) and torch.isnan(out[0, 0, 2]).all()
    assert torch.isfinite(ent[0, 0, 3:]).all() and torch.isfinite(ent[0, 1]).all()


@pytest.mark.parametrize("backend", BOTH_BACKENDS)
def test_item8_log_scale_of_one_token_composes_with_attention(backend, generator):
    """log_scale(1, T, d) is exactly 0.0 and attention accepts it: one key, weight 1."""
    scale = entropy_attn.log_scale(1, 4096, 16)
    assert scale == 0.0
    q, k, v = _edge_qkv(generator, seq_k=1)
    out, ent = entropy_attn.attention(q, k, v, scale, return_entropy=True, backend=backend)
    assert_close(out, v.expand(out.shape), atol=0, rtol=0, what="one key")
    assert (ent == 0).all()


def _hard_attention64(q, k, v):
    """The scale -> infinity limit in fp64: uniform over the keys with the maximal logit."""
    logits = q.double() @ k.double().transpose(-1, -2)
    ties = logits == logits.amax(-1, keepdim=True)
    weights = ties.double() / ties.sum(-1, keepdim=True)
    return weights @ v.double(), ties.sum(-1).double().log()


@pytest.mark.parametrize("backend", BOTH_BACKENDS)
@pytest.mark.parametrize("scale", [1e38, 1e300, entropy_attn.op.api.HARD_SCALE])
def test_item8_huge_scale_gives_hard_attention(backend, scale, generator):
    """Scales whose logits would overflow fp32 give the limit answer: hard attention on the
    maximal logit (entropy 0), and ln 2 where two keys tie (a duplicated key), not NaN."""
    # Quarter-integer entries: every dot product is exact in fp32 and fp64 whatever order a CPU's
    # matmul sums in (AVX2 and AVX-512 kernels differ), so the duplicated key ties exactly.
    q, k, v = (torch.round(x * 4) / 4 for x in _edge_qkv(generator))
    k[0, 1, 3] *= 4  # a long key: the maximum of every row of head 1 (q ~ k3 below)
    k[0, 1, 44] = k[0, 1, 3]  # a tie across key tiles, for every query row of head 1
    q[0, 1] = k[0, 1, 3] + q[0, 1] / 4
    out, ent = entropy_attn.attention(q, k, v, scale, return_entropy=True, backend=backend)
    out_hard, ent_hard = _hard_attention64(q, k, v)
    assert (ent_hard[0, 1] - math.log(2)).abs().max() < 1e-12  # the tie is really there
    assert_close(out, out_hard, atol=1e-6, rtol=1e-6, what=f"scale {scale} output")
    assert_close(ent, ent_hard, atol=1e-6, rtol=0, what=f"scale {scale} entropy")


def test_hard_scale_is_the_same_in_op_and_kernel():
    from entropy_attn.kernels import attention_fwd as kernels
    from entropy_attn.op import api as ops

    assert ops.HARD_SCALE == kernels.HARD_SCALE == 2.0**64


def test_item9_entropy_is_differentiable_against_fp64_autograd(generator):
    """return_entropy=True with inputs that require grad: the entropy has a working backward,
    gradchecked in fp64, and fp32 gradients match fp64 autograd of the explicit formula."""
    q, k, v = (randn((1, 2, 7, 8), torch.float64, generator, device="cpu") for _ in range(3))
    q.requires_grad_(True)
    k.requires_grad_(True)

    def entropy(q, k):
        value = v.to(q.dtype)
        return entropy_attn.attention(q, k, value, 0.4, return_entropy=True, backend="torch")[1]

    # The op's entropy is float32 by contract; gradcheck the oracle it differentiates through.
    assert torch.autograd.gradcheck(lambda q, k: attention_entropy(q, k, 0.4), (q, k))
    q32 = q.detach().float().requires_grad_(True)
    k32 = k.detach().float().requires_grad_(True)
    ent = entropy(q32, k32)
    assert ent.requires_grad and ent.dtype == torch.float32
    (ent * torch.arange(14.0).reshape(1, 2, 7)).sum().backward()
    explicit = explicit_entropy(q, k, 0.4)
    (explicit * torch.arange(14.0, dtype=torch.float64).reshape(1, 2, 7)).sum().backward()
    assert_close(q32.grad, q.grad, atol=1e-5, rtol=1e-4, what="d entropy / d query")
    assert_close(k32.grad, k.grad, atol=1e-5, rtol=1e-4, what="d entropy / d key")


def test_item9_output_and_entropy_backward_together(generator):
    q, k, v = (randn((1, 1, 9, 8), torch.float32, generator, device="cpu") for _ in range(3))
    for t in (q, k, v):
        t.requires_grad_(True)
    out, ent = entropy_attn.attention(q, k, v, 0.5, return_entropy=True)
    (out.sum() + ent.sum()).backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("backend", BOTH_BACKENDS)
def test_item10_fraction_and_numpy_scales_work(backend, generator):
    from fractions import Fraction

    import numpy as np

    q, k, v = _edge_qkv(generator)
    want_out, want_ent = entropy_attn.attention(q, k, v, 0.5, return_entropy=True, backend=backend)
    for scale in (Fraction(1, 2), np.float64(0.5), np.float32(0.5)):
        out, ent = entropy_attn.attention(q, k, v, scale, return_entropy=True, backend=backend)
        assert torch.equal(out, want_out) and torch.equal(ent, want_ent), type(scale)


def test_item10_exotic_scales_raise_named_errors():
    from fractions import Fraction

    q, k, v = _qkv()
    with pytest.raises(ValueError, match="scale"):
        entropy_attn.attention(q, k, v, 10**400)
    with pytest.raises(ValueError, match="scale"):
        entropy_attn.attention(q, k, v, Fraction(-1, 3))
    with pytest.raises(TypeError, match="scale"):
        entropy_attn.attention(q, k, v, 1 + 2j)


def test_item10_log_scale_with_huge_head_dim_is_a_named_error():
    with pytest.raises(ValueError, match="head_dim"):
        entropy_attn.log_scale(64, 256, 10**400)
    with pytest.raises(ValueError, match="head_dim"):
        entropy_attn.log_scale(256, 256, 10**400)
    # Huge token counts are fine: ln works on Python ints of any size.
    assert entropy_attn.log_scale(10**400, 10**400, 64) == 0.125
    expected = math.sqrt(400 * math.log(10) / (math.log(256) * 64))
    assert entropy_attn.log_scale(10**400, 256, 64) == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# The fast CPU entropy (issue #11 item 4): the LSE identity against the materialising oracle


@pytest.mark.parametrize(
    "shape_q,shape_k,dtype,scale",
    [
        ((2, 5, 77, 64), (2, 5, 77, 64), torch.float32, 0.125),
        ((1, 3, 100, 40), (1, 3, 333, 40), torch.float32, 0.3),
        ((1, 2, 49, 80), (1, 2, 77, 80), torch.float16, 0.11),
        ((1, 2, 33, 160), (1, 2, 17, 160), torch.bfloat16, 0.08),
        ((1, 1, 1, 8), (1, 1, 1, 8), torch.float32, 1.0),
        ((1, 2, 30, 16), (1, 2, 41, 16), torch.float64, 0.7),
    ],
)
def test_lse_entropy_matches_oracle(shape_q, shape_k, dtype, scale, generator):
    from entropy_attn.op.api import entropy_lse

    q = randn(shape_q, dtype, generator, device="cpu", scale=2.0)
    k = randn(shape_k, dtype, generator, device="cpu", scale=2.0)
    fast = entropy_lse(q, k, scale)
    assert fast.dtype == torch.float32 and fast.shape == shape_q[:3]
    if dtype == torch.float64:  # computed in fp64: only the final rounding to fp32
        exact = attention_entropy(q, k, scale)
        assert_close(fast, exact, atol=1e-6, rtol=1e-7, what="fp64 LSE entropy")
    assert_close(fast, attention_entropy(q.double(), k.double(), scale), atol=2e-5, rtol=1e-5,
                 what=f"LSE entropy {dtype}")  # fmt: skip
    assert_close(fast, attention_entropy(q, k, scale), atol=2e-5, rtol=1e-5, what="vs oracle")


def test_lse_entropy_strided_inputs(generator):
    from entropy_attn.op.api import entropy_lse

    q = randn((2, 77, 3, 40), torch.float32, generator, device="cpu").transpose(1, 2)
    k = randn((2, 3, 90, 80), torch.float32, generator, device="cpu")[..., ::2]
    assert_close(entropy_lse(q, k, 0.2), attention_entropy(q.double(), k.double(), 0.2),
                 atol=2e-5, rtol=1e-5, what="strided")  # fmt: skip


def test_lse_entropy_falls_back_to_the_oracle_for_large_logits(generator):
    """|LSE| > 256: the subtraction would lose digits, so those rows come from the oracle."""
    from entropy_attn.op.api import entropy_lse

    q = randn((1, 2, 20, 64), torch.float32, generator, device="cpu", scale=12.0)
    k = randn((1, 2, 50, 64), torch.float32, generator, device="cpu", scale=12.0)
    fast = entropy_lse(q, k, 1.0)
    exact = attention_entropy(q.double(), k.double(), 1.0)
    assert_close(fast, exact, atol=1e-4, rtol=1e-4, what="large logits")


def test_torch_backend_paths_one_call_lse_and_oracle(monkeypatch, generator):
    """fp32 without grad: one flash call for output and entropy (attention_lse); fp16: SDPA's own
    output plus entropy_lse; with grad: SDPA plus the differentiable oracle."""
    from entropy_attn.op import api as ops

    calls = {"one": 0, "lse": 0}
    real_one, real_lse = ops.attention_lse, ops.entropy_lse

    def one(*args):
        calls["one"] += 1
        return real_one(*args)

    def lse(*args):
        calls["lse"] += 1
        return real_lse(*args)

    monkeypatch.setattr(ops, "attention_lse", one)
    monkeypatch.setattr(ops, "entropy_lse", lse)
    q, k, v = (randn((1, 2, 30, 16), torch.float32, generator, device="cpu") for _ in range(3))
    out, ent = entropy_attn.attention(q, k, v, 0.3, return_entropy=True, backend="torch")
    assert calls == {"one": 1, "lse": 0}
    assert_close(out, F.scaled_dot_product_attention(q, k, v, scale=0.3), atol=1e-6, rtol=0,
                 what="one-call output vs SDPA")  # fmt: skip
    q16, k16, v16 = (t.half() for t in (q, k, v))
    out16, ent16 = entropy_attn.attention(q16, k16, v16, 0.3, return_entropy=True, backend="torch")
    assert calls == {"one": 1, "lse": 1}
    assert torch.equal(out16, F.scaled_dot_product_attention(q16, k16, v16, scale=0.3))
    q.requires_grad_(True)
    _, ent_grad = entropy_attn.attention(q, k, v, 0.3, return_entropy=True, backend="torch")
    assert calls == {"one": 1, "lse": 1} and ent_grad.requires_grad
    assert_close(ent, ent_grad.detach(), atol=2e-6, rtol=1e-6, what="LSE vs oracle path")
    # Values that need a gradient keep SDPA's differentiable output (entropy still by the LSE).
    v.requires_grad_(True)
    q.requires_grad_(False)
    out_v, _ = entropy_attn.attention(q, k, v, 0.3, return_entropy=True, backend="torch")
    assert out_v.requires_grad and calls == {"one": 1, "lse": 2}


@pytest.mark.parametrize(
    "shape_q,shape_k,dtype,scale",
    [
        ((2, 5, 77, 64), (2, 5, 77, 64), torch.float32, 0.125),
        ((1, 3, 100, 40), (1, 3, 333, 40), torch.float32, 0.3),
        ((2, 8, 256, 4), (2, 8, 256, 4), torch.float32, 0.5),
        ((1, 1, 1, 8), (1, 1, 1, 8), torch.float32, 1.0),
        ((1, 2, 30, 16), (1, 2, 41, 16), torch.float64, 0.7),
    ],
)
def test_one_call_lse_matches_oracle_and_sdpa(shape_q, shape_k, dtype, scale, generator):
    """attention_lse: the output against SDPA and the fp64 reference, the entropy against the
    materialising oracle in fp64, and against entropy_lse (the same identity, two calls)."""
    from entropy_attn.op.api import attention_lse, entropy_lse

    q = randn(shape_q, dtype, generator, device="cpu", scale=2.0)
    k = randn(shape_k, dtype, generator, device="cpu", scale=2.0)
    v = randn(shape_k, dtype, generator, device="cpu")
    out, ent = attention_lse(q, k, v, scale)
    assert out.shape == shape_q and out.dtype == dtype
    assert ent.shape == shape_q[:3] and ent.dtype == torch.float32
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert_close(out, F.scaled_dot_product_attention(q, k, v, scale=scale), atol=tol, rtol=0,
                 what="output vs SDPA")  # fmt: skip
    exact_out = attention_reference(q.double(), k.double(), v.double(), scale)
    assert_close(out.double(), exact_out, atol=10 * tol, rtol=0, what="output vs fp64")
    exact = attention_entropy(q.double(), k.double(), scale)
    # The identity subtracts two numbers of size |LSE| (up to ~40 here): ~|LSE| * 1e-7 in fp32.
    assert_close(ent, exact, atol=3e-5, rtol=1e-5, what=f"entropy {dtype}")
    assert_close(ent, entropy_lse(q, k, scale), atol=2e-6, rtol=1e-6, what="vs entropy_lse")


def test_one_call_lse_strided_inputs_large_logits_and_nan(generator):
    """(B, L, H, D) views and a sliced head dim; rows with |LSE| > 256 from the oracle; a NaN in
    a query row gives that row NaN output and entropy, the other rows unchanged."""
    from entropy_attn.op.api import attention_lse

    q = randn((2, 77, 3, 40), torch.float32, generator, device="cpu").transpose(1, 2)
    k = randn((2, 3, 90, 80), torch.float32, generator, device="cpu")[..., ::2]
    v = randn((2, 90, 3, 40), torch.float32, generator, device="cpu").transpose(1, 2)
    out, ent = attention_lse(q, k, v, 0.2)
    assert_close(out.double(), attention_reference(q.double(), k.double(), v.double(), 0.2),
                 atol=1e-5, rtol=0, what="strided output")  # fmt: skip
    assert_close(ent, attention_entropy(q.double(), k.double(), 0.2), atol=2e-5, rtol=1e-5,
                 what="strided entropy")  # fmt: skip
    big_q = randn((1, 2, 20, 64), torch.float32, generator, device="cpu", scale=12.0)
    big_k = randn((1, 2, 50, 64), torch.float32, generator, device="cpu", scale=12.0)
    _, big = attention_lse(big_q, big_k, big_k, 1.0)
    assert_close(big, attention_entropy(big_q.double(), big_k.double(), 1.0), atol=1e-4,
                 rtol=1e-4, what="large logits")  # fmt: skip
    q_nan = q.clone()
    q_nan[0, 1, 5, 3] = float("nan")
    out_nan, ent_nan = attention_lse(q_nan, k, v, 0.2)
    assert torch.isnan(out_nan[0, 1, 5]).all() and torch.isnan(ent_nan[0, 1, 5])
    keep = torch.ones_like(ent, dtype=torch.bool)
    keep[0, 1, 5] = False
    assert torch.equal(ent_nan[keep], ent[keep])


@pytest.mark.parametrize("shape_q", [(1, 2, 0, 8), (0, 2, 5, 8)])
def test_empty_query_with_entropy_on_torch_backend(shape_q):
    """Empty inputs never reach the raw CPU flash op (it dies of SIGFPE on them)."""
    q = torch.randn(shape_q)
    k = torch.randn(shape_q[0], 2, 3, 8)
    out, ent = entropy_attn.attention(q, k, k, return_entropy=True, backend="torch")
    assert out.shape == shape_q and ent.shape == shape_q[:3] and ent.dtype == torch.float32


def test_tensor_subclass_inputs_take_the_full_validation(generator):
    """The one-test fast accept in _validate covers plain tensors only; a subclass (a Parameter)
    goes through every rule one by one, and a valid call still runs."""
    q, k, v = (randn((1, 2, 9, 16), torch.float32, generator, device="cpu") for _ in range(3))
    param = torch.nn.Parameter(q, requires_grad=False)
    with torch.no_grad():
        out = entropy_attn.attention(param, k, v, 0.3, backend="torch")
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, scale=0.3))
    with pytest.raises(ValueError, match="key head_dim 8"):
        entropy_attn.attention(param, k[..., :8], v, 0.3)


def large_norm_keys(generator, offset=1e3, query_scale=8.0, shape=(1, 2, 64, 64), keys=200):
    """Keys whose first two components are both ``offset``, queries with opposite first two
    components (``query_scale`` * N(0, 1)): the large parts cancel in q.k (logits stay O(1),
    |LSE| ~ 6) but not in the keys' softmax mean, where fp32 rounding loses ~offset * 1e-7."""
    batch, heads, seq_q, head_dim = shape
    q = randn(shape, torch.float32, generator, device="cpu")
    k = randn((batch, heads, keys, head_dim), torch.float32, generator, device="cpu")
    q[..., 0] = query_scale * randn(shape[:3], torch.float32, generator, device="cpu")
    q[..., 1] = -q[..., 0]
    k[..., :2] += offset
    return q, k


@pytest.mark.parametrize("one_call", [False, True], ids=["entropy_lse", "attention_lse"])
def test_r2_item10_lse_entropy_catches_cancellation_of_large_norm_keys(one_call, generator):
    from entropy_attn.op.api import attention_lse, entropy_lse

    q, k = large_norm_keys(generator)
    scale = 64**-0.5
    if one_call:
        out, fast = attention_lse(q, k, k, scale)
        assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, k, scale=scale),
                     atol=1e-3, rtol=1e-5, what="output")  # fmt: skip
    else:
        fast = entropy_lse(q, k, scale)
    exact = attention_entropy(q.double(), k.double(), scale)
    lse = torch.logsumexp(q.double() @ k.double().transpose(-1, -2) * scale, dim=-1)
    assert lse.abs().max() < 20  # far from large logits: |LSE| alone would not flag these rows
    assert_close(fast, exact, atol=5e-5, rtol=0, what="large-norm keys")
    # Ordinary keys keep the fast path's numbers (no fallback needed there).
    q, k = large_norm_keys(generator, offset=0.0, query_scale=1.0)
    assert_close(entropy_lse(q, k, scale), attention_entropy(q.double(), k.double(), scale),
                 atol=2e-5, rtol=0, what="ordinary keys")  # fmt: skip
