"""``enable(pipe)`` / ``disable(pipe)`` / ``with enabled(pipe):``.

Policy lives here: which attention layers get the entropy-preserving scale, and the training
token count ``T`` of each layer. Every attention layer whose processor is a stock one that
entropy-attn reproduces (see :mod:`entropy_attn.integration.processors`) gets the matching
entropy-attn processor (so it runs on the fused kernel on CUDA); the selected layers (self- and
joint attention by default: every layer whose keys are image tokens, as in the paper) use

    lambda = base_scale * sqrt(ln N / ln T)      (= sqrt(log_T(N) / d) for base 1/sqrt(d))

where ``N`` is the number of key tokens in the call and ``T`` the number the same layer receives
at the training resolution, counted on the real architecture (see
:mod:`entropy_attn.integration.probe`). Judging happens in :mod:`.plan`, the undo bookkeeping in
:mod:`.handle`.

One file because ``enable``'s docstring (about 100 lines) is the reference for every option,
and the steps it runs (judge every model, install, PAG, size fixes) read in the order they
happen.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable, Iterator

import torch

from .._extras import needs
from ..fixes import positions as _positions
from ..fixes import redilation as _redilation
from .backends import OWN_BACKENDS, check_backend
from .denoiser import find_denoiser
from .generic import EntropyDispatchProcessor
from .handle import DenoiserState, EntropyAttnHandle, judged_processors
from .pipelines import controlnet_train_size, controlnets_of, enabled_models, second_experts
from .plan import LayerExclusion, LayerSelector, Plan, check_plan, make_plan
from .probe import attention_modules
from .processors import (
    PAG_CHUNKS,
    EntropyAttnProcessor,
    EntropyClassicAttnProcessor,
    EntropyPAGProcessor,
    replacement_for,
)
from .recording import MODES, EntropyRecorder


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
            generic path's families their entry in ``entropy_attn.integration.families``. It matters
            for joint attention, where text tokens are keys too.
        train_frames: video models (Wan, HunyuanVideo, LTX-Video, CogVideoX): the frame count
            of the training size; default per family (``entropy_attn.integration.families``: Wan 81,
            HunyuanVideo 129, LTX-Video 161, CogVideoX 49).
        controlnet: also patch the pipeline's ControlNet(s) (``pipe.controlnet``, each net of a
            ``MultiControlNetModel``), with ``T`` counted on each ControlNet's own architecture
            at the same training size; ``layers`` gets each model's own layer names. Their
            handles are ``handle.controlnet_handles``; ``disable`` restores them too.
        scale: ``False`` keeps every layer at its stock scale (``layers`` then selects nothing):
            the size fixes below without the paper's scale, or entropy recording of stock.
        positions: ``"stock"`` (default: the model's own), ``"interpolate"``, ``"ntk"`` or
            ``"yarn"``; see :mod:`entropy_attn.fixes.positions` (FLUX and registered RoPE backbones:
            all three; SD3: ``"interpolate"``; PixArt: ``"interpolate"``, which is its stock).
            Each changes only axes longer than at the training size. YaRN's attention
            temperature is dropped while the scale is in force on the denoiser (never both).
        redilate: ScaleCrafter's re-dilated convolutions for UNets at larger sizes (see
            :mod:`entropy_attn.fixes.redilation`): dilation from the size ratio per axis, in the
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
    call are replaced by :class:`~entropy_attn.integration.processors.EntropyPAGProcessor`, so those
    layers get the scale and are recorded too; PAG's perturbed branch keeps its identity attention.

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
        handle.layer_module(name): processor
        for name, processor in handle.installed.items()
        if isinstance(processor, EntropyAttnProcessor | EntropyClassicAttnProcessor)
    }
    stock = tuple(p.stock if isinstance(p, EntropyPAGProcessor) else p for p in found)
    ours = tuple(EntropyPAGProcessor(p, layers) for p in stock)
    pipe._pag_attn_processors = ours
    handle.attach_pag(pipe, found, ours)


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
                # partials, not lambdas: the model with its hooks still deep-copies and pickles
                context.effective = functools.partial(handle.newest_with, "positions")
                context.scale_in_force = functools.partial(_scale_in_force, model)
                handle.add_fixes(_positions.install(model, context))
        except Exception:
            handle.disable()  # nothing stays changed when enable raises
            raise
    if redilate:
        context = _redilation.RedilationContext(plan.train_latent, min_timestep)
        context.effective = functools.partial(handle.newest_with, "redilate")
        handle.add_fixes(_redilation.install(denoiser, context, convs))


def _scale_in_force(denoiser) -> bool:
    state = DenoiserState.of(denoiser)
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
    judged = judged_processors(model, DenoiserState.of(model))
    plan = make_plan(
        pipe, layers, train_size, vae_scale_factor, text_tokens, judged, exclude, model,
        train_frames,
    )  # fmt: skip
    check_plan(plan, judged)
    return plan, judged


def _install(plan: Plan, judged: dict, recorder, backend: str) -> EntropyAttnHandle:
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
    DenoiserState.of(denoiser, create=True).handles.append(handle)
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
        state = DenoiserState.of(model)
        if state is not None:
            for handle in reversed(list(state.handles)):
                handle.disable()


def handles(pipe) -> list[EntropyAttnHandle]:
    """The enable calls in force on the pipeline's denoiser (or on a denoiser), oldest first; a
    copy of an enabled denoiser (``copy.deepcopy``, ``pickle``, ``torch.save``) has its own."""
    state = DenoiserState.of(find_denoiser(pipe))
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
