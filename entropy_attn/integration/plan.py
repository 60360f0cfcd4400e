"""The plan of one enable call, worked out before anything is changed: per attention layer its
training token count ``T``, whether it gets the entropy-preserving scale (``layers=``,
``exclude=``), and whether entropy-attn reproduces its processor; :func:`check_plan` refuses
what entropy-attn would get wrong or drop."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from .attention_base import kind_of
from .backends import backend_accepts_scale
from .denoiser import find_denoiser, pixels_to_latent, training_latent_size, vae_scale_factor_of
from .families import family_of
from .generic import built_in_temperature, calls_dispatcher, probe_calls
from .parallel import check_parallel_config
from .probe import attention_modules, default_text_tokens, probe_tokens, unwrap
from .processors import replacement_for

LayerSelector = str | Callable[[str, torch.nn.Module], bool]
LayerExclusion = Iterable[str] | Callable[[str, torch.nn.Module], bool] | None


def _exclusion(exclude: LayerExclusion, names) -> Callable[[str, torch.nn.Module], bool]:
    if exclude is None:
        return lambda name, attn: False
    if callable(exclude):
        return exclude
    if isinstance(exclude, str):
        exclude = [exclude]
    try:
        excluded = set(exclude)
    except TypeError:
        raise TypeError(
            "exclude must be layer names or a callable (name, module) -> bool, got "
            f"{type(exclude).__name__}"
        ) from None
    unknown = sorted(n for n in excluded if not isinstance(n, str) or n not in names)
    if unknown:
        raise ValueError(
            f"exclude names {unknown[0]!r}, which is not an attention layer of the denoiser "
            "(names as in entropy_attn.layer_table(pipe, size), e.g. "
            f"{next(iter(names), None)!r})"
        )
    return lambda name, attn: name in excluded


def _selector(layers: LayerSelector) -> Callable[[str, torch.nn.Module], bool]:
    if layers == "self":
        return lambda name, attn: kind_of(attn) != "cross"
    if layers == "all":
        return lambda name, attn: True
    if callable(layers):
        return layers
    raise ValueError(
        f"layers must be 'self', 'all' or a callable (name, module) -> bool, got {layers!r}"
    )


@dataclass(frozen=True)
class Plan:
    """What one enable call would do to one model (made by :func:`make_plan`; changes nothing)."""

    denoiser: torch.nn.Module
    train_latent: tuple[int, int]
    factor: int
    text_tokens: int
    train_tokens: dict[str, int]  # layers the token probe reached at the training size
    rescale: dict[str, bool]  # reached layers: selected for the entropy-preserving scale
    replace: dict[str, bool]  # reached layers: entropy-attn can reproduce their processor
    unreached: list[str]  # attention modules that do not run in the denoiser's forward
    # The generic path (entropy_attn.integration.generic): per layer, its calls at the training size
    # and which of them are rescaled; None for the per-family processors.
    calls: dict | None = None
    rescale_calls: dict | None = None
    train_latent_frames: int = 1  # video models: latent frames at the training frame count


def make_plan(
    pipe,
    layers,
    train_size,
    vae_scale_factor,
    text_tokens,
    processors=None,
    exclude=None,
    denoiser=None,
    train_frames=None,
) -> Plan:
    """Work out T, the selection and the replaceable layers; change nothing.

    ``processors`` overrides the processors to judge (what entropy-attn's own replaced, when
    already enabled). Excluded layers are neither rescaled nor replaced. ``denoiser`` defaults
    to the pipeline's (:func:`find_denoiser`).
    """
    denoiser = find_denoiser(pipe) if denoiser is None else denoiser
    _refuse_built_in_temperature(denoiser, processors, exclude)
    if family_of(unwrap(denoiser)) is not None:
        return _generic_plan(
            pipe, denoiser, layers, train_size, train_frames, vae_scale_factor, text_tokens,
            processors, exclude,
        )  # fmt: skip
    factor = vae_scale_factor_of(pipe, vae_scale_factor)
    if text_tokens is None:
        text_tokens = default_text_tokens(denoiser, pipe)
    elif isinstance(text_tokens, bool) or not isinstance(text_tokens, int) or text_tokens < 1:
        raise ValueError(f"text_tokens must be a positive int or None, got {text_tokens!r}")
    train_latent = (
        training_latent_size(denoiser, pipe)
        if train_size is None
        else pixels_to_latent(train_size, factor, "train_size")
    )
    select = _selector(layers)
    modules = attention_modules(denoiser)
    excluded = _exclusion(exclude, modules)
    processors = {name: module.processor for name, module in modules.items()} | (processors or {})
    counts = probe_tokens(denoiser, train_latent, text_tokens=text_tokens)
    reached = {name: module for name, module in modules.items() if name in counts}
    unreached = [name for name in modules if name not in counts]
    if callable(layers):
        chosen = [name for name in unreached if select(name, modules[name])]
        if chosen:
            raise ValueError(
                f"layers selects {chosen[0]!r}, which does not run in the denoiser's forward "
                "(e.g. an IP-Adapter image projection), so it has no training token count T"
            )
    return Plan(
        denoiser=denoiser,
        train_latent=train_latent,
        factor=factor,
        text_tokens=text_tokens,
        train_tokens={name: counts[name].key_tokens for name in reached},
        rescale={
            name: bool(select(name, module)) and not excluded(name, module)
            for name, module in reached.items()
        },
        replace={
            name: replacement_for(processors[name]) is not None and not excluded(name, module)
            for name, module in reached.items()
        },
        unreached=unreached,
    )


def _refuse_built_in_temperature(denoiser, processors, exclude) -> None:
    """Never two temperatures: refuse a layer whose processor scales attention by itself."""
    modules = attention_modules(denoiser)
    excluded = _exclusion(exclude, modules)
    for name, module in modules.items():
        processor = (processors or {}).get(name, module.processor)
        what = built_in_temperature(processor)
        if what is not None and not excluded(name, module):
            raise ValueError(
                f"{type(unwrap(denoiser)).__name__} layer {name!r} already applies {what} "
                "(a softmax temperature sqrt(log(N, base_sequence_length))): entropy-attn would "
                "add a second one, so it refuses. Use the model's own proportional attention."
            )


def _frame_count(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive int (frames of the video), got {value!r}")
    return value


def _generic_factor(pipe, family, override) -> int:
    if override is not None or isinstance(pipe, torch.nn.Module):
        return vae_scale_factor_of(pipe, override) if override is not None else family.spatial
    for attr in ("vae_scale_factor_spatial", "vae_scale_factor"):
        value = getattr(pipe, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    return family.spatial


def generic_latent(family, factor, size, frames, what: str, config) -> tuple[int, int, int]:
    """``(frames, height, width)`` of the latent for a size in pixels and a frame count
    (``None``: the pipelines' default for the model's ``config``)."""
    height, width = pixels_to_latent(size, factor, what)
    if frames is None:
        frames = family.defaults(config)[1]
    frames = _frame_count(frames, what.replace("size", "frames"))
    if not family.video and frames != 1:
        raise ValueError(f"{what.replace('size', 'frames')}: an image model takes 1, got {frames}")
    return family.latent_frames(frames), height, width


def _generic_plan(
    pipe, denoiser, layers, train_size, train_frames, vae_scale_factor, text_tokens,
    processors, exclude,
) -> Plan:  # fmt: skip
    """:func:`make_plan` for a denoiser of :data:`entropy_attn.integration.families.FAMILIES` (the
    generic dispatcher path): every call of every layer counted on the meta device, each call's kind
    from whether its keys grow with the image."""
    model = unwrap(denoiser)
    family = family_of(model)
    factor = _generic_factor(pipe, family, vae_scale_factor)
    if text_tokens is None:
        # A pipeline that states its text length (the digits models' one label token) wins.
        own = getattr(pipe, "text_tokens", None)
        valid = isinstance(own, int) and not isinstance(own, bool) and own >= 1
        text_tokens = own if valid else family.text_tokens
    elif isinstance(text_tokens, bool) or not isinstance(text_tokens, int) or text_tokens < 1:
        raise ValueError(f"text_tokens must be a positive int or None, got {text_tokens!r}")
    size = train_size
    if size is None:
        # The pipeline's own default_sample_size (latent pixels; FLUX.1: 128, i.e. 1024 px, as
        # the family's default; the digits-flux pipeline: 8) before the family's table.
        sample = getattr(pipe, "default_sample_size", None)
        own_size = isinstance(sample, int) and not isinstance(sample, bool) and sample >= 1
        size = (sample * factor, sample * factor) if own_size else family.defaults(model.config)[0]
    latent = generic_latent(family, factor, size, train_frames, "train_size", model.config)
    modules = attention_modules(denoiser)
    excluded = _exclusion(exclude, modules)
    processors = {name: module.processor for name, module in modules.items()} | (processors or {})
    calls = probe_calls(model, latent, text_tokens=text_tokens)
    unreached = [name for name in modules if name not in calls]
    if callable(layers):
        select = layers
        chosen = [name for name in unreached if select(name, modules[name])]
        if chosen:
            raise ValueError(
                f"layers selects {chosen[0]!r}, which makes no attention call entropy-attn can "
                "count in the denoiser's forward, so it has no training token count T"
            )
    elif layers in ("self", "all"):
        select = None
    else:
        _selector(layers)  # raises, naming the argument
    rescale_calls = {}
    for name, layer_calls in calls.items():
        if excluded(name, modules[name]):
            rescale_calls[name] = (False,) * len(layer_calls)
        elif select is not None:
            rescale_calls[name] = (bool(select(name, modules[name])),) * len(layer_calls)
        else:
            rescale_calls[name] = tuple(layers == "all" or c.kind != "cross" for c in layer_calls)
    train_tokens = {}
    for name, layer_calls in calls.items():
        on = [c for c, r in zip(layer_calls, rescale_calls[name], strict=True) if r]
        train_tokens[name] = (on or layer_calls)[0].key_tokens
    return Plan(
        denoiser=denoiser,
        train_latent=latent[1:],
        train_latent_frames=latent[0],
        factor=factor,
        text_tokens=text_tokens,
        train_tokens=train_tokens,
        rescale={name: any(on) for name, on in rescale_calls.items()},
        # Only the processor class the probe ran (a user's processor, e.g. an IP-Adapter's, may
        # attend more often than the counted calls): other processors are kept or refused.
        replace={
            name: type(processors[name]).__name__ == layer_calls[0].processor
            and calls_dispatcher(processors[name])
            and not excluded(name, modules[name])
            for name, layer_calls in calls.items()
        },
        unreached=unreached,
        calls=calls,
        rescale_calls=rescale_calls,
    )


def check_plan(plan: Plan, processors: dict) -> None:
    """Refuse what entropy-attn would get wrong or drop, before anything is changed."""
    kept = [name for name, on in plan.rescale.items() if on and not plan.replace[name]]
    if kept:
        raise ValueError(
            f"layers selects {kept[0]!r}, whose processor {type(processors[kept[0]]).__name__} is "
            "not one entropy-attn reproduces; replacing it would drop what it does. Leave such "
            f"layers out with exclude={kept!r} (the other layers keep the selection)."
        )
    for name, selected in plan.rescale.items():
        if not selected:
            continue
        # Cross-attention over one text token (the digits models' label) sees N == T == 1 at
        # every image size, where the scale is the stock one; only image keys need T > 1.
        if plan.train_tokens[name] <= 1 and kind_of(plan.denoiser.get_submodule(name)) != "cross":
            raise ValueError(
                f"layer {name!r} sees {plan.train_tokens[name]} key token at the training size "
                f"{plan.train_latent} (latent): T must be > 1; pass a larger train_size"
            )
    # Context parallelism (Ulysses, ring) is supported; what is not is refused here, by name.
    check_parallel_config(getattr(plan.denoiser, "_parallel_config", None))
    for name, replaced in plan.replace.items():
        if replaced:
            check_parallel_config(
                getattr(processors[name], "_parallel_config", None), where=f"layer {name!r}"
            )
    _warn_backends_without_scale(plan, processors)


def _warn_backends_without_scale(plan: Plan, processors: dict) -> None:
    """A backend chosen with set_attention_backend is kept; say where it cannot take the scale."""
    for name, ok in plan.replace.items():
        backend = getattr(processors[name], "_attention_backend", None)
        if ok and plan.rescale[name] and backend is not None and not backend_accepts_scale(backend):
            warnings.warn(
                f"layer {name!r} uses the attention backend {backend!r}, which takes no softmax "
                "scale: where the scale differs from 1/sqrt(d) it runs entropy-attn's op instead",
                stacklevel=5,
            )
            return
