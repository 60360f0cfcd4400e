"""The public attention op: validation and backend dispatch.

``attention`` has SDPA's layout ``(batch, heads, seq, head_dim)``. ``backend="triton"`` runs the
fused kernel from ``entropy_attn.kernels`` (CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1``); ``backend="torch"`` runs the PyTorch reference; ``"auto"`` picks the kernel
on CUDA when it supports the call and PyTorch otherwise.
"""

from __future__ import annotations

import functools
import math
import numbers
import os

import torch

from .reference import attention_entropy, attention_reference

BACKENDS = ("auto", "triton", "torch")
MAX_HEAD_DIM = 256  # the kernel's limit; kept equal to entropy_attn.kernels.MAX_HEAD_DIM by a test
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_TORCH_DTYPES = (*_KERNEL_DTYPES, torch.float64)


@functools.cache
def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@torch.library.custom_op("entropy_attn::attention_fwd", mutates_args=())
def _attention_fwd(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale: float,
    return_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    from entropy_attn.kernels import flash_attention_forward

    # Read here, at run time, rather than while tracing: torch.compile cannot trace this getter.
    allow_tf32 = torch.get_float32_matmul_precision() != "highest"
    out, entropy = flash_attention_forward(query, key, value, scale, return_entropy, allow_tf32)
    if entropy is None:
        entropy = query.new_empty((0,), dtype=torch.float32)
    return out, entropy


@_attention_fwd.register_fake
def _attention_fwd_fake(query, key, value, scale, return_entropy):
    out = torch.empty_like(query)
    shape = query.shape[:3] if return_entropy else (0,)
    return out, query.new_empty(shape, dtype=torch.float32)


def _check_tensor(name: str, tensor) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != 4:
        raise ValueError(
            f"{name} must be 4-D (batch, heads, seq, head_dim), got shape {tuple(tensor.shape)}"
        )


def _validate(query, key, value, scale, return_entropy, backend) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(return_entropy, bool):
        raise TypeError(f"return_entropy must be a bool, got {type(return_entropy).__name__}")
    for name, tensor in (("query", query), ("key", key), ("value", value)):
        _check_tensor(name, tensor)
    if query.dtype not in _TORCH_DTYPES:
        raise TypeError(f"query dtype must be one of {_TORCH_DTYPES}, got {query.dtype}")
    for name, tensor in (("key", key), ("value", value)):
        if tensor.dtype != query.dtype:
            raise TypeError(f"{name} dtype {tensor.dtype} does not match query dtype {query.dtype}")
        if tensor.device != query.device:
            raise ValueError(
                f"{name} is on {tensor.device} but query is on {query.device}: "
                "all inputs must be on one device"
            )
        if tensor.shape[:2] != query.shape[:2]:
            raise ValueError(
                f"{name} (batch, heads) = {tuple(tensor.shape[:2])} does not match query's "
                f"{tuple(query.shape[:2])}"
            )
    if key.shape[-1] != query.shape[-1]:
        raise ValueError(
            f"key head_dim {key.shape[-1]} does not match query head_dim {query.shape[-1]}"
        )
    if value.shape[-1] != query.shape[-1]:
        raise ValueError(
            f"value head_dim {value.shape[-1]} does not match query head_dim {query.shape[-1]}"
        )
    if value.shape[2] != key.shape[2]:
        raise ValueError(f"value length {value.shape[2]} does not match key length {key.shape[2]}")
    if key.shape[2] == 0:
        raise ValueError("key must have at least one token (seq_k >= 1)")
    if query.shape[-1] == 0:
        raise ValueError("query head_dim must be >= 1")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise TypeError(f"scale must be a Python float or None, got {type(scale).__name__}")
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be finite and > 0, got {scale}")


def _validate_triton(query, key, value) -> None:
    if query.dtype not in _KERNEL_DTYPES:
        raise TypeError(
            f"backend='triton' supports query dtypes {_KERNEL_DTYPES}, got {query.dtype}; "
            "use backend='torch' for float64"
        )
    if query.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(
            f"backend='triton' supports head_dim <= {MAX_HEAD_DIM}, got {query.shape[-1]}"
        )
    if not _triton_available():
        raise RuntimeError("backend='triton' needs the triton package, which is not installed")
    if query.device.type != "cuda" and not _interpreting():
        raise ValueError(
            f"backend='triton' needs CUDA tensors (got {query.device}); "
            "set TRITON_INTERPRET=1 before importing triton kernels to run it on CPU, "
            "or use backend='torch'"
        )
    if query.dtype == torch.bfloat16 and query.device.type != "cuda":
        raise TypeError(
            "backend='triton' under TRITON_INTERPRET=1 computes wrong numbers for bfloat16 "
            "(the interpreter does bf16 arithmetic on raw bits); use float16/float32 there, "
            "backend='torch', or a CUDA device"
        )
    if torch.is_grad_enabled():
        for name, tensor in (("query", query), ("key", key), ("value", value)):
            if tensor.requires_grad:
                raise ValueError(
                    f"backend='triton' is forward-only and {name} requires grad; "
                    "use backend='torch' (or 'auto') for autograd"
                )


def _resolve_backend(backend: str, query, key, value) -> str:
    if backend != "auto":
        return backend
    if query.device.type != "cuda":
        return "torch"
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    if (
        query.dtype in _KERNEL_DTYPES
        and query.shape[-1] <= MAX_HEAD_DIM
        and not needs_grad
        and _triton_available()
    ):
        return "triton"
    return "torch"


def dispatch(query, key, value, scale, return_entropy: bool, backend: str):
    """:func:`attention` without its input validation, for callers whose inputs are valid by
    construction (the diffusers processors). ``scale=None`` stays SDPA's own default on the
    PyTorch path, so stock numerics are kept bit for bit."""
    if _resolve_backend(backend, query, key, value) == "triton":
        if not torch.compiler.is_compiling():
            _validate_triton(query, key, value)
        kernel_scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
        out, entropy = _attention_fwd(query, key, value, kernel_scale, return_entropy)
        return (out, entropy) if return_entropy else out
    out = attention_reference(query, key, value, scale)
    if not return_entropy:
        return out
    return out, attention_entropy(query, key, scale).to(torch.float32)


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale: float | None = None,
    *,
    return_entropy: bool = False,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``softmax(scale * query @ key^T) @ value``, optionally with per-row attention entropy.

    Args:
        query: ``(batch, heads, seq_q, head_dim)``; any strides (e.g. a ``(B, L, H, D)`` view).
        key: ``(batch, heads, seq_k, head_dim)``; ``seq_k`` may differ from ``seq_q``.
        value: ``(batch, heads, seq_k, head_dim)``.
        scale: softmax scale, a positive finite float; ``None`` means ``1 / sqrt(head_dim)`` as in
            ``torch.nn.functional.scaled_dot_product_attention``. Use :func:`entropy_attn.log_scale`
            for the entropy-preserving scale.
        return_entropy: also return ``H_i = -sum_j A_ij ln A_ij`` per query row.
        backend: ``"triton"`` (fused kernel; CUDA, or CPU under ``TRITON_INTERPRET=1``),
            ``"torch"`` (PyTorch SDPA + chunked ``log_softmax`` entropy) or ``"auto"`` (Triton on
            CUDA for fp16/bf16/fp32, head_dim <= 256 and no autograd; PyTorch otherwise).

    Returns:
        ``out`` with ``query``'s shape and dtype, or ``(out, entropy)`` with ``entropy`` float32 of
        shape ``(batch, heads, seq_q)`` in nats.

    Numerics: fp32 inputs on the Triton backend use IEEE fp32 dot products unless
    ``torch.get_float32_matmul_precision()`` is ``"high"`` or ``"medium"``, in which case TF32 is
    allowed (the same switch PyTorch matmuls follow). The kernel is forward-only.
    """
    if not torch.compiler.is_compiling():
        _validate(query, key, value, scale, return_entropy, backend)
    return dispatch(query, key, value, scale, return_entropy, backend)


__all__ = ["BACKENDS", "MAX_HEAD_DIM", "attention", "dispatch"]
