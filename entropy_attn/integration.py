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
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .probe import attention_modules, default_text_tokens, probe_tokens, unwrap
from .processors import (
    OWN_BACKENDS,
    EntropyAttnProcessor,
    backend_accepts_scale,
    base_scale_of,
    check_backend,
    head_dim_of,
    kind_of,
    layer_scale,
    replacement_for,
)
from .recording import EntropyRecorder

LayerSelector = str | Callable[[str, torch.nn.Module], bool]

_HANDLE_ATTR = "_entropy_attn_handle"


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
        if not hasattr(unwrap(pipe), "attn_processors"):
            raise TypeError(
                f"pipe must be a diffusers pipeline or denoiser with attention processors, got "
                f"{type(pipe).__name__}"
            )
        return unwrap(pipe)
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
    return int(factor) if isinstance(factor, int) and factor >= 1 else 8


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


def _pixels_to_latent(size, factor: int, what: str) -> tuple[int, int]:
    height, width = pixel_size(size, what)
    if height % factor or width % factor:
        raise ValueError(
            f"{what} {(height, width)} must be a multiple of the VAE scale factor {factor} "
            "(pixels per latent pixel)"
        )
    return height // factor, width // factor


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


def _plan(pipe, layers, train_size, vae_scale_factor, text_tokens, processors=None) -> _Plan:
    """Work out T, the selection and the replaceable layers; change nothing.

    ``processors`` overrides the processors to judge (the originals, when already enabled).
    """
    denoiser = find_denoiser(pipe)
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
        rescale={name: bool(select(name, module)) for name, module in reached.items()},
        replace={name: replacement_for(processors[name]) is not None for name in reached},
        unreached=unreached,
    )


def _check_plan(plan: _Plan, processors: dict) -> None:
    """Refuse what entropy-attn would get wrong or drop, before anything is changed."""
    for name, selected in plan.rescale.items():
        if not selected:
            continue
        if not plan.replace[name]:
            raise ValueError(
                f"layers selects {name!r}, whose processor {type(processors[name]).__name__} is "
                "not one entropy-attn reproduces; replacing it would drop what it does. Exclude "
                "such layers with layers=callable(name, module)."
            )
        if plan.train_tokens[name] <= 1:
            raise ValueError(
                f"layer {name!r} sees {plan.train_tokens[name]} key token at the training size "
                f"{plan.train_latent} (latent): T must be > 1; pass a larger train_size"
            )
    if getattr(plan.denoiser, "_parallel_config", None) is not None or any(
        getattr(processors[name], "_parallel_config", None) is not None for name in plan.replace
    ):
        raise ValueError(
            "the denoiser runs context parallelism (enable_parallelism): entropy-attn's "
            "processors attend over local keys only and would be wrong; not supported"
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
                stacklevel=4,
            )
            return


# ---------------------------------------------------------------------------------------------
# Public API


class EntropyAttnHandle:
    """What :func:`enable` did to one denoiser; undo it with :meth:`disable`.

    Attributes:
        denoiser: the model whose processors were replaced.
        original_processors: qualified layer name -> the processor object that was there before.
        train_latent_size: ``(height, width)`` of the training latent used for ``T``.
        recorder: the :class:`~entropy_attn.recording.EntropyRecorder`, or ``None``.
    """

    def __init__(self, denoiser, original_processors, train_latent_size, plan, recorder, hook):
        self.denoiser = denoiser
        self.original_processors = original_processors
        self.train_latent_size = train_latent_size
        self.train_tokens = dict(plan.train_tokens)
        self.rescaled_layers = [name for name, on in plan.rescale.items() if on]
        self.recorder = recorder
        self._hook = hook

    controlnet_handles: tuple[EntropyAttnHandle, ...] = ()  # set by enable on a ControlNet pipeline

    @property
    def active(self) -> bool:
        return getattr(self.denoiser, _HANDLE_ATTR, None) is self

    def entropy_rows(self) -> list[dict]:
        """Recorded entropy, one dict per (step, layer call): step, layer, kind, heads, head_dim,
        query_tokens, n_tokens, train_tokens, scale, entropy (mean nats over batch, heads and
        queries). Needs ``enable(..., record_entropy=True)``."""
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
        """Put back the original processor objects (harmless if already done)."""
        for handle in self.controlnet_handles:
            handle.disable()
        if not self.active:
            return
        modules = attention_modules(self.denoiser)
        for name, processor in self.original_processors.items():
            modules[name].set_processor(processor)
        if self._hook is not None:
            self._hook.remove()
        delattr(self.denoiser, _HANDLE_ATTR)

    def __repr__(self) -> str:
        return (
            f"EntropyAttnHandle({type(self.denoiser).__name__}, "
            f"{len(self.original_processors)} processors replaced, "
            f"{len(self.rescaled_layers)} rescaled, train latent {self.train_latent_size}, "
            f"active={self.active})"
        )


def enable(
    pipe,
    *,
    layers: LayerSelector = "self",
    train_size: int | tuple[int, int] | None = None,
    vae_scale_factor: int | None = None,
    record_entropy: bool = False,
    backend: str = "auto",
    text_tokens: int | None = None,
    controlnet: bool = True,
) -> EntropyAttnHandle:
    """Install entropy-attn processors on a pipeline's denoiser (or on a bare UNet).

    Args:
        pipe: a diffusers pipeline with a ``unet`` (``StableDiffusionPipeline``,
            ``StableDiffusionXLPipeline``, ``LDMTextToImagePipeline``, ...) or the UNet itself
            (``torch.compile``'d models are unwrapped).
        layers: which layers get the entropy-preserving scale: ``"self"`` (self-attention only,
            as in the paper), ``"all"``, or a callable ``(name, attention_module) -> bool``. The
            other layers keep their scale but also run through the fused kernel.
        train_size: training image size in **pixels**, ``(height, width)`` or one int; default
            ``unet.config.sample_size * vae_scale_factor`` (512 for SD-2.1-base, 256 for
            LDM-256, 1024 for SDXL).
        vae_scale_factor: pixels per latent pixel; default ``pipe.vae_scale_factor``, or 8 for
            a bare UNet.
        record_entropy: record per step and layer the mean attention entropy, with N, T and
            lambda (read with ``handle.entropy_rows()``).
        backend: ``"auto"`` keeps an attention backend chosen with diffusers'
            ``set_attention_backend`` (FLUX processors: FA3, cuDNN, Sage, ...) and passes it the
            scale, elsewhere the fused kernel on CUDA and PyTorch otherwise; ``"triton"`` or
            ``"torch"`` (see :func:`entropy_attn.attention`); ``"sdpa"``: PyTorch SDPA with the
            scale (PyTorch picks flash, cuDNN, ...); or a diffusers backend name (``"native"``,
            ``"flash"``, ``"_flash_3"``, ``"sage"``, ...) for every layer. A diffusers backend that
            takes no scale, and any layer while entropy is recorded, runs entropy-attn's op.
        text_tokens: text sequence length assumed when counting tokens at the training size;
            default per model family: 77 for UNets (CLIP, LDMBert), 333 for SD3 (77 CLIP + 256
            T5), 512 for FLUX, 120 for PixArt-alpha and 300 for PixArt-Sigma. It matters for
            joint attention, where text tokens are keys too.
        controlnet: also patch the pipeline's ControlNet(s) (``pipe.controlnet``, each net of a
            ``MultiControlNetModel``), with ``T`` counted on each ControlNet's own architecture
            at the same training size; ``layers`` gets each model's own layer names. Their
            handles are ``handle.controlnet_handles``; ``disable`` restores them too.

    Returns:
        An :class:`EntropyAttnHandle`. Calling ``enable`` again first undoes the earlier call,
        then applies the new options, so ``disable`` still restores the processors that were
        there before the first call.

    Raises:
        ValueError: a selected layer has a processor entropy-attn does not reproduce (for example
            an IP-Adapter processor), which it would otherwise drop (exclude it with ``layers=``);
            a selected layer sees one key at the training size; the denoiser runs context
            parallelism; ``backend`` is unknown, or a diffusers backend whose package is
            missing. Nothing is changed when ``enable`` raises, also when it was enabled before.

    Attention modules that do not run in the denoiser's forward (an IP-Adapter Plus image
    projection, say) have no training token count; they are left as they are, with a warning.
    """
    if not isinstance(record_entropy, bool):
        raise TypeError(f"record_entropy must be a bool, got {type(record_entropy).__name__}")
    check_backend(backend)
    from .pipelines import controlnets_of, enable_with_controlnets  # they use this module

    if not isinstance(controlnet, bool):
        raise TypeError(f"controlnet must be a bool, got {type(controlnet).__name__}")
    if controlnet and controlnets_of(pipe):
        return enable_with_controlnets(
            enable,
            pipe,
            layers=layers,
            train_size=train_size,
            vae_scale_factor=vae_scale_factor,
            record_entropy=record_entropy,
            backend=backend,
            text_tokens=text_tokens,
        )
    denoiser = find_denoiser(pipe)
    previous = getattr(denoiser, _HANDLE_ATTR, None)
    # Judge the processors that were there before any enable, and fail before changing anything.
    originals = dict(previous.original_processors) if previous is not None else {}
    plan = _plan(pipe, layers, train_size, vae_scale_factor, text_tokens, originals)
    modules = attention_modules(denoiser)
    processors = {name: module.processor for name, module in modules.items()} | originals
    _check_plan(plan, processors)
    if plan.unreached:
        warnings.warn(
            f"entropy-attn leaves {len(plan.unreached)} attention layer(s) that do not run in the "
            f"denoiser's forward unchanged, e.g. {plan.unreached[0]!r}",
            stacklevel=2,
        )
    if previous is not None:
        previous.disable()
    recorder = EntropyRecorder() if record_entropy else None
    replaced = {}
    for name, ok in plan.replace.items():
        if not ok:
            continue
        module = modules[name]
        replaced[name] = module.processor
        module.set_processor(
            replacement_for(module.processor)(
                name,
                train_tokens=plan.train_tokens[name],
                rescale=plan.rescale[name],
                backend=backend,
                recorder=recorder,
                attention_backend=_attention_backend_for(module.processor, backend),
            )
        )
    hook = None if recorder is None else denoiser.register_forward_pre_hook(recorder.next_step)
    handle = EntropyAttnHandle(denoiser, replaced, plan.train_latent, plan, recorder, hook)
    setattr(denoiser, _HANDLE_ATTR, handle)
    return handle


def _attention_backend_for(processor, backend: str):
    """The diffusers backend a replacement processor calls: the one named in ``enable``, else,
    for ``backend="auto"``, the one the user chose with ``set_attention_backend``."""
    if backend not in OWN_BACKENDS:
        return backend
    return getattr(processor, "_attention_backend", None) if backend == "auto" else None


def disable(pipe) -> None:
    """Restore the very processor objects ``enable`` replaced; harmless if never enabled."""
    handle = getattr(find_denoiser(pipe), _HANDLE_ATTR, None)
    if handle is not None:
        handle.disable()


@contextlib.contextmanager
def enabled(pipe, **options) -> Iterator[EntropyAttnHandle]:
    """``with enabled(pipe, **options) as handle:`` runs the block with entropy-attn on."""
    handle = enable(pipe, **options)
    try:
        yield handle
    finally:
        handle.disable()


def layer_table(
    pipe,
    size: int | tuple[int, int],
    *,
    layers: LayerSelector = "self",
    train_size: int | tuple[int, int] | None = None,
    vae_scale_factor: int | None = None,
    text_tokens: int | None = None,
) -> list[LayerInfo]:
    """Each attention layer at an image size, without running the model.

    Args:
        pipe: pipeline or denoiser, as for :func:`enable`.
        size: image size in pixels, ``(height, width)`` or one int.
        layers, train_size, vae_scale_factor, text_tokens: as for :func:`enable`.

    Returns:
        One :class:`LayerInfo` per attention layer that runs in the denoiser's forward, in
        module order: kind, heads, head dim, N (keys at ``size``), T (keys at the training size)
        and the scale used at ``size``.
    """
    plan = _plan(pipe, layers, train_size, vae_scale_factor, text_tokens)
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


__all__ = [
    "EntropyAttnHandle",
    "EntropyAttnProcessor",
    "LayerInfo",
    "disable",
    "enable",
    "enabled",
    "find_denoiser",
    "layer_scale",
    "layer_table",
    "training_latent_size",
]
