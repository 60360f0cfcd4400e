"""``layer_table(pipe, size)``: each attention layer's ``N``, ``T`` and scale at an image size,
from the plan an enable call would make, without running the model."""

from __future__ import annotations

from dataclasses import dataclass

from .._extras import needs
from .attention_base import base_scale_of, head_dim_of, kind_of, layer_scale
from .denoiser import find_denoiser, pixels_to_latent
from .families import family_of
from .generic import probe_calls
from .handle import DenoiserState, judged_processors
from .plan import LayerExclusion, LayerSelector, Plan, generic_latent, make_plan
from .probe import attention_modules, probe_tokens, unwrap


@dataclass(frozen=True)
class LayerInfo:
    """One attention layer at one image size.

    ``n_tokens`` and ``train_tokens`` count keys (``N`` and ``T``); ``scale`` is the softmax scale
    the layer uses at that size; ``changed`` says whether entropy-attn changes this layer's scale.
    """

    name: str
    kind: str
    heads: int
    head_dim: int
    query_tokens: int
    n_tokens: int
    train_tokens: int
    scale: float
    changed: bool


@needs("diffusers")
def layer_table(
    pipe,
    size: int | tuple[int, int],
    *,
    layers: LayerSelector = "self",
    exclude: LayerExclusion = None,
    train_size: int | tuple[int, int] | None = None,
    vae_scale_factor: int | None = None,
    text_tokens: int | None = None,
    frames: int | None = None,
    train_frames: int | None = None,
) -> list[LayerInfo]:
    """Each attention layer at an image size, without running the model.

    Args:
        pipe: pipeline or denoiser, as for :func:`enable`.
        size: image size in pixels, ``(height, width)`` or one int.
        layers, exclude, train_size, vae_scale_factor, text_tokens, train_frames: as for
            :func:`enable`.
        frames: video models: frames at ``size`` (default: the training frame count).

    A layer of the generic path that attends more than once per call (Wan I2V's image and text
    cross-attention) has a row per attention call, named ``layer[0]``, ``layer[1]``, ...

    Returns:
        One :class:`LayerInfo` per attention layer that runs in the denoiser's forward, in
        module order: kind, heads, head dim, N (keys at ``size``), T (keys at the training size)
        and the scale used at ``size``.
    """
    denoiser = find_denoiser(pipe)
    judged = judged_processors(denoiser, DenoiserState.of(denoiser))
    plan = make_plan(
        pipe, layers, train_size, vae_scale_factor, text_tokens, judged, exclude, None,
        train_frames,
    )  # fmt: skip
    if plan.calls is not None:
        return _generic_layer_table(plan, size, frames, train_frames)
    if frames is not None:
        raise ValueError(f"frames applies to video models only, got {frames!r}")
    latent = pixels_to_latent(size, plan.factor, "size")
    counts = probe_tokens(plan.denoiser, latent, text_tokens=plan.text_tokens)
    rows = []
    for name, attn in attention_modules(plan.denoiser).items():
        if name not in plan.train_tokens or name not in counts:
            continue  # does not run in the denoiser's forward (see enable)
        n_tokens, train_tokens = counts[name].key_tokens, plan.train_tokens[name]
        rescale = plan.rescale[name] and plan.replace[name]
        base = base_scale_of(attn)
        rows.append(
            LayerInfo(
                name=name,
                kind=kind_of(attn),
                heads=attn.heads,
                head_dim=head_dim_of(attn),
                query_tokens=counts[name].query_tokens,
                n_tokens=n_tokens,
                train_tokens=train_tokens,
                scale=layer_scale(n_tokens, train_tokens, base) if rescale else base,
                changed=rescale and n_tokens != train_tokens and n_tokens > 1,
            )
        )
    return rows


def _generic_layer_table(plan: Plan, size, frames, train_frames) -> list[LayerInfo]:
    model = unwrap(plan.denoiser)
    family = family_of(model)
    if frames is None:
        frames = train_frames
    latent = generic_latent(family, plan.factor, size, frames, "size", model.config)
    now = probe_calls(model, latent, text_tokens=plan.text_tokens, classify=False)
    rows = []
    for name, calls in plan.calls.items():
        for index, call in enumerate(calls):
            n_tokens = now[name][index].key_tokens
            rescale = plan.rescale_calls[name][index] and plan.replace[name]
            base = call.base_scale
            rows.append(
                LayerInfo(
                    name=name if len(calls) == 1 else f"{name}[{index}]",
                    kind=call.kind,
                    heads=call.heads,
                    head_dim=call.head_dim,
                    query_tokens=now[name][index].query_tokens,
                    n_tokens=n_tokens,
                    train_tokens=call.key_tokens,
                    scale=layer_scale(n_tokens, call.key_tokens, base) if rescale else base,
                    changed=rescale and n_tokens != call.key_tokens and n_tokens > 1,
                )
            )
    return rows
