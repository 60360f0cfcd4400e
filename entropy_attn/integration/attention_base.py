"""What every entropy-attn processor shares: a layer's kind, head dim and own scale, the scale at
``N`` keys (:func:`layer_scale`), and :class:`EntropyAttnBase`, which makes the attention call
(entropy-attn's op, or the user's diffusers backend) and records entropy.

The per-family processors are in :mod:`entropy_attn.integration.processors`, the generic one in
:mod:`entropy_attn.integration.generic`; the backend choices in
:mod:`entropy_attn.integration.backends`.
"""

from __future__ import annotations

import math

import torch

from ..op.api import dispatch
from ..op.reference import attention_entropy, attention_reference
from .backends import dispatch_diffusers, op_backend, takes_scale
from .recording import EntropyRecorder


def layer_scale(n_tokens: int, train_tokens: int, base_scale: float) -> float:
    """``base_scale * sqrt(ln N / ln T)``; exactly ``base_scale`` when ``N == T`` or ``N == 1``.

    With one key the softmax is 1 whatever the scale, so the base scale is kept there.
    """
    if n_tokens == train_tokens or n_tokens == 1:
        return base_scale
    if train_tokens <= 1:
        raise ValueError(f"train_tokens must be > 1 to rescale, got {train_tokens}")
    return base_scale * math.sqrt(math.log(n_tokens) / math.log(train_tokens))


def head_dim_of(attn) -> int:
    """Head dimension of a diffusers attention module."""
    return attn.to_k.out_features // attn.heads


def base_scale_of(attn) -> float:
    """The layer's own softmax scale (``1/sqrt(head_dim)`` unless the model says otherwise)."""
    scale = getattr(attn, "scale", None)
    return float(scale) if scale is not None else head_dim_of(attn) ** -0.5


def kind_of(attn) -> str:
    """``"joint"`` (image and text tokens attend together: SD3, FLUX double blocks), ``"cross"``
    (queries attend to a separate context, e.g. text) or ``"self"``."""
    if getattr(attn, "add_k_proj", None) is not None:
        return "joint"
    if getattr(attn, "is_cross_attention", False):
        return "cross"
    return "self"


def scale_to_pass(scale: float, head_dim: int) -> float | None:
    """The scale to pass on to SDPA and the op: SDPA's own default, passed as ``None``, keeps
    stock numerics bit for bit."""
    return None if scale == head_dim**-0.5 else scale


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd will need gradients through any of ``tensors`` (the fused entropy path
    has no backward, so recording then takes the reference path)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _in_backward() -> bool:
    """Whether this runs inside autograd's backward pass: gradient checkpointing recomputing a
    forward, which must not be recorded again."""
    task_id = getattr(torch._C, "_current_graph_task_id", None)
    return task_id is not None and task_id() != -1


class EntropyAttnBase:
    """Shared part: the scale for ``N`` keys, the attention call, and entropy recording.

    Made without a layer name (``cls()``, as diffusers' ``unload_ip_adapter`` rebuilds every
    processor with ``value.__class__()``), a processor is *unbound*: it computes what the stock
    processor does at the layer's own scale and records nothing, and an enable call in force on
    the model puts its own processor back on that layer before the model's next forward.
    """

    unbound_made = 0  # unbound processors made so far, in this process (see integration)

    def __init__(
        self,
        name: str | None = None,
        *,
        train_tokens: int = 0,
        rescale: bool = False,
        backend: str = "auto",
        recorder: EntropyRecorder | None = None,
        attention_backend: str | None = None,
    ) -> None:
        if name is None:
            if rescale or recorder is not None:
                raise ValueError("rescale and recorder need the layer's name and train_tokens")
            EntropyAttnBase.unbound_made += 1
        self.name = name
        self.train_tokens = int(train_tokens)
        self.rescale = bool(rescale)
        self.backend = backend
        self.recorder = recorder
        # diffusers' own attribute name, so that set_attention_backend / reset_attention_backend
        # reach this processor as they reach the stock one it replaces.
        self._attention_backend = attention_backend

    @classmethod
    def replacing(cls, stock, name: str, **options) -> EntropyAttnBase:
        """The processor that stands in for the processor ``stock`` on layer ``name``."""
        return cls(name, **options)

    def scale_for(self, attn, n_tokens: int) -> float:
        """The softmax scale for a call with ``n_tokens`` keys."""
        base = base_scale_of(attn)
        return layer_scale(n_tokens, self.train_tokens, base) if self.rescale else base

    def attention(self, attn, query, key, value, scale: float, attention_mask, return_entropy):
        """``(B, H, L, D)`` attention at ``scale``, as the replaced processor computes it.

        Returns ``out``, or ``(out, entropy)`` when ``return_entropy`` (only asked for calls
        without a mask and without autograd, where the fused kernel gives the entropy for free).
        """
        call_scale = scale_to_pass(scale, query.shape[-1])
        if attention_mask is None:
            backend = op_backend(self.backend, return_entropy)
            return dispatch(query, key, value, call_scale, return_entropy, backend)
        return attention_reference(query, key, value, call_scale, attn_mask=attention_mask)

    def attend(self, attn, query, key, value, attention_mask=None) -> torch.Tensor:
        """``(B, H, L, D)`` attention with this layer's scale; records entropy if asked."""
        device_type = query.device.type
        if torch.is_autocast_enabled(device_type):
            # As SDPA under autocast: one low-precision dtype for q, k and v (a QK norm may have
            # returned fp32 next to an fp16 value).
            dtype = torch.get_autocast_dtype(device_type)
            query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
        elif not query.dtype == key.dtype == value.dtype:
            raise TypeError(
                f"{self.name}: query, key and value dtypes differ "
                f"({query.dtype}, {key.dtype}, {value.dtype})"
            )
        head_dim = query.shape[-1]
        n_tokens = key.shape[2]
        scale = self.scale_for(attn, n_tokens)
        record = self.recorder is not None
        call_scale = scale_to_pass(scale, head_dim)
        if not record and takes_scale(self._attention_backend, call_scale):
            # The user's diffusers backend (set_attention_backend, or enable(backend=<name>)).
            return dispatch_diffusers(
                query, key, value, attention_mask, call_scale, self._attention_backend
            )
        # A recomputation (gradient checkpointing) takes the recorded forward's path, unrecorded.
        recomputed = record and _in_backward()
        # The fused entropy only where it cannot build an autograd graph: a recorded scalar must
        # never keep a graph (and the activations it saves) alive.
        fused_entropy = (
            record and not recomputed and attention_mask is None and not needs_grad(query, key)
        )
        out = self.attention(attn, query, key, value, scale, attention_mask, fused_entropy)
        if not record or recomputed:
            return out
        if fused_entropy:
            out, entropy = out
        else:
            with torch.no_grad():
                entropy = attention_entropy(query, key, call_scale, attn_mask=attention_mask)
        self._record(attn, entropy, query, n_tokens, query.shape[2], scale)
        return out

    def _record(self, attn, entropy, query, n_tokens: int, query_tokens: int, scale: float):
        self.recorder.add(
            entropy,
            layer=self.name,
            kind=kind_of(attn),
            heads=query.shape[1],
            head_dim=query.shape[-1],
            query_tokens=query_tokens,
            n_tokens=n_tokens,
            train_tokens=self.train_tokens,
            scale=scale,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, train_tokens={self.train_tokens}, "
            f"rescale={self.rescale}, backend={self.backend!r})"
        )


# entropy-attn's own backends: "sdpa" is PyTorch SDPA with the scale (PyTorch picks flash, cuDNN,
# memory-efficient or math), except when entropy is recorded, which needs the entropy-attn op.
