"""The public attention op: validation and backend dispatch.

``attention`` has SDPA's layout ``(batch, heads, seq, head_dim)``. ``backend="triton"`` runs the
fused kernel from ``entropy_attn.kernels`` (CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1``); ``backend="torch"`` runs the PyTorch path (SDPA, and the entropy by the
log-sum-exp identity or the materialising oracle); ``"auto"`` picks PyTorch off CUDA and where the
kernel does not support the call; on CUDA it runs the kernel when the entropy is asked for, and
otherwise whichever of the kernel and SDPA ``entropy_attn.op.autoselect`` measured faster.

One file because validation, dispatch and the registered custom op are one call path, whose
private hooks (``_validate``, ``_kernels``, ``_attention_fwd_op``) the tests patch in one place.
"""

from __future__ import annotations

import functools
import math
import numbers
import os

import torch
import torch.nn.functional as F

from .._extras import require
from . import autoselect
from .reference import attention_entropy, attention_logsumexp

BACKENDS = ("auto", "triton", "torch")
MAX_HEAD_DIM = 256  # the kernel's limit; a test keeps it equal to kernels/attention_fwd.py's
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_TORCH_DTYPES = (*_KERNEL_DTYPES, torch.float64)
# Scales above this are clamped to it on both backends (kept equal to the kernel's HARD_SCALE by a
# test): softmax is then already hard attention on the maximal logits, and larger scales would
# overflow the scaled logits to inf (NaN output).
HARD_SCALE = 2.0**64


@functools.cache
def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_kernels = None


def _import_kernel():
    """``entropy_attn.kernels.attention_fwd``, or a one-line ImportError saying what to install."""
    require("triton", what="entropy-attn's fused kernel")
    from entropy_attn.kernels import attention_fwd

    return attention_fwd


def _attention_fwd(query, key, value, scale: float, return_entropy: bool, return_lse: bool = False):
    """The fused forward in eager mode: ``(out, entropy or None)``, plus ``lse`` if asked."""
    global _kernels
    if _kernels is None:  # imported on first use: importing triton takes seconds
        _kernels = _import_kernel()
    # Read at run time rather than while tracing (torch.compile cannot trace this getter); it
    # only matters for fp32 inputs.
    allow_tf32 = query.dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest"
    return _kernels.flash_attention_forward(
        query, key, value, scale, return_entropy, allow_tf32, return_lse
    )


def _attention_fwd_impl(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale: float,
    return_entropy: bool,
    return_lse: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    result = _attention_fwd(query, key, value, scale, return_entropy, return_lse)
    out, entropy = result[0], result[1]
    if entropy is None:
        entropy = query.new_empty((0,), dtype=torch.float32)
    lse = result[2] if return_lse else query.new_empty((0,), dtype=torch.float32)
    return out, entropy, lse


# The torch.library boundary is what lets torch.compile trace through the Triton launch without a
# graph break. In eager mode it only adds dispatcher overhead (~60 us a call measured before this
# split), so eager calls go to ``_attention_fwd`` directly and only compiled code takes the op.
_attention_fwd_op = torch.library.custom_op("entropy_attn::attention_fwd", mutates_args=())(
    _attention_fwd_impl
)


@_attention_fwd_op.register_fake
def _attention_fwd_fake(query, key, value, scale, return_entropy, return_lse):
    out = torch.empty_like(query)
    entropy_shape = query.shape[:3] if return_entropy else (0,)
    lse_shape = query.shape[:3] if return_lse else (0,)
    return (
        out,
        query.new_empty(entropy_shape, dtype=torch.float32),
        query.new_empty(lse_shape, dtype=torch.float32),
    )


def _check_tensor(name: str, tensor) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != 4:
        raise ValueError(
            f"{name} must be 4-D (batch, heads, seq, head_dim), got shape {tuple(tensor.shape)}"
        )


def _check_scale(scale) -> float | None:
    """``scale`` as a float (``None`` stays ``None``); any real number that is a finite float
    ``>= 0`` is accepted (``Fraction(1, 2)``, numpy floats, ints)."""
    if scale is None:
        return None
    if type(scale) is float and 0.0 <= scale < math.inf:  # the common case, checked cheaply
        return scale
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a Python float or None, got {type(scale).__name__}")
    try:
        value = float(scale)
    except OverflowError:
        raise ValueError(
            f"scale must be finite and >= 0, got a {type(scale).__name__} too large for a float"
        ) from None
    if not 0.0 <= value < math.inf:  # also false for NaN
        raise ValueError(f"scale must be finite and >= 0, got {scale}")
    return value


def _validate(query, key, value, scale, return_entropy, backend, return_lse=False) -> float | None:
    """Check every argument; returns ``scale`` as a float (or ``None``).

    A valid call is recognised by one compound test (every tensor rule below at once), which
    costs less than checking the rules one by one; anything else goes through
    :func:`_explain_invalid`, which raises the error that names the argument."""
    tensor = torch.Tensor
    if (
        type(query) is tensor and type(key) is tensor and type(value) is tensor
        and backend in BACKENDS and (return_entropy is True or return_entropy is False)
        and (return_lse is True or return_lse is False)
    ):  # fmt: skip
        q_shape, k_shape, v_shape = query.shape, key.shape, value.shape
        dtype = query.dtype
        if (
            len(q_shape) == 4 and len(k_shape) == 4 and len(v_shape) == 4
            and dtype in _TORCH_DTYPES and key.dtype == dtype and value.dtype == dtype
            and q_shape[0] == k_shape[0] == v_shape[0] and q_shape[1] == k_shape[1] == v_shape[1]
            and q_shape[3] == k_shape[3] == v_shape[3] > 0 and k_shape[2] == v_shape[2] > 0
            and key.device == query.device and value.device == query.device
        ):  # fmt: skip
            return _check_scale(scale)
    return _explain_invalid(query, key, value, scale, return_entropy, backend, return_lse)


def _explain_invalid(
    query, key, value, scale, return_entropy, backend, return_lse=False
) -> float | None:
    """Every rule of :func:`_validate` one at a time, raising a named error for the first one
    broken (returns the scale if, e.g. for a tensor subclass, all hold)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if return_entropy is not True and return_entropy is not False:
        raise TypeError(f"return_entropy must be a bool, got {type(return_entropy).__name__}")
    if return_lse is not True and return_lse is not False:
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    _check_tensor("query", query)
    _check_tensor("key", key)
    _check_tensor("value", value)
    dtype, device = query.dtype, query.device
    if dtype not in _TORCH_DTYPES:
        raise TypeError(f"query dtype must be one of {_TORCH_DTYPES}, got {dtype}")
    q_shape, k_shape, v_shape = query.shape, key.shape, value.shape
    batch, heads = q_shape[0], q_shape[1]
    for name, tensor, shape in (("key", key, k_shape), ("value", value, v_shape)):
        if tensor.dtype != dtype:
            raise TypeError(f"{name} dtype {tensor.dtype} does not match query dtype {dtype}")
        if tensor.device != device:
            raise ValueError(
                f"{name} is on {tensor.device} but query is on {device}: "
                "all inputs must be on one device"
            )
        if shape[0] != batch or shape[1] != heads:
            raise ValueError(
                f"{name} (batch, heads) = {tuple(shape[:2])} does not match query's "
                f"{tuple(q_shape[:2])}"
            )
    head_dim = q_shape[3]
    if k_shape[3] != head_dim:
        raise ValueError(f"key head_dim {k_shape[3]} does not match query head_dim {head_dim}")
    if v_shape[3] != head_dim:
        raise ValueError(f"value head_dim {v_shape[3]} does not match query head_dim {head_dim}")
    if v_shape[2] != k_shape[2]:
        raise ValueError(f"value length {v_shape[2]} does not match key length {k_shape[2]}")
    if k_shape[2] == 0:
        raise ValueError("key must have at least one token (seq_k >= 1)")
    if head_dim == 0:
        raise ValueError("query head_dim must be >= 1")
    return _check_scale(scale)


def _validate_triton(query, key, value) -> None:
    dtype = query.dtype
    if dtype not in _KERNEL_DTYPES:
        raise TypeError(
            f"backend='triton' supports query dtypes {_KERNEL_DTYPES}, got {dtype}; "
            "use backend='torch' for float64"
        )
    if query.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(
            f"backend='triton' supports head_dim <= {MAX_HEAD_DIM}, got {query.shape[-1]}"
        )
    require("triton", what="backend='triton' (the fused kernel)")
    if not query.is_cuda:
        if not _interpreting():
            raise ValueError(
                f"backend='triton' needs CUDA tensors (got {query.device}); "
                "set TRITON_INTERPRET=1 before importing triton kernels to run it on CPU, "
                "or use backend='torch'"
            )
        if dtype == torch.bfloat16:
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


def _needs_grad(query, key, value=None) -> bool:
    return torch.is_grad_enabled() and (
        query.requires_grad or key.requires_grad or (value is not None and value.requires_grad)
    )


def resolve_backend(backend: str, query, key, value) -> str:
    """The backend :func:`dispatch` runs for ``backend`` on these tensors: ``"auto"`` becomes
    ``"triton"`` or ``"torch"`` (by device, gradients and :mod:`entropy_attn.op.autoselect`)."""
    if backend != "auto":
        return backend
    if not query.is_cuda:
        return "torch"
    if (
        query.dtype in _KERNEL_DTYPES
        and query.shape[-1] <= MAX_HEAD_DIM
        and not _needs_grad(query, key, value)
        and _triton_available()
    ):
        return "triton"
    return "torch"


# Magnitude above which a row's fast entropy is recomputed by the oracle. H = LSE - scale <q, k_bar>
# subtracts numbers of size ~|LSE|, and k_bar = sum_j p_j k_j carries fp32 rounding of
# ~eps * max_j |k_j| per component even where q.k cancels (large keys along directions q sums to
# ~0): the row's error is ~2e-7 * (|LSE| + scale * sum_d |q_d| max_j |k_jd|). Below 128 that is
# at most ~3e-5 nats, the oracle's own error at such logits; ordinary activations stay far below.
_LSE_EXACT_LIMIT = 128.0


def _flash_cpu_available() -> bool:
    return hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")


def _lse_entropy(query, key, k_bar, lse, scale: float) -> torch.Tensor:
    """``H = LSE - scale <q, k_bar>`` per row (float32; in place on ``lse``, whose dtype the flash
    op gives ``query`` too), with rows whose rounding bound (see ``_LSE_EXACT_LIMIT``) exceeds 128
    recomputed by the oracle in float64, and rounding's ``-1e-7`` clamped to 0 (NaN kept)."""
    key_max = key.abs().amax(dim=-2, keepdim=True)  # (batch, heads, 1, head_dim)
    magnitude = torch.linalg.vecdot(query.abs(), key_max).mul_(scale).add_(lse.abs())
    unstable = magnitude > _LSE_EXACT_LIMIT
    entropy = lse.sub_(torch.linalg.vecdot(query, k_bar), alpha=scale).clamp_(min=0.0)  # NaN kept
    heads = unstable.any(dim=-1)
    if bool(heads.any()):
        # The heads with such rows, in float64: the fp32 oracle's own logits would round the
        # cancelling products as well.
        exact = attention_entropy(query[heads].double(), key[heads].double(), scale)
        entropy[heads] = torch.where(unstable[heads], exact.to(entropy.dtype), entropy[heads])
    return entropy.to(torch.float32)


def entropy_lse(query: torch.Tensor, key: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Row entropies from the log-sum-exp identity, without materialising the logits (CPU).

    With ``p = softmax(s q K^T)`` and ``LSE = log sum_j exp(s q.k_j)``,
    ``H = -sum_j p_j (s q.k_j - LSE) = LSE - s <q, sum_j p_j k_j>``: one flash-attention call
    (PyTorch's CPU kernel, which also returns the LSE) with the keys as values, then a dot
    product per row. Computed in fp32 (fp16/bf16 inputs are upcast; fp64 stays fp64). Rows where
    fp32 rounding could cost more than ~3e-5 nats (``|LSE| + scale * sum_d |q_d| max_j |k_jd|
    > 128``: large logits, or large key components that cancel in ``q.k`` but not in
    ``sum_j p_j k_j``) are recomputed by the materialising oracle
    :func:`entropy_attn.op.reference.attention_entropy` in float64 (only the heads with such rows).
    NaN
    inputs give NaN rows. Forward only.

    Args:
        query: ``(batch, heads, seq_q, head_dim)`` on the CPU.
        key: ``(batch, heads, seq_k, head_dim)``.
        scale: softmax scale; ``None`` means ``1 / sqrt(head_dim)``.

    Returns:
        float32 ``(batch, heads, seq_q)`` entropies in nats.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    if query.numel() == 0:  # the raw CPU flash op dies of SIGFPE on empty inputs
        return query.new_empty(query.shape[:-1], dtype=torch.float32)
    compute_dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    q = query.to(compute_dtype)
    k = key.to(compute_dtype)
    # The raw op needs unit stride in the head dim (SDPA's wrapper would copy such inputs too).
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    k_bar, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, k, scale=scale)
    return _lse_entropy(q, k, k_bar, lse, scale)


def attention_lse(query, key, value, scale: float | None = None, *, return_lse: bool = False):
    """``(out, entropy)`` from one PyTorch CPU flash-attention call (fp32 or fp64 inputs).

    The values are ``[V | K]`` (head dim ``2d``), so the one pass over the logits gives both the
    output ``sum_j p_j v_j`` and ``k_bar = sum_j p_j k_j`` for the log-sum-exp identity of
    :func:`entropy_lse`; the kernel needs one head dim for all three inputs, so queries and keys
    are zero-padded to ``2d`` (the logits are unchanged: the padding adds exact zeros). One exp
    per logit instead of two: 1.05-1.1x SDPA's time where the exps dominate (head dim 4-8), about
    1.7-1.9x at head dim 64, against 2.0-2.3x for SDPA plus :func:`entropy_lse`.

    The output equals SDPA's to rounding, bit for bit at most shapes: the logits' dot products run
    over the padded head dim, which can change the order of the fp32 sums (3e-7 seen at
    ``(2, 10, 196, 64)``). Forward only, CPU, no empty inputs (the callers check).

    With ``return_lse``, returns ``(out, entropy, lse)``: the flash call's per-row log-sum-exp of
    the scaled logits too (float32).
    """
    head_dim = query.shape[-1]
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    pad = (0, head_dim)
    both, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        F.pad(query, pad), F.pad(key, pad), torch.cat((value, key), -1), scale=scale
    )
    row_lse = lse.to(torch.float32, copy=True) if return_lse else None  # _lse_entropy takes lse
    entropy = _lse_entropy(query, key, both[..., head_dim:], lse, scale)
    if return_lse:
        return both[..., :head_dim], entropy, row_lse
    return both[..., :head_dim], entropy


def _torch_attention(query, key, value, scale, return_entropy: bool):
    """The PyTorch path: SDPA (stock numerics); with the entropy, on the CPU without autograd,
    one flash call for both (fp32/fp64, :func:`attention_lse`) or SDPA plus the LSE identity
    (fp16/bf16: SDPA's own output numerics), else SDPA plus the differentiable oracle."""
    if scale is not None and scale > HARD_SCALE:
        scale = HARD_SCALE
    if not return_entropy:
        return F.scaled_dot_product_attention(query, key, value, scale=scale)
    if query.device.type == "cpu" and not _needs_grad(query, key) and _flash_cpu_available():
        one_call = query.dtype in (torch.float32, torch.float64) and query.numel()
        if one_call and not (torch.is_grad_enabled() and value.requires_grad):
            return attention_lse(query, key, value, scale)
        out = F.scaled_dot_product_attention(query, key, value, scale=scale)
        return out, entropy_lse(query, key, scale)
    out = F.scaled_dot_product_attention(query, key, value, scale=scale)
    return out, attention_entropy(query, key, scale).to(torch.float32)


def _torch_attention_lse(query, key, value, scale, return_entropy: bool):
    """The PyTorch path with the per-row log-sum-exp: ``(out, entropy or None, lse)``.

    On the CPU without autograd, fp32/fp64 take one flash call (the output, the LSE and, through
    :func:`attention_lse`, the entropy); fp16/bf16 keep SDPA's output and take the LSE (and the
    entropy) from a float32 flash call with the keys as values, as :func:`entropy_lse`. Elsewhere
    SDPA plus the differentiable chunked oracles."""
    if scale is not None and scale > HARD_SCALE:
        scale = HARD_SCALE
    row_scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    on_cpu = query.device.type == "cpu" and query.numel() and _flash_cpu_available()
    if on_cpu and not _needs_grad(query, key, value):
        if query.dtype in (torch.float32, torch.float64):
            if return_entropy:
                return attention_lse(query, key, value, row_scale, return_lse=True)
            q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (query, key, value))
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q, k, v, scale=row_scale
            )
            return out, None, lse.to(torch.float32)
        out = F.scaled_dot_product_attention(query, key, value, scale=scale)
        q, k = (x.to(torch.float32).contiguous() for x in (query, key))
        k_bar, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, k, scale=row_scale
        )
        row_lse = lse.clone()
        entropy = _lse_entropy(q, k, k_bar, lse, row_scale) if return_entropy else None
        return out, entropy, row_lse
    out = F.scaled_dot_product_attention(query, key, value, scale=scale)
    entropy = attention_entropy(query, key, scale).to(torch.float32) if return_entropy else None
    return out, entropy, attention_logsumexp(query, key, scale).to(torch.float32)


def _pack(out, entropy, lse, return_entropy: bool, return_lse: bool):
    if return_lse:
        return (out, entropy, lse) if return_entropy else (out, lse)
    return (out, entropy) if return_entropy else out


def dispatch(query, key, value, scale, return_entropy: bool, backend: str, return_lse=False):
    """:func:`attention` without its input validation, for callers whose inputs are valid by
    construction (the diffusers processors). ``scale=None`` stays SDPA's own default on the
    PyTorch path, so stock numerics are kept bit for bit."""
    compiling = torch.compiler.is_compiling()
    return _dispatch(query, key, value, scale, return_entropy, backend, compiling, return_lse)


def _auto_backend(query, key, value, scale, return_entropy: bool) -> str:
    """``backend="auto"``'s choice on CUDA for a call the kernel supports: the kernel when the
    entropy is asked for (nothing else gives it in one pass), else ``ENTROPY_ATTN_BACKEND`` or
    the faster of the kernel and SDPA (:mod:`entropy_attn.op.autoselect`)."""
    if return_entropy:
        return "triton"
    forced = autoselect.env_override()
    if forced is not None:
        return forced
    return autoselect.selector().choose(
        query,
        key,
        lambda: _attention_fwd(query, key, value, _kernel_scale(query, scale), False),
        lambda: _torch_attention(query, key, value, scale, False),
    )


def _kernel_scale(query, scale) -> float:
    return 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)


def _attention_auto_impl(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None
) -> torch.Tensor:
    """``backend="auto"`` without entropy, chosen when it runs: compiled code calls this op, so
    that tracing never times and a compiled graph uses the decision of the GPU it runs on."""
    if _auto_backend(query, key, value, scale, False) == "triton":
        return _attention_fwd(query, key, value, _kernel_scale(query, scale), False)[0]
    out = _torch_attention(query, key, value, scale, False)
    promised = torch.empty_like(query)  # the strides the fake below gives the compiler
    return out if out.stride() == promised.stride() else promised.copy_(out)


_attention_auto_op = torch.library.custom_op("entropy_attn::attention_auto", mutates_args=())(
    _attention_auto_impl
)


@_attention_auto_op.register_fake
def _attention_auto_fake(query, key, value, scale):
    return torch.empty_like(query)


def _dispatch(
    query, key, value, scale, return_entropy: bool, backend: str, compiling: bool, return_lse=False
):
    torch_path = backend == "torch" or (backend == "auto" and not query.is_cuda)
    if torch_path or resolve_backend(backend, query, key, value) != "triton":
        if return_lse:
            out, entropy, lse = _torch_attention_lse(query, key, value, scale, return_entropy)
            return _pack(out, entropy, lse, return_entropy, True)
        return _torch_attention(query, key, value, scale, return_entropy)
    if backend == "auto" and not return_entropy and not return_lse:
        if compiling:
            return _attention_auto_op(query, key, value, scale)
        if _auto_backend(query, key, value, scale, False) == "torch":
            return _torch_attention(query, key, value, scale, False)
    kernel_scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
    if compiling:
        out, entropy, lse = _attention_fwd_op(
            query, key, value, kernel_scale, return_entropy, return_lse
        )
    else:
        _validate_triton(query, key, value)
        result = _attention_fwd(query, key, value, kernel_scale, return_entropy, return_lse)
        out, entropy, lse = result if return_lse else (*result, None)
    return _pack(out, entropy, lse, return_entropy, return_lse)


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale: float | None = None,
    *,
    return_entropy: bool = False,
    backend: str = "auto",
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """``softmax(scale * query @ key^T) @ value``, optionally with per-row attention entropy.

    Args:
        query: ``(batch, heads, seq_q, head_dim)``; any strides (e.g. a ``(B, L, H, D)`` view).
        key: ``(batch, heads, seq_k, head_dim)``; ``seq_k`` may differ from ``seq_q``.
        value: ``(batch, heads, seq_k, head_dim)``.
        scale: softmax scale, any real number that is a finite float ``>= 0`` (``Fraction`` and
            numpy scalars too); ``None`` means ``1 / sqrt(head_dim)`` as in
            ``torch.nn.functional.scaled_dot_product_attention``. Use :func:`entropy_attn.log_scale`
            for the entropy-preserving scale. ``0`` is uniform attention (entropy ``ln seq_k``),
            which is also what scales too small for fp32 give; scales above ``HARD_SCALE``
            (2^64) are clamped to it, where softmax is already hard attention on the maximal
            logits (entropy ``ln`` of the number of tied maxima).
        return_entropy: also return ``H_i = -sum_j A_ij ln A_ij`` per query row. A NaN in a query
            row gives that row a NaN entropy (and output); a NaN in a key gives its head NaN.
        backend: ``"triton"`` (fused kernel; CUDA, or CPU under ``TRITON_INTERPRET=1``),
            ``"torch"`` (PyTorch SDPA; the entropy by the log-sum-exp identity on the CPU, see
            :func:`entropy_lse`, and by the differentiable chunked ``log_softmax`` oracle when
            autograd needs it or off the CPU) or ``"auto"`` (on CUDA for fp16/bf16/fp32,
            head_dim <= 256 and no autograd: Triton when ``return_entropy``, else whichever of
            Triton and SDPA was measured faster on this GPU, see :mod:`entropy_attn.op.autoselect`;
            PyTorch otherwise).
        return_lse: also return ``LSE_i = ln sum_j exp(scale q_i.k_j)`` per query row (float32,
            nats; the fused kernel's ``ln(2) m + ln l``), what merges attention over key shards
            (:mod:`entropy_attn.integration.parallel`). ``LSE_i - H_i`` is the row's mean logit
            ``sum_j A_ij s_ij``.

    Returns:
        ``out`` with ``query``'s shape and dtype; ``(out, entropy)`` with ``entropy`` float32 of
        shape ``(batch, heads, seq_q)`` in nats; ``(out, lse)`` with ``return_lse``, and
        ``(out, entropy, lse)`` with both (``lse`` float32, ``(batch, heads, seq_q)``).

    Numerics: fp32 inputs on the Triton backend use IEEE fp32 dot products unless
    ``torch.get_float32_matmul_precision()`` is ``"high"`` or ``"medium"``, in which case TF32 is
    allowed (the same switch PyTorch matmuls follow). The kernel is forward-only.
    """
    compiling = torch.compiler.is_compiling()
    if not compiling:
        scale = _validate(query, key, value, scale, return_entropy, backend, return_lse)
    return _dispatch(query, key, value, scale, return_entropy, backend, compiling, return_lse)


__all__ = [
    "BACKENDS",
    "HARD_SCALE",
    "MAX_HEAD_DIM",
    "attention",
    "attention_lse",
    "dispatch",
    "entropy_lse",
]
