"""Pipelines with more than one model that attends over image tokens: ControlNets.

A ControlNet (``StableDiffusionControlNetPipeline``, ``StableDiffusionXLControlNetPipeline``, and
each net of a ``MultiControlNetModel``) is a copy of the UNet's encoder and mid block that runs
next to the UNet on the same latent: its self-attention sees the same ``N``/``T`` mismatch. Each
ControlNet is patched as a denoiser of its own, with ``T`` counted on its own architecture at the
pipeline's training size, and its handle hangs off the denoiser's handle, whose ``disable`` undoes
both.
"""

from __future__ import annotations

import torch

from .probe import attention_modules, unwrap

# ControlNet classes whose tokens the probe counts (see entropy_attn.probe).
SUPPORTED_CONTROLNETS = ("ControlNetModel",)


def controlnets_of(pipe) -> list[tuple[str, torch.nn.Module]]:
    """``(name, model)`` of each ControlNet of a pipeline: ``("controlnet", net)``, or
    ``("controlnet.nets.0", net0), ...`` for a ``MultiControlNetModel``; ``[]`` for a bare model
    or a pipeline without ``controlnet``.

    Raises:
        ValueError: a ControlNet class entropy-attn cannot count tokens for (SD3, FLUX, union
            ControlNets); pass ``controlnet=False`` to leave it stock.
    """
    if isinstance(pipe, torch.nn.Module):
        return []
    model = getattr(pipe, "controlnet", None)
    if model is None:
        return []
    model = unwrap(model)
    nets = getattr(model, "nets", None)
    if isinstance(nets, torch.nn.ModuleList):
        found = [(f"controlnet.nets.{i}", unwrap(net)) for i, net in enumerate(nets)]
    else:
        found = [("controlnet", model)]
    for name, net in found:
        if type(net).__name__ not in SUPPORTED_CONTROLNETS:
            raise ValueError(
                f"pipe.{name} is a {type(net).__name__}; entropy-attn patches ControlNets of type "
                f"{', '.join(SUPPORTED_CONTROLNETS)} (SD, SDXL). Pass controlnet=False to leave it "
                "with the stock scale."
            )
    return found


def denoisers(pipe, *, controlnet: bool = True) -> list[tuple[str, torch.nn.Module]]:
    """Every model ``enable(pipe)`` patches: the denoiser first, then the ControlNets."""
    from .integration import find_denoiser

    name = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
    if isinstance(pipe, torch.nn.Module):
        name = type(unwrap(pipe)).__name__
    return [(name, find_denoiser(pipe))] + (controlnets_of(pipe) if controlnet else [])


def enable_with_controlnets(enable_one, pipe, *, layers, train_size, vae_scale_factor, **options):
    """``enable`` on the denoiser and then on each ControlNet (``enable_one`` is
    :func:`entropy_attn.enable`; ``controlnet=False`` keeps each call to one model).

    Every ControlNet is judged before anything changes, so a refused ControlNet leaves the
    pipeline as it was, also when it was enabled before.
    """
    from .integration import (
        _HANDLE_ATTR,
        _check_plan,
        _plan,
        _vae_scale_factor,
        find_denoiser,
        training_latent_size,
    )

    nets = controlnets_of(pipe)
    factor = _vae_scale_factor(pipe, vae_scale_factor)
    if train_size is None:
        latent = training_latent_size(find_denoiser(pipe), pipe)
        net_train_size = (latent[0] * factor, latent[1] * factor)
    else:
        net_train_size = train_size
    net_options = dict(options, layers=layers, train_size=net_train_size, vae_scale_factor=factor)
    text_tokens = options.get("text_tokens")
    for _, net in nets:
        previous = getattr(net, _HANDLE_ATTR, None)
        originals = dict(previous.original_processors) if previous is not None else {}
        plan = _plan(net, layers, net_train_size, factor, text_tokens, originals)
        processors = {n: m.processor for n, m in attention_modules(net).items()} | originals
        _check_plan(plan, processors)
    handle = enable_one(
        pipe,
        layers=layers,
        train_size=train_size,
        vae_scale_factor=vae_scale_factor,
        controlnet=False,
        **options,
    )
    done = []
    try:
        for _, net in nets:
            done.append(enable_one(net, controlnet=False, **net_options))
    except BaseException:
        for net_handle in done:
            net_handle.disable()
        handle.disable()
        raise
    handle.controlnet_handles = tuple(done)
    return handle


__all__ = ["SUPPORTED_CONTROLNETS", "controlnets_of", "denoisers", "enable_with_controlnets"]
