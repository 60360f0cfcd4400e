"""diffusers integration: ``enable(pipe)`` / ``disable(pipe)`` / ``with enabled(pipe):``.

Policy lives here: which attention layers get the entropy-preserving scale, and the training
token count ``T`` of each layer. Every attention layer whose processor is a stock one that
entropy-attn reproduces (see :mod:`entropy_attn.processors`) gets the matching entropy-attn
processor (so it runs on the fused kernel on CUDA); the selected layers (self- and joint
attention by default: every layer whose keys are image tokens, as in the paper) use

    lambda = base_scale * sqrt(ln N / ln T)      (= sqrt(log_T(N) / d) for base 1/sqrt(d))

where ``N`` is the number of key tokens in the call and ``T`` the number the same layer receives
at the training resolution, counted on the real architecture (see :mod:`entropy_attn.probe`).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from . import positions as _positions
from . import redilation as _redilation
from ._extras import needs
from .families import family_of
from .generic import EntropyDispatchProcessor, built_in_temperature, calls_dispatcher, probe_calls
from .parallel import check_parallel_config
from .pipelines import controlnet_train_size, controlnets_of, enabled_models, second_experts
from .probe import attention_modules, default_text_tokens, probe_tokens, unwrap
from .processors import (
    OWN_BACKENDS,
    PAG_CHUNKS,
    EntropyAttnProcessor,
    EntropyClassicAttnProcessor,
    EntropyPAGProcessor,
    _EntropyAttnBase,
    backend_accepts_scale,
    base_scale_of,
    check_backend,
    head_dim_of,
    kind_of,
    layer_scale,
    replacement_for,
)
from .recording import MODES, EntropyRecorder

LayerSelector = str | Callable[[str, torch.nn.Module], bool]
LayerExclusion = Iterable[str] | Callable[[str, torch.nn.Module], bool] | None

_STATE_ATTR = "_entropy_attn_state"


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


# ---------------------------------------------------------------------------------------------
# Finding the denoiser, its training size and the layers to change


def find_denoiser(pipe) -> torch.nn.Module:
    """The denoiser of a pipeline (``pipe.unet``), or the model itself if given a model."""
    if isinstance(pipe, torch.nn.Module):
        model = unwrap(pipe)
        # UNet2DModel (LDM super-resolution, unconditional DDPM/LDM) has diffusers Attention
        # modules but no attn_processors API: its layers are found and set one by one.
        if not hasattr(model, "attn_processors") and not attention_modules(model):
            raise TypeError(
                f"pipe must be a diffusers pipeline or denoiser with attention layers, got "
                f"{type(pipe).__name__}"
            )
        return model
    for attr in ("unet", "transformer"):
        model = getattr(pipe, attr, None)
        if isinstance(model, torch.nn.Module):
            return find_denoiser(model)
    raise TypeError(
        f"pipe must be a diffusers pipeline with a `unet` or `transformer` (or that model "
        f"itself), got {type(pipe).__name__}"
    )


def _vae_scale_factor(pipe, override: int | None) -> int:
    if override is not None:
        if isinstance(override, bool) or not isinstance(override, int) or override < 1:
            raise ValueError(f"vae_scale_factor must be a positive int, got {override!r}")
        return override
    factor = getattr(pipe, "vae_scale_factor", None)
    if isinstance(factor, int) and factor >= 1:
        return int(factor)
    components = getattr(pipe, "components", None)
    if isinstance(pipe, torch.nn.Module) or not isinstance(components, dict):
        return 8
    return autoencoder_factor({name: getattr(c, "config", None) for name, c in components.items()})


AUTOENCODERS = ("vae", "vqvae", "movq")


def autoencoder_factor(configs: dict) -> int:
    """Pixels per latent pixel of a pipeline that sets no ``vae_scale_factor``
    (LDMSuperResolutionPipeline), from its components' configs (name -> config; ``None`` for a
    component set to ``None``): the autoencoder halves the size once per block after the first,
    as diffusers' pipelines compute it; "vae" and "vqvae" first, then any component that looks
    like an autoencoder (Kandinsky's "movq"). No autoencoder at all, not even one set to
    ``None``: pixel space, 1 (DDPMPipeline)."""

    def field(config, key):
        return config.get(key) if isinstance(config, dict) else getattr(config, key, None)

    for config in [configs.get("vae"), configs.get("vqvae"), *configs.values()]:
        channels = field(config, "block_out_channels")
        if channels and field(config, "latent_channels"):
            return 2 ** (len(channels) - 1)
    autoencoder = any(name in configs for name in AUTOENCODERS) or any(
        field(config, "latent_channels") is not None for config in configs.values()
    )
    return 8 if autoencoder else 1


def pixel_size(size, what: str = "size") -> tuple[int, int]:
    """``(height, width)`` in pixels from one int or a pair of positive ints."""
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (
        not isinstance(size, tuple | list)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise ValueError(f"{what} must be (height, width) in pixels, positive ints; got {size!r}")
    return int(size[0]), int(size[1])


# Latent tokens one attention layer may see in the token probe: far beyond any real image, and small
# enough that the probe's (batch, L, L) scores on the meta device keep a representable size.
_MAX_LATENT_TOKENS = 2**30


def _pixels_to_latent(size, factor: int, what: str) -> tuple[int, int]:
    height, width = pixel_size(size, what)
    if height % factor or width % factor:
        raise ValueError(
            f"{what} {(height, width)} must be a multiple of the VAE scale factor {factor} "
            "(pixels per latent pixel)"
        )
    latent = (height // factor, width // factor)
    if latent[0] * latent[1] > _MAX_LATENT_TOKENS:
        raise ValueError(
            f"{what} {(height, width)} gives a {latent[0]}x{latent[1]} latent, "
            f"{latent[0] * latent[1]} tokens: more than the {_MAX_LATENT_TOKENS} (2**30) the token "
            "probe can count (its L x L attention scores would overflow a tensor's size)"
        )
    return latent


# Denoisers whose config has no sample_size: the training latent their pipelines default to.
_DEFAULT_SAMPLE_SIZE = {"FluxTransformer2DModel": 128}  # FluxPipeline.default_sample_size


def training_latent_size(denoiser: torch.nn.Module, pipe=None) -> tuple[int, int]:
    """The denoiser's training latent size: ``config.sample_size``, else the pipeline's
    ``default_sample_size`` (FLUX: 128, i.e. 1024 px)."""
    model = unwrap(denoiser)
    sample_size = model.config.get("sample_size")
    if sample_size is None:
        sample_size = getattr(pipe, "default_sample_size", None)
    if sample_size is None:
        sample_size = _DEFAULT_SAMPLE_SIZE.get(type(model).__name__)
    if isinstance(sample_size, int):
        return sample_size, sample_size
    if isinstance(sample_size, tuple | list) and len(sample_size) == 2:
        return int(sample_size[0]), int(sample_size[1])
    raise ValueError(
        f"the denoiser config has no usable sample_size ({sample_size!r}); pass train_size="
    )


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
class _Plan:
    denoiser: torch.nn.Module
    train_latent: tuple[int, int]
    factor: int
    text_tokens: int
    train_tokens: dict[str, int]  # layers the token probe reached at the training size
    rescale: dict[str, bool]  # reached layers: selected for the entropy-preserving scale
    replace: dict[str, bool]  # reached layers: entropy-attn can reproduce their processor
    unreached: list[str]  # attention modules that do not run in the denoiser's forward
    # The generic path (entropy_attn.generic): per layer, its calls at the training size and
    # which of them are rescaled; None for the per-family processors.
    calls: dict | None = None
    rescale_calls: dict | None = None
    train_latent_frames: int = 1  # video models: latent frames at the training frame count


def _plan(
    pipe,
    layers,
    train_size,
    vae_scale_factor,
    text_tokens,
    processors=None,
    exclude=None,
    denoiser=None,
    train_frames=None,
) -> _Plan:
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
    factor = _vae_scale_factor(pipe, vae_scale_factor)
    if text_tokens is None:
        text_tokens = default_text_tokens(denoiser, pipe)
    elif isinstance(text_tokens, bool) or not isinstance(text_tokens, int) or text_tokens < 1:
        raise ValueError(f"text_tokens must be a positive int or None, got {text_tokens!r}")
    train_latent = (
        training_latent_size(denoiser, pipe)
        if train_size is None
        else _pixels_to_latent(train_size, factor, "train_size")
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
    return _Plan(
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
        return _vae_scale_factor(pipe, override) if override is not None else family.spatial
    for attr in ("vae_scale_factor_spatial", "vae_scale_factor"):
        value = getattr(pipe, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    return family.spatial


def _generic_latent(family, factor, size, frames, what: str) -> tuple[int, int, int]:
    """``(frames, height, width)`` of the latent for a size in pixels and a frame count."""
    height, width = _pixels_to_latent(size, factor, what)
    if frames is None:
        frames = family.train_frames
    frames = _frame_count(frames, what.replace("size", "frames"))
    if not family.video and frames != 1:
        raise ValueError(f"{what.replace('size', 'frames')}: an image model takes 1, got {frames}")
    return family.latent_frames(frames), height, width


def _generic_plan(
    pipe, denoiser, layers, train_size, train_frames, vae_scale_factor, text_tokens,
    processors, exclude,
) -> _Plan:  # fmt: skip
    """:func:`_plan` for a denoiser of :data:`entropy_attn.families.FAMILIES` (the generic
    dispatcher path): every call of every layer counted on the meta device, each call's kind
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
        size = (sample * factor, sample * factor) if own_size else family.train_size
    latent = _generic_latent(family, factor, size, train_frames, "train_size")
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
    return _Plan(
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


def _check_plan(plan: _Plan, processors: dict) -> None:
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


def _warn_backends_without_scale(plan: _Plan, processors: dict) -> None:
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


# ---------------------------------------------------------------------------------------------
# Lifecycle: a stack of enable calls per denoiser


class _DenoiserState:
    """The enable calls in force on one denoiser, oldest first (kept on the denoiser itself).

    Each handle remembers, per layer it changed, its own processor and the one it found there
    (``previous``, possibly an earlier handle's). Disabling a handle takes its processors out of
    that chain: a layer still holding it gets ``previous`` back, a later handle that had covered
    it inherits ``previous`` instead, and a layer the user has since changed is left alone.
    """

    def __init__(self, denoiser: torch.nn.Module) -> None:
        self.handles: list[EntropyAttnHandle] = []
        self.denoiser = denoiser
        self._seen_originals = getattr(denoiser, "original_attn_processors", None)
        self._seen_unbound = _EntropyAttnBase.unbound_made
        self._hook = denoiser.register_forward_pre_hook(self.reconcile)

    @staticmethod
    def of(denoiser: torch.nn.Module, create: bool = False) -> _DenoiserState | None:
        state = getattr(denoiser, _STATE_ATTR, None)
        if state is None and create:
            state = _DenoiserState(denoiser)
            setattr(denoiser, _STATE_ATTR, state)
        return state

    def close(self) -> None:
        """The last handle is gone: remove the hook and the state from the denoiser."""
        self._hook.remove()
        delattr(self.denoiser, _STATE_ATTR)

    def reconcile(self, *_hook_args) -> None:
        """Put entropy-attn's processors back where diffusers itself moved them aside without
        meaning to drop them (a forward pre-hook of the denoiser; also run by enable, disable
        and ``handle.active``). Two cases, each noticed in O(1) per forward:

        - ``fuse_qkv_projections()`` saved entropy-attn's processors in
          ``original_attn_processors`` and set ``FusedAttnProcessor2_0`` (SD3:
          ``FusedJointAttnProcessor2_0``) everywhere: entropy-attn reproduces it, so its own go
          back on (the fused one is what ``disable`` restores there);
        - ``unload_ip_adapter()`` rebuilt each processor as ``value.__class__()``: an unbound
          entropy-attn processor (see :class:`~entropy_attn.processors._EntropyAttnBase`) on a
          layer gives way to the enable call's own.
        """
        originals = getattr(self.denoiser, "original_attn_processors", None)
        if originals is not self._seen_originals:
            self._seen_originals = originals
            if isinstance(originals, dict):
                for handle in self.handles:
                    handle._retake_fused(originals)
        if _EntropyAttnBase.unbound_made != self._seen_unbound:
            self._seen_unbound = _EntropyAttnBase.unbound_made
            top = {}  # layer -> the newest handle that installed a processor there
            for handle in self.handles:
                top.update(dict.fromkeys(handle.installed, handle))
            for name, handle in top.items():
                mine, module = handle.installed[name], handle._modules[name]
                current = module.processor
                if type(current) is type(mine) and current.name is None:
                    module.set_processor(mine)

    def underlying(self, name: str, processor):
        """The processor below entropy-attn's on layer ``name``: what the layer held before the
        enable calls in force first touched it (``processor`` itself if it is not theirs)."""
        for handle in reversed(self.handles):
            if handle.installed.get(name) is processor:
                processor = handle.previous[name]
        return processor


def _judged_processors(denoiser, state: _DenoiserState | None) -> dict:
    """Per layer, the processor a new enable judges: the one installed now, seen through
    entropy-attn's own (a user's processor installed after an enable is judged as it is)."""
    modules = attention_modules(denoiser)
    if state is None:
        return {name: module.processor for name, module in modules.items()}
    state.reconcile()
    return {name: state.underlying(name, module.processor) for name, module in modules.items()}


# ---------------------------------------------------------------------------------------------
# Public API


class EntropyAttnHandle:
    """What one :func:`enable` call did to one denoiser; undo it with :meth:`disable`.

    A handle belongs to the denoiser, not to the pipeline: pipelines that share a UNet share
    its handles.

    Attributes:
        denoiser: the model whose processors were replaced.
        installed: qualified layer name -> the entropy-attn processor this call installed.
        previous: qualified layer name -> the processor it replaced (possibly an earlier
            enable call's).
        train_latent_size: ``(height, width)`` of the training latent used for ``T``.
        recorder: the :class:`~entropy_attn.recording.EntropyRecorder`, or ``None`` (each
            ControlNet records into its own, on its handle).
        controlnet_handles: the handles the same call pushed on the pipeline's ControlNets
            (``()`` without ControlNets or with ``controlnet=False``); :meth:`disable` undoes
            them too.
    """

    def __init__(self, denoiser, installed, previous, plan, recorder, hook):
        self.denoiser = denoiser
        self.installed = installed
        self.previous = previous
        self.train_latent_size = plan.train_latent
        self.train_tokens = dict(plan.train_tokens)
        self.rescaled_layers = [name for name, on in plan.rescale.items() if on]
        self.recorder = recorder
        self._hook = hook
        modules = attention_modules(denoiser)
        self._modules = {name: modules[name] for name in installed}
        # The diffusers backend each installed processor started with: a different one at
        # disable was set by the user (set_attention_backend / reset_attention_backend while
        # enabled) and goes on to the processor put back.
        self._backends = {
            name: getattr(p, "_attention_backend", None) for name, p in installed.items()
        }
        # Layers where fuse_qkv_projections() set a fused processor over this call's: what
        # disable puts there (the model's projections stay fused until unfuse_qkv_projections).
        self._fused: dict = {}
        # [pipeline, PAG processors found there, entropy-attn's] for a PAG pipeline (see enable)
        self._pag: list | None = None
        self.positions = "stock"
        self.redilate = False
        self._fixes: list = []  # hooks and patches of positions= / redilate=, removable

    def __getstate__(self) -> dict:
        # A copy of the denoiser (copy.deepcopy, pickle) is not part of the PAG pipeline.
        return {**self.__dict__, "_pag": None}

    def _undo_pag(self, later) -> None:
        if self._pag is None:
            return
        pipe, found, ours = self._pag
        self._pag = None
        if getattr(pipe, "_pag_attn_processors", None) is ours:
            pipe._pag_attn_processors = found
            return
        for handle in later:  # a later enable wrapped these: it restores what this one found
            if handle._pag is not None and handle._pag[1] is ours:
                handle._pag[1] = found
                return

    def _retake_fused(self, originals: dict) -> None:
        for name, mine in self.installed.items():
            module = self._modules[name]
            fused = module.processor
            saved = originals.get(f"{name}.processor")
            fused_kind = type(fused).__name__.startswith("Fused")  # fuse_qkv_projections()
            if saved is mine and fused_kind and replacement_for(fused) is type(mine):
                self._fused[name] = fused
                module.set_processor(mine)

    def _newest_with(self, attribute: str) -> bool:
        """Whether this handle is in force and the newest one in force that sets ``attribute``
        (a position preset, re-dilation): nested calls override, and the outer one resumes."""
        state = _DenoiserState.of(self.denoiser)
        if state is None or self not in state.handles:
            return False
        setting = [h for h in state.handles if getattr(h, attribute) not in ("stock", False)]
        return bool(setting) and setting[-1] is self

    @property
    def original_processors(self) -> dict:
        """Qualified layer name -> the processor the layer held before entropy-attn first
        touched it (what :func:`disable` puts back), for the layers this call replaced."""
        state = _DenoiserState.of(self.denoiser)
        if state is None or self not in state.handles:
            return dict(self.previous)
        return {name: state.underlying(name, p) for name, p in self.previous.items()}

    controlnet_handles: tuple[EntropyAttnHandle, ...] = ()  # set by enable
    # Wan 2.2's second expert (pipe.transformer_2), patched by the same call; set by enable.
    expert_handles: tuple[EntropyAttnHandle, ...] = ()

    @property
    def active(self) -> bool:
        """Whether any processor this call installed is installed now (a later enable, or the
        user's own ``set_attn_processor``, may have replaced them all)."""
        state = _DenoiserState.of(self.denoiser)
        if state is None or self not in state.handles:
            return False
        state.reconcile()
        return bool(self._fixes) or any(
            self._modules[name].processor is p for name, p in self.installed.items()
        )

    @property
    def scale_active(self) -> bool:
        """Whether the entropy-preserving scale of this call is installed on some layer now."""
        state = _DenoiserState.of(self.denoiser)
        if state is None or self not in state.handles:
            return False
        rescaled = set(self.rescaled_layers)
        return any(
            self._modules[name].processor is p
            for name, p in self.installed.items()
            if name in rescaled
        )

    def entropy_rows(self) -> list[dict]:
        """Recorded entropy, as :meth:`EntropyRecorder.rows
        <entropy_attn.recording.EntropyRecorder.rows>`: with ``record_entropy=True`` one dict per
        (step, layer call): step, layer, kind, heads, head_dim, query_tokens, n_tokens,
        train_tokens, scale, entropy (mean nats over batch, heads and queries); with
        ``record_entropy="mean"`` one per layer and call shape, with ``calls`` and ``steps``."""
        return self._need_recorder().rows()

    def entropy_dataframe(self):
        """:meth:`entropy_rows` as a ``pandas.DataFrame`` (needs pandas)."""
        return self._need_recorder().dataframe()

    def reset_entropy(self) -> None:
        """Forget recorded entropy and restart the step count (e.g. before a new generation)."""
        self._need_recorder().reset()

    def _need_recorder(self) -> EntropyRecorder:
        if self.recorder is None:
            raise RuntimeError("entropy was not recorded: use enable(pipe, record_entropy=True)")
        return self.recorder

    def disable(self) -> None:
        """Undo this enable call (harmless if already done).

        A layer that still holds this call's processor gets back the processor it replaced; a
        layer whose processor the user has changed since keeps the user's; a later enable call
        still in force that covered this one's processors will restore what this one replaced.
        The ControlNet handles of this call (:attr:`controlnet_handles`) are undone too.
        """
        for handle in (*self.expert_handles, *self.controlnet_handles):
            handle.disable()
        state = _DenoiserState.of(self.denoiser)
        if state is None or self not in state.handles:
            return
        state.reconcile()
        originals = getattr(self.denoiser, "original_attn_processors", None)
        later = state.handles[state.handles.index(self) + 1 :]
        self._undo_pag(later)
        for name, mine in self.installed.items():
            self._pass_on_backend(name, mine, self.previous[name])
            if isinstance(originals, dict) and originals.get(f"{name}.processor") is mine:
                # unfuse_qkv_projections() must not bring this call's processor back later.
                originals[f"{name}.processor"] = self.previous[name]
            module = self._modules[name]
            if module.processor is mine:
                # Under context parallelism the stock processor put back already holds diffusers'
                # config: a generic-path processor's is its stock processor's (read and written
                # through), whether enable_parallelism came before or after enable.
                module.set_processor(self._fused.pop(name, self.previous[name]))
                continue
            for handle in later:
                if handle.previous.get(name) is mine:
                    handle.previous[name] = self.previous[name]
                    break
        if self._hook is not None:
            self._hook.remove()
        for fix in reversed(self._fixes):
            fix.remove()
        self._fixes = []
        state.handles.remove(self)
        if not state.handles:
            state.close()

    def _pass_on_backend(self, name: str, mine, previous) -> None:
        """A backend the user set on ``mine`` while it was installed goes to ``previous``."""
        backend = getattr(mine, "_attention_backend", None)
        if backend != self._backends[name] and hasattr(previous, "_attention_backend"):
            previous._attention_backend = backend

    def __repr__(self) -> str:
        return (
            f"EntropyAttnHandle({type(self.denoiser).__name__}, "
            f"{len(self.installed)} processors replaced, "
            f"{len(self.rescaled_layers)} rescaled, train latent {self.train_latent_size}, "
            f"active={self.active})"
        )


def _recorder_for(record_entropy, record_last_steps) -> EntropyRecorder | None:
    if isinstance(record_entropy, bool):
        mode = "all" if record_entropy else None
    elif isinstance(record_entropy, str):
        if record_entropy not in MODES:
            raise ValueError(
                f"record_entropy must be True, False, 'all' or 'mean', got {record_entropy!r}"
            )
        mode = record_entropy
    else:
        raise TypeError(
            f"record_entropy must be a bool or 'all'/'mean', got {type(record_entropy).__name__}"
        )
    if record_last_steps is not None and mode != "all":
        raise ValueError(
            "record_last_steps needs record_entropy=True (or 'all'), got "
            f"record_entropy={record_entropy!r}"
        )
    if mode is None:
        return None
    try:
        return EntropyRecorder(mode, last_steps=record_last_steps)
    except ValueError as error:
        raise ValueError(str(error).replace("last_steps", "record_last_steps")) from None


@needs("diffusers")
def enable(
    pipe,
    *,
    layers: LayerSelector = "self",
    exclude: LayerExclusion = None,
    train_size: int | tuple[int, int] | None = None,
    vae_scale_factor: int | None = None,
    record_entropy: bool | str = False,
    record_last_steps: int | None = None,
    backend: str = "auto",
    text_tokens: int | None = None,
    controlnet: bool = True,
    scale: bool = True,
    positions: str = "stock",
    redilate: bool = False,
    redilate_min_timestep: float = _redilation.DEFAULT_MIN_TIMESTEP,
    redilate_blocks: Callable[[str, torch.nn.Module], bool] | None = None,
    train_frames: int | None = None,
) -> EntropyAttnHandle:
    """Install entropy-attn processors on a pipeline's denoiser (or on a bare UNet).

    Args:
        pipe: a diffusers pipeline with a ``unet`` (``StableDiffusionPipeline``,
            ``StableDiffusionXLPipeline``, ``LDMTextToImagePipeline``, ...) or the UNet itself
            (``torch.compile``'d models are unwrapped).
        layers: which layers get the entropy-preserving scale: ``"self"`` (self-attention only,
            as in the paper), ``"all"``, or a callable ``(name, attention_module) -> bool``. The
            other layers keep their scale but also run through the fused kernel.
        exclude: layers entropy-attn leaves entirely alone (processor kept, scale kept), on top
            of ``layers``: qualified layer names (``"down_blocks.0.attentions.0.transformer_
            blocks.0.attn1"``), or a callable ``(name, attention_module) -> bool``. This is how
            to keep a custom processor on a layer ``layers`` selects without changing the
            selection of the others.
        train_size: training image size in **pixels**, ``(height, width)`` or one int; default
            ``unet.config.sample_size * vae_scale_factor`` (512 for SD-2.1-base, 256 for
            LDM-256, 1024 for SDXL).
        vae_scale_factor: pixels per latent pixel; default ``pipe.vae_scale_factor``, or 8 for
            a bare UNet.
        record_entropy: ``True`` / ``"all"``: record per step and layer the mean attention
            entropy, with N, T and lambda (read with ``handle.entropy_rows()``); ``"mean"``:
            one running mean per layer and call shape (memory bounded however long the run).
        record_last_steps: with ``record_entropy=True``, keep the rows of the last this many
            steps only.
        backend: ``"auto"`` keeps an attention backend chosen with diffusers'
            ``set_attention_backend`` (FLUX processors: FA3, cuDNN, Sage, ...) and passes it the
            scale, elsewhere the fused kernel on CUDA and PyTorch otherwise; ``"triton"`` or
            ``"torch"`` (see :func:`entropy_attn.attention`); ``"sdpa"``: PyTorch SDPA with the
            scale (PyTorch picks flash, cuDNN, ...); or a diffusers backend name (``"native"``,
            ``"flash"``, ``"_flash_3"``, ``"sage"``, ...) for every layer. A diffusers backend that
            takes no scale, and any layer while entropy is recorded, runs entropy-attn's op.
        text_tokens: text sequence length assumed when counting tokens at the training size;
            default per model family: 77 for UNets (CLIP, LDMBert), 333 for SD3 (77 CLIP + 256
            T5), 512 for FLUX, 120 for PixArt-alpha and 300 for PixArt-Sigma, and for the
            generic path's families their entry in ``entropy_attn.families``. It matters for
            joint attention, where text tokens are keys too.
        train_frames: video models (Wan, HunyuanVideo, LTX-Video, CogVideoX): the frame count
            of the training size; default per family (``entropy_attn.families``: Wan 81,
            HunyuanVideo 129, LTX-Video 161, CogVideoX 49).
        controlnet: also patch the pipeline's ControlNet(s) (``pipe.controlnet``, each net of a
            ``MultiControlNetModel``), with ``T`` counted on each ControlNet's own architecture
            at the same training size; ``layers`` gets each model's own layer names. Their
            handles are ``handle.controlnet_handles``; ``disable`` restores them too.
        scale: ``False`` keeps every layer at its stock scale (``layers`` then selects nothing):
            the size fixes below without the paper's scale, or entropy recording of stock.
        positions: ``"stock"`` (default: the model's own), ``"interpolate"``, ``"ntk"`` or
            ``"yarn"``; see :mod:`entropy_attn.positions` (FLUX and registered RoPE backbones:
            all three; SD3: ``"interpolate"``; PixArt: ``"interpolate"``, which is its stock).
            Each changes only axes longer than at the training size. YaRN's attention
            temperature is dropped while the scale is in force on the denoiser (never both).
        redilate: ScaleCrafter's re-dilated convolutions for UNets at larger sizes (see
            :mod:`entropy_attn.redilation`): dilation from the size ratio per axis, in the
            blocks ``redilate_blocks`` selects (callable ``(name, conv) -> bool``; default: the
            ResNet and sampler convs outside the outermost down and up blocks), on calls whose
            timestep is ``>= redilate_min_timestep`` (default 600 of 1000: the first 40% of
            sampling).

        The newest call in force that sets ``positions`` (or ``redilate``) is the one that
        applies; a call with the defaults changes neither, so an outer call's setting carries on
        through it. ControlNets keep their stock positions and convolutions.

    Returns:
        An :class:`EntropyAttnHandle`. Enable calls on one denoiser stack: a new call judges the
        processors installed now (entropy-attn's own seen as what they replaced), replaces
        entropy-attn's and the stock ones, keeps any other processor it does not select, and
        ``handle.disable()`` returns the denoiser to the state the call found.
        :func:`disable` undoes every call in force.

    Raises:
        ValueError: a selected layer has a processor entropy-attn does not reproduce (for example
            an IP-Adapter processor), which it would otherwise drop (leave it out with
            ``exclude=``); ``exclude`` names a layer the denoiser does not have; a selected
            layer sees one key at the training size; the denoiser runs tensor parallelism, or
            context parallelism with uneven shards (``ring_anything``/``ulysses_anything``;
            Ulysses and ring themselves are supported, in either order with ``enable``);
            ``backend`` is unknown, or a diffusers backend whose package is missing; a
            ControlNet of a class entropy-attn cannot count tokens for (``controlnet=False``
            leaves it stock); a perturbed-attention guidance (PAG) pipeline whose PAG
            processors are not the identity self-attention ones (SD3, HunyuanDiT). Nothing is
            changed when ``enable`` raises (the denoiser and every ControlNet are judged first).

    Perturbed-attention guidance pipelines (``StableDiffusionPAGPipeline`` and the other UNet and
    PixArt PAG pipelines): the PAG processors they install on ``pag_applied_layers`` at every
    call are replaced by :class:`~entropy_attn.processors.EntropyPAGProcessor`, so those layers
    get the scale and are recorded too; PAG's perturbed branch keeps its identity attention.

    Attention modules that do not run in the denoiser's forward (an IP-Adapter Plus image
    projection, say) have no training token count; they are left as they are, with a warning.
    """
    _recorder_for(record_entropy, record_last_steps)  # validated before anything changes
    check_backend(backend)
    pag = _pag_processors(pipe)
    for flag, value in (("controlnet", controlnet), ("scale", scale), ("redilate", redilate)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag} must be a bool, got {type(value).__name__}")
    denoiser = find_denoiser(pipe)
    _positions.check_preset(positions, denoiser)
    convs = _check_redilation(denoiser, redilate, redilate_min_timestep, redilate_blocks)
    if not scale:
        if layers != "self":
            raise ValueError(
                f"layers={layers!r} selects layers for the scale, but scale=False: drop one"
            )
        layers = _select_none
    experts = second_experts(pipe)  # Wan 2.2: transformer_2, judged and patched like transformer
    nets = [net for _, net in controlnets_of(pipe)] if controlnet else []
    models = [denoiser, *experts, *nets]
    sizes = [train_size] * (1 + len(experts))
    if nets:
        sizes += [controlnet_train_size(pipe, denoiser, train_size, vae_scale_factor)] * len(nets)
    # Judge every model first (what is installed now, through entropy-attn's own processors),
    # so that a refusal on any of them changes nothing. (Loops, not comprehensions: warnings'
    # stacklevel counts frames.)
    plans = []
    for model, size, model_exclude in zip(
        models, sizes, _split_exclusion(exclude, models), strict=True
    ):
        plans.append(
            _judge(
                pipe,
                model,
                layers,
                model_exclude,
                size,
                vae_scale_factor,
                text_tokens,
                train_frames,
            )  # fmt: skip
        )
    handles = []
    for plan, processors in plans:
        recorder = _recorder_for(record_entropy, record_last_steps)  # one per model
        handles.append(_install(plan, processors, recorder, backend))
    handles[0].expert_handles = tuple(handles[1 : 1 + len(experts)])
    handles[0].controlnet_handles = tuple(handles[1 + len(experts) :])
    if pag is not None:
        _install_pag(pipe, handles[0], pag)
    expert_plans = [plan for plan, _ in plans[1 : 1 + len(experts)]]
    _install_fixes(
        handles[0], plans[0][0], positions, redilate, redilate_min_timestep, convs, expert_plans
    )
    return handles[0]


def _pag_processors(pipe) -> tuple | None:
    """The two PAG processors a perturbed-attention guidance pipeline installs on its
    ``pag_applied_layers`` at every call (``None`` for other pipelines); refuses the PAG
    processors entropy-attn does not reproduce (SD3's joint, HunyuanDiT's)."""
    try:
        from diffusers.pipelines.pag.pag_utils import PAGMixin
    except ImportError:  # a diffusers without PAG
        return None
    if not isinstance(pipe, PAGMixin):
        return None
    found = getattr(pipe, "_pag_attn_processors", None)
    if found is None:  # no PAG processors set: diffusers itself refuses a PAG call
        return None
    stock = tuple(p.stock if isinstance(p, EntropyPAGProcessor) else p for p in found or ())
    if len(stock) != 2 or any(type(p).__name__ not in PAG_CHUNKS for p in stock):
        names = sorted({type(p).__name__ for p in stock}) or [repr(found)]
        raise ValueError(
            f"{type(pipe).__name__} is a perturbed-attention guidance (PAG) pipeline whose PAG "
            f"processors ({', '.join(names)}) entropy-attn does not reproduce: on its "
            "pag_applied_layers they would run at the stock scale, unrecorded. Supported: "
            f"{sorted(PAG_CHUNKS)}; or build the pipeline without PAG from the same components"
        )
    return found


def _install_pag(pipe, handle: EntropyAttnHandle, found: tuple) -> None:
    """PAG's processors in the pipeline become entropy-attn's: its guided chunks run through the
    layer's processor of ``handle`` (scale and recording), the perturbed chunk stays identity."""
    layers = {
        handle._modules[name]: processor
        for name, processor in handle.installed.items()
        if isinstance(processor, EntropyAttnProcessor | EntropyClassicAttnProcessor)
    }
    stock = tuple(p.stock if isinstance(p, EntropyPAGProcessor) else p for p in found)
    ours = tuple(EntropyPAGProcessor(p, layers) for p in stock)
    pipe._pag_attn_processors = ours
    handle._pag = [pipe, found, ours]


def _select_none(name: str, attn: torch.nn.Module) -> bool:
    return False


def _check_redilation(denoiser, redilate, min_timestep, blocks) -> dict:
    """The convs ``redilate`` would change (none when off); refuses what it cannot do."""
    if not redilate:
        if blocks is not None:
            raise ValueError("redilate_blocks is given but redilate is False")
        if min_timestep != _redilation.DEFAULT_MIN_TIMESTEP:
            raise ValueError("redilate_min_timestep is given but redilate is False")
        return {}
    if not (hasattr(denoiser, "down_blocks") and hasattr(denoiser, "up_blocks")):
        raise ValueError(
            f"redilate=True applies to UNets (down_blocks/up_blocks), not {type(denoiser).__name__}"
        )
    if isinstance(min_timestep, bool) or not isinstance(min_timestep, int | float):
        raise TypeError(f"redilate_min_timestep must be a number, got {min_timestep!r}")
    if not math.isfinite(min_timestep):
        raise ValueError(f"redilate_min_timestep must be finite, got {min_timestep!r}")
    if blocks is not None and not callable(blocks):
        raise TypeError("redilate_blocks must be a callable (name, conv) -> bool or None")
    convs = _redilation.selected_convs(denoiser, blocks)
    if not convs:
        raise ValueError("redilate=True but redilate_blocks selects no convolution of the UNet")
    return convs


def _install_fixes(handle, plan, positions, redilate, min_timestep, convs, experts=()) -> None:
    """Install the size fixes of one enable call on its denoiser (removed by its disable);
    ``experts``: the plans of Wan 2.2's second expert, which gets the same positions."""
    handle.positions, handle.redilate = positions, redilate
    denoiser = plan.denoiser
    if positions != "stock":
        try:
            for model_plan in (plan, *experts):
                model = model_plan.denoiser
                latent = (model_plan.train_latent_frames, *model_plan.train_latent)
                context = _positions.PositionsContext(
                    positions, _positions.train_extent(model, latent)
                )
                context.effective = lambda: handle._newest_with("positions")
                context.scale_in_force = lambda model=model: _scale_in_force(model)
                handle._fixes += _positions.install(model, context)
        except Exception:
            handle.disable()  # nothing stays changed when enable raises
            raise
    if redilate:
        context = _redilation.RedilationContext(plan.train_latent, min_timestep)
        context.effective = lambda: handle._newest_with("redilate")
        handle._fixes += _redilation.install(denoiser, context, convs)


def _scale_in_force(denoiser) -> bool:
    state = _DenoiserState.of(denoiser)
    return state is not None and any(h.scale_active for h in state.handles)


def _split_exclusion(exclude: LayerExclusion, models: list) -> list[LayerExclusion]:
    """``exclude`` for each model: a callable or ``None`` as it is; layer names go to the
    models that have them (a name none of them has is refused)."""
    if exclude is None or callable(exclude) or len(models) == 1:
        return [exclude] * len(models)
    names = [set(attention_modules(model)) for model in models]
    everything = set().union(*names)
    if isinstance(exclude, str):
        exclude = [exclude]
    try:
        excluded = list(exclude)
    except TypeError:
        return [exclude] * len(models)  # refused by _exclusion, naming the type
    unknown = [n for n in excluded if not isinstance(n, str) or n not in everything]
    return [
        [n for n in excluded if isinstance(n, str) and n in own] + (unknown if i == 0 else [])
        for i, own in enumerate(names)
    ]


def _judge(
    pipe, model, layers, exclude, train_size, vae_scale_factor, text_tokens, train_frames=None
):
    """The plan for one model of ``pipe`` and the processors it judged; refuses what it would
    get wrong or drop. Changes nothing."""
    judged = _judged_processors(model, _DenoiserState.of(model))
    plan = _plan(
        pipe, layers, train_size, vae_scale_factor, text_tokens, judged, exclude, model,
        train_frames,
    )  # fmt: skip
    _check_plan(plan, judged)
    return plan, judged


def _install(plan: _Plan, judged: dict, recorder, backend: str) -> EntropyAttnHandle:
    """Install a judged plan on its model: one handle, pushed on that model's stack (its forward
    starts a step of ``recorder``)."""
    denoiser = plan.denoiser
    if plan.unreached:
        warnings.warn(
            f"entropy-attn leaves {len(plan.unreached)} attention layer(s) that do not run in the "
            f"denoiser's forward unchanged ({type(denoiser).__name__}), e.g. "
            f"{plan.unreached[0]!r}",
            stacklevel=3,
        )
    modules = attention_modules(denoiser)
    installed, previous = {}, {}
    for name, ok in plan.replace.items():
        if not ok:
            continue
        module = modules[name]
        options = dict(
            train_tokens=plan.train_tokens[name],
            rescale=plan.rescale[name],
            backend=backend,
            recorder=recorder,
            attention_backend=_attention_backend_for(module.processor, backend),
        )
        cls = replacement_for(judged[name])
        if plan.calls is not None:  # the generic path: per call T and selection
            cls = EntropyDispatchProcessor
            options.update(calls=plan.calls[name], rescale=plan.rescale_calls[name])
        processor = cls.replacing(judged[name], name, **options)
        previous[name] = module.processor
        installed[name] = processor
        module.set_processor(processor)
    hook = None if recorder is None else denoiser.register_forward_pre_hook(recorder.next_step)
    handle = EntropyAttnHandle(denoiser, installed, previous, plan, recorder, hook)
    _DenoiserState.of(denoiser, create=True).handles.append(handle)
    return handle


def _attention_backend_for(processor, backend: str):
    """The diffusers backend a replacement processor calls: the one named in ``enable``, else,
    for ``backend="auto"``, the one the user chose with ``set_attention_backend``."""
    if backend not in OWN_BACKENDS:
        return backend
    return getattr(processor, "_attention_backend", None) if backend == "auto" else None


def disable(pipe) -> None:
    """Undo every :func:`enable` call in force on the pipeline's denoiser and ControlNets,
    newest first: each
    layer that still holds an entropy-attn processor gets back the very processor object it had
    before entropy-attn first touched it; layers the user changed since keep the user's.
    Harmless if never enabled."""
    for model in enabled_models(pipe):
        state = _DenoiserState.of(model)
        if state is not None:
            for handle in reversed(list(state.handles)):
                handle.disable()


def handles(pipe) -> list[EntropyAttnHandle]:
    """The enable calls in force on the pipeline's denoiser (or on a denoiser), oldest first; a
    copy of an enabled denoiser (``copy.deepcopy``, ``pickle``, ``torch.save``) has its own."""
    state = _DenoiserState.of(find_denoiser(pipe))
    return [] if state is None else list(state.handles)


@contextlib.contextmanager
def enabled(pipe, **options) -> Iterator[EntropyAttnHandle]:
    """``with enabled(pipe, **options) as handle:`` runs the block with entropy-attn on, and
    leaves the pipeline as it found it (an enable call already in force, with its recording,
    carries on after the block)."""
    handle = enable(pipe, **options)
    try:
        yield handle
    finally:
        handle.disable()


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
    judged = _judged_processors(denoiser, _DenoiserState.of(denoiser))
    plan = _plan(
        pipe, layers, train_size, vae_scale_factor, text_tokens, judged, exclude, None,
        train_frames,
    )  # fmt: skip
    if plan.calls is not None:
        return _generic_layer_table(plan, size, frames, train_frames)
    if frames is not None:
        raise ValueError(f"frames applies to video models only, got {frames!r}")
    latent = _pixels_to_latent(size, plan.factor, "size")
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


def _generic_layer_table(plan: _Plan, size, frames, train_frames) -> list[LayerInfo]:
    model = unwrap(plan.denoiser)
    family = family_of(model)
    if frames is None:
        frames = train_frames
    latent = _generic_latent(family, plan.factor, size, frames, "size")
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


__all__ = [
    "EntropyAttnHandle",
    "EntropyAttnProcessor",
    "LayerInfo",
    "disable",
    "enable",
    "enabled",
    "find_denoiser",
    "handles",
    "layer_scale",
    "layer_table",
    "training_latent_size",
]
