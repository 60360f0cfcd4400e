"""diffusers attention processors that change only the softmax scale.

Each one follows a stock diffusers processor step for step (projections, norms, rotary
embeddings, masks, output projections) and replaces its attention call by
:func:`entropy_attn.attention` with the layer's scale:

- :class:`EntropyAttnProcessor` for ``AttnProcessor2_0`` (UNets of SD 1.x/2.x, SDXL and LDM;
  PixArt's transformer), and for ``FusedAttnProcessor2_0``, ``XFormersAttnProcessor`` and
  ``AttnProcessorNPU`` (whose attention kernels it replaces by SDPA / the fused kernel);
- :class:`EntropyClassicAttnProcessor` for the classic ``AttnProcessor`` and for
  ``SlicedAttnProcessor`` (same ``baddbmm``/``softmax`` math, same slices);
- :class:`EntropyJointAttnProcessor` for ``JointAttnProcessor2_0`` and
  ``FusedJointAttnProcessor2_0`` (SD3: joint attention over image and text tokens);
- :class:`EntropyPAGProcessor` for PAG's ``PAG(CFG)IdentitySelfAttnProcessor2_0`` (perturbed-
  attention guidance: the guided chunks through the layer's processor above).

FLUX and every other transformer whose processors call diffusers' attention dispatcher go through
the generic path instead (:mod:`entropy_attn.integration.generic`), which runs the stock
processor's own code.

The scale of a rescaled layer is ``base_scale * sqrt(ln N / ln T)`` with ``N`` the keys of the
call and ``T`` the keys of the same layer at the training size; ``base_scale`` is the layer's own
(``attn.scale``, ``1/sqrt(d)`` in every model above), so this is ``sqrt(log_T(N) / d)``.

Off the fused kernel (CPU, MPS, masked calls) a layer whose scale is unchanged (``N == T``, or a
layer not selected) gives the same bits as the processor it replaced, for ``AttnProcessor2_0``,
``AttnProcessor``, ``SlicedAttnProcessor`` and ``JointAttnProcessor2_0``.
``FusedAttnProcessor2_0`` and ``FusedJointAttnProcessor2_0`` (one fused QKV projection;
entropy-attn uses the unfused ones, which diffusers keeps), ``XFormersAttnProcessor`` and
``AttnProcessorNPU`` (their own kernels) agree only to rounding. The fused kernel (CUDA) agrees
with every one of them to rounding, not bit for bit.
"""

from __future__ import annotations

import math

import torch

from ..op.api import dispatch, resolve_backend
from ..op.reference import attention_entropy, attention_reference
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


def _call_scale(scale: float, head_dim: int) -> float | None:
    """The scale to pass on: SDPA's own default, passed as ``None``, keeps stock numerics bit for
    bit."""
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
        call_scale = _call_scale(scale, query.shape[-1])
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
        call_scale = _call_scale(scale, head_dim)
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


def _tokens(attn, hidden_states, temb):
    """Spatial and group norms, and a 4-D image flattened to tokens, as diffusers' processors
    start: ``(residual, image_shape, tokens)``; ``image_shape`` is the 4-D input's
    ``(batch, channels, height, width)``, or ``None`` for token input."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    image_shape = None
    if hidden_states.ndim == 4:
        image_shape = hidden_states.shape
        batch_size, channel, height, width = image_shape
        hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    return residual, image_shape, hidden_states


def _project(attn, hidden_states, encoder_hidden_states, temb):
    """The input half shared by diffusers' ``AttnProcessor2_0`` and ``AttnProcessor``: spatial and
    group norms, a 4-D image flattened to tokens, and the q/k/v projections.

    Returns ``(residual, image_shape, query, key, value)``; ``image_shape`` is the 4-D input's
    ``(batch, channels, height, width)``, or ``None`` for token input.
    """
    residual, image_shape, hidden_states = _tokens(attn, hidden_states, temb)
    query = attn.to_q(hidden_states)
    if encoder_hidden_states is None:
        encoder_hidden_states = hidden_states
    elif attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    return (
        residual,
        image_shape,
        query,
        attn.to_k(encoder_hidden_states),
        attn.to_v(encoder_hidden_states),
    )


def _output(attn, hidden_states, residual, image_shape):
    """The output half shared by both processors: out projection, dropout, the 4-D image shape
    back, the residual and ``rescale_output_factor``."""
    hidden_states = attn.to_out[0](hidden_states)
    hidden_states = attn.to_out[1](hidden_states)
    if image_shape is not None:
        hidden_states = hidden_states.transpose(-1, -2).reshape(image_shape)
    if attn.residual_connection:
        hidden_states = hidden_states + residual
    return hidden_states / attn.rescale_output_factor


class EntropyAttnProcessor(EntropyAttnBase):
    """diffusers' ``AttnProcessor2_0`` with the entropy-preserving scale."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        residual, image_shape, query, key, value = _project(
            attn, hidden_states, encoder_hidden_states, temb
        )
        batch_size, sequence_length = key.shape[:2]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(
                attention_mask, sequence_length, batch_size
            )
            attention_mask = attention_mask.view(
                batch_size, attn.heads, -1, attention_mask.shape[-1]
            )
        head_dim = key.shape[-1] // attn.heads
        # (B, L, H, D) views in SDPA's (B, H, L, D) order: the kernel takes the strides as they are.
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = self.attend(attn, query, key, value, attention_mask)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        return _output(attn, hidden_states, residual, image_shape)


class EntropyClassicAttnProcessor(EntropyAttnBase):
    """diffusers' classic ``AttnProcessor`` (``baddbmm`` + ``softmax`` + ``bmm``), and
    ``SlicedAttnProcessor`` when ``slice_size`` is given, with the entropy-preserving scale.

    Off the fused kernel (CPU, MPS, masks) it computes exactly what the replaced processor does,
    with only ``alpha`` of ``baddbmm`` changed: the same bits at ``N == T``, and with
    ``slice_size`` the same ``slice_size`` (batch x head) slices, so attention slicing keeps its
    memory bound. On the fused kernel (CUDA) no slicing is needed: it never materialises the
    ``L x N`` scores.
    """

    def __init__(
        self, name: str | None = None, *, slice_size: int | None = None, **options
    ) -> None:
        super().__init__(name, **options)
        if slice_size is not None and (
            isinstance(slice_size, bool) or not isinstance(slice_size, int) or slice_size < 1
        ):
            raise ValueError(f"slice_size must be a positive int or None, got {slice_size!r}")
        self.slice_size = slice_size

    @classmethod
    def replacing(cls, stock, name: str, **options) -> EntropyClassicAttnProcessor:
        return cls(name, slice_size=getattr(stock, "slice_size", None), **options)

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        residual, image_shape, query, key, value = _project(
            attn, hidden_states, encoder_hidden_states, temb
        )
        batch_size, sequence_length = key.shape[:2]
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)

        def heads_first(tensor):
            # The stock (batch * heads, L, D) tensor, seen as (batch, heads, L, D): same memory.
            tensor = attn.head_to_batch_dim(tensor)
            return tensor.view(batch_size, attn.heads, *tensor.shape[1:])

        query, key, value = heads_first(query), heads_first(key), heads_first(value)
        if attention_mask is not None:  # (batch * heads, Lq or 1, Lk), additive
            attention_mask = attention_mask.view(
                batch_size, attn.heads, -1, attention_mask.shape[-1]
            )
        hidden_states = self.attend(attn, query, key, value, attention_mask)
        hidden_states = attn.batch_to_head_dim(hidden_states.reshape(-1, *query.shape[2:]))
        return _output(attn, hidden_states, residual, image_shape)

    def attention(self, attn, query, key, value, scale, attention_mask, return_entropy):
        backend = op_backend(self.backend, return_entropy)
        if attention_mask is None and resolve_backend(backend, query, key, value) == "triton":
            return super().attention(attn, query, key, value, scale, None, return_entropy)
        batch_heads = query.shape[0] * query.shape[1]
        flat = [t.reshape(batch_heads, *t.shape[2:]) for t in (query, key, value)]
        mask = None
        if attention_mask is not None:
            mask = attention_mask.reshape(batch_heads, *attention_mask.shape[2:])
        step = self.slice_size or batch_heads
        if step >= batch_heads:
            out = _classic_attention(attn, *flat, scale, mask)
        else:  # SlicedAttnProcessor's loop: the scores of `step` (batch x head) rows at a time
            out = torch.zeros_like(flat[0])
            for start in range(0, batch_heads, step):
                rows = slice(start, start + step)
                out[rows] = _classic_attention(
                    attn,
                    *(t[rows] for t in flat),
                    scale,
                    None if mask is None else mask[rows],
                )
        out = out.view(query.shape)
        if not return_entropy:
            return out
        entropy = attention_entropy(query, key, _call_scale(scale, query.shape[-1]))
        return out, entropy.to(torch.float32)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, slice_size={self.slice_size})"


def _classic_attention(attn, query, key, value, scale: float, attention_mask):
    """``Attention.get_attention_scores`` then ``bmm``, as diffusers' ``AttnProcessor``, with
    ``alpha=scale`` in place of ``attn.scale``; ``(batch * heads, L, D)`` tensors."""
    dtype = query.dtype
    if attn.upcast_attention:
        query, key = query.float(), key.float()
    if attention_mask is None:
        scores_input = torch.empty(
            query.shape[0], query.shape[1], key.shape[1], dtype=query.dtype, device=query.device
        )
        beta = 0
    else:
        scores_input, beta = attention_mask, 1
    scores = torch.baddbmm(scores_input, query, key.transpose(-1, -2), beta=beta, alpha=scale)
    if attn.upcast_softmax:
        scores = scores.float()
    return torch.bmm(scores.softmax(dim=-1).to(dtype), value)


class EntropyJointAttnProcessor(EntropyAttnBase):
    """diffusers' ``JointAttnProcessor2_0`` (SD3) with the entropy-preserving scale.

    Image and text tokens attend together, so ``N`` counts both (e.g. 4096 + 333 at 1024 px).
    """

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ):
        residual = hidden_states
        batch_size = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads

        def heads_first(tensor):
            return tensor.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        query, key, value = heads_first(query), heads_first(key), heads_first(value)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if encoder_hidden_states is not None:
            context_query = heads_first(attn.add_q_proj(encoder_hidden_states))
            context_key = heads_first(attn.add_k_proj(encoder_hidden_states))
            context_value = heads_first(attn.add_v_proj(encoder_hidden_states))
            if attn.norm_added_q is not None:
                context_query = attn.norm_added_q(context_query)
            if attn.norm_added_k is not None:
                context_key = attn.norm_added_k(context_key)
            query = torch.cat([query, context_query], dim=2)
            key = torch.cat([key, context_key], dim=2)
            value = torch.cat([value, context_value], dim=2)

        hidden_states = self.attend(attn, query, key, value, attention_mask)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = (
                hidden_states[:, : residual.shape[1]],
                hidden_states[:, residual.shape[1] :],
            )
            if not attn.context_pre_only:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if encoder_hidden_states is not None:
            return hidden_states, encoder_hidden_states
        return hidden_states


def _identity_attention(attn, hidden_states, temb):
    """PAG's perturbed path, as diffusers' ``PAG*IdentitySelfAttnProcessor2_0`` computes it:
    the attention map replaced by the identity, i.e. the value projection of each token."""
    residual, image_shape, hidden_states = _tokens(attn, hidden_states, temb)
    return _output(attn, attn.to_v(hidden_states), residual, image_shape)


# The PAG processors a PAG pipeline installs on its pag_applied_layers at every call -> how many
# batch chunks they split (CFG: uncond, cond, perturbed; without CFG: cond, perturbed).
PAG_CHUNKS = {"PAGCFGIdentitySelfAttnProcessor2_0": 3, "PAGIdentitySelfAttnProcessor2_0": 2}


class EntropyPAGProcessor:
    """Stands in for diffusers' ``PAGCFGIdentitySelfAttnProcessor2_0`` /
    ``PAGIdentitySelfAttnProcessor2_0`` (perturbed-attention guidance): the guided batch chunks
    run through the layer's entropy-attn processor (its scale, its recording), the perturbed
    chunk keeps PAG's identity attention. Layers without an entropy-attn processor of their own
    (``layers`` maps attention module -> processor) get the stock PAG processor.
    """

    def __init__(self, stock, layers: dict) -> None:
        self.stock = stock
        self.layers = layers
        self.chunks = PAG_CHUNKS[type(stock).__name__]

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        mine = self.layers.get(attn)
        if mine is None:
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        *guided, perturbed = hidden_states.chunk(self.chunks)
        temb_guided = temb_perturbed = temb
        if temb is not None:
            *temb_chunks, temb_perturbed = temb.chunk(self.chunks)
            temb_guided = torch.cat(temb_chunks)
        out = mine(attn, torch.cat(guided), None, attention_mask, temb_guided)
        return torch.cat([out, _identity_attention(attn, perturbed, temb_perturbed)])

    def __repr__(self) -> str:
        return f"EntropyPAGProcessor({type(self.stock).__name__}, {len(self.layers)} layers)"


# Stock processor class name -> the entropy-attn processor that reproduces it. Processors not
# listed (IP-Adapter, custom, ...) are never replaced silently.
REPLACEMENTS: dict[str, type[EntropyAttnBase]] = {
    "AttnProcessor": EntropyClassicAttnProcessor,
    "AttnProcessor2_0": EntropyAttnProcessor,
    "AttnProcessorNPU": EntropyAttnProcessor,
    "FusedAttnProcessor2_0": EntropyAttnProcessor,
    "SlicedAttnProcessor": EntropyClassicAttnProcessor,
    "XFormersAttnProcessor": EntropyAttnProcessor,
    "JointAttnProcessor2_0": EntropyJointAttnProcessor,
    "FusedJointAttnProcessor2_0": EntropyJointAttnProcessor,
}


def replacement_for(processor) -> type[EntropyAttnBase] | None:
    """The entropy-attn processor class that can stand in for ``processor``, if any."""
    if isinstance(processor, EntropyAttnBase):
        return type(processor)
    return REPLACEMENTS.get(type(processor).__name__)


__all__ = [
    "OWN_BACKENDS",
    "REPLACEMENTS",
    "EntropyAttnProcessor",
    "EntropyClassicAttnProcessor",
    "EntropyJointAttnProcessor",
    "EntropyPAGProcessor",
    "base_scale_of",
    "head_dim_of",
    "kind_of",
    "layer_scale",
    "replacement_for",
]
