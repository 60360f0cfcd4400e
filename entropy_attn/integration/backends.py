"""Which attention runs a layer's call: the ``backend=`` of :func:`entropy_attn.enable`
(entropy-attn's op: ``"auto"``, ``"triton"``, ``"torch"``, ``"sdpa"``; or a diffusers backend by
name), checked before anything changes, and the diffusers backends that take a softmax scale."""

from __future__ import annotations

OWN_BACKENDS = ("auto", "triton", "torch", "sdpa")


def op_backend(backend: str, record: bool) -> str:
    """The :func:`entropy_attn.op.api.dispatch` backend for an ``enable(..., backend=)`` choice."""
    if backend == "sdpa":
        return "auto" if record else "torch"
    return backend


def diffusers_backend_names() -> list[str]:
    """The attention backends of diffusers' dispatcher (``set_attention_backend`` names)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    return [member.value for member in AttentionBackendName]


def check_backend(backend) -> None:
    """Refuse a backend that is neither entropy-attn's own nor a usable diffusers one."""
    if backend in OWN_BACKENDS:
        return
    try:
        names = diffusers_backend_names()
    except ImportError:
        names = []
    if not isinstance(backend, str) or backend not in names:
        raise ValueError(
            f"backend must be one of {OWN_BACKENDS} or a diffusers attention backend "
            f"({', '.join(names) or 'needs diffusers'}), got {backend!r}"
        )
    from diffusers.models.attention_dispatch import (
        AttentionBackendName,
        _check_attention_backend_requirements,
    )

    _check_attention_backend_requirements(AttentionBackendName(backend))


def backend_accepts_scale(attention_backend) -> bool:
    """Whether a diffusers attention backend takes a softmax ``scale`` argument (its dispatcher
    silently drops arguments a backend does not list; ``_native_xla`` has no scale)."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    name = AttentionBackendName(attention_backend)
    return "scale" in _AttentionBackendRegistry._supported_arg_names.get(name, ())


def takes_scale(attention_backend, scale: float | None) -> bool:
    """Whether a call goes to the user's diffusers backend: one is chosen and it can apply
    ``scale`` (``None``, the default ``1/sqrt(d)``, every backend applies)."""
    if attention_backend is None:
        return False
    return scale is None or backend_accepts_scale(attention_backend)


def check_context_parallel_backend(attention_backend, layer: str) -> None:
    """Refuse a diffusers backend without context-parallel support under context parallelism (it
    would attend over this rank's keys only; diffusers' enable_parallelism refuses it too)."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    if not _AttentionBackendRegistry._is_context_parallel_available(
        AttentionBackendName(attention_backend)
    ):
        supported = sorted(_AttentionBackendRegistry._supports_context_parallel)
        raise ValueError(
            f"layer {layer!r} uses the attention backend {attention_backend!r}, which has no "
            f"context parallelism; use one of {supported}, or entropy-attn's own "
            "(enable(..., backend='auto'))"
        )


def dispatch_diffusers(query, key, value, attention_mask, scale, attention_backend):
    """``(B, H, L, D)`` attention through diffusers' ``dispatch_attention_fn`` (which takes
    ``(B, L, H, D)``) on the chosen backend, with ``scale`` passed to it."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    out = dispatch_attention_fn(
        query.transpose(1, 2),
        key.transpose(1, 2),
        value.transpose(1, 2),
        attn_mask=attention_mask,
        scale=scale,
        backend=attention_backend,
    )
    return out.transpose(1, 2)
