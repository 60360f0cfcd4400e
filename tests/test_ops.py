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
from entropy_attn.reference import attention_entropy, attention_reference

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
        (lambda: _qkv(), {"scale": 0.0}, ValueError, "scale must be finite and > 0"),
        (lambda: _qkv(), {"scale": -0.1}, ValueError, "scale must be finite and > 0"),
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
    import entropy_attn.ops as ops

    monkeypatch.setattr(ops, "_validate", lambda *a: calls.append(a))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    entropy_attn.attention(*_qkv(), backend="torch")
    assert calls == []
