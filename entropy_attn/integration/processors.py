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

import torch

from ..op.api import resolve_backend
from ..op.reference import attention_entropy
from .attention_base import EntropyAttnBase, scale_to_pass
from .backends import op_backend


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
        entropy = attention_entropy(query, key, scale_to_pass(scale, query.shape[-1]))
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
    "PAG_CHUNKS",
    "REPLACEMENTS",
    "EntropyAttnProcessor",
    "EntropyClassicAttnProcessor",
    "EntropyJointAttnProcessor",
    "EntropyPAGProcessor",
    "replacement_for",
]
