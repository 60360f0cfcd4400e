"""Pipelines with more than one model that attends over image tokens: ControlNets.

A ControlNet (``StableDiffusionControlNetPipeline``, ``StableDiffusionXLControlNetPipeline``, and
each net of a ``MultiControlNetModel``) is a copy of the UNet's encoder and mid block that runs
next to the UNet on the same latent: its self-attention sees the same ``N``/``T`` mismatch.
:func:`entropy_attn.enable` patches each ControlNet as a model of its own, with ``T`` counted on
its own architecture at the pipeline's training size: one enable call pushes one handle on the
denoiser's stack and one on each ControlNet's (see :mod:`entropy_attn.integration.handle`), and the
ControlNet handles hang off the denoiser's (``handle.controlnet_handles``).
"""

from __future__ import annotations

import torch

from .denoiser import find_denoiser, training_latent_size, vae_scale_factor_of
from .probe import unwrap

# ControlNet classes whose tokens the probe counts (see entropy_attn.integration.probe).
SUPPORTED_CONTROLNETS = ("ControlNetModel",)


def _controlnet_models(pipe) -> list[tuple[str, torch.nn.Module]]:
    if isinstance(pipe, torch.nn.Module):
        return []
    model = getattr(pipe, "controlnet", None)
    if model is None:
        return []
    model = unwrap(model)
    nets = getattr(model, "nets", None)
    if isinstance(nets, torch.nn.ModuleList):
        return [(f"controlnet.nets.{i}", unwrap(net)) for i, net in enumerate(nets)]
    return [("controlnet", model)]


def controlnets_of(pipe) -> list[tuple[str, torch.nn.Module]]:
    """``(name, model)`` of each ControlNet of a pipeline: ``("controlnet", net)``, or
    ``("controlnet.nets.0", net0), ...`` for a ``MultiControlNetModel``; ``[]`` for a bare model
    or a pipeline without ``controlnet``.

    Raises:
        ValueError: a ControlNet class entropy-attn cannot count tokens for (SD3, FLUX, union
            ControlNets); pass ``controlnet=False`` to leave it stock.
    """
    found = _controlnet_models(pipe)
    for name, net in found:
        if type(net).__name__ not in SUPPORTED_CONTROLNETS:
            raise ValueError(
                f"pipe.{name} is a {type(net).__name__}; entropy-attn patches ControlNets of type "
                f"{', '.join(SUPPORTED_CONTROLNETS)} (SD, SDXL). Pass controlnet=False to leave it "
                "with the stock scale."
            )
    return found


def second_experts(pipe) -> list[torch.nn.Module]:
    """``[pipe.transformer_2]`` for a pipeline with a second denoising expert (Wan 2.2: the
    low-noise expert next to the high-noise ``transformer``), else ``[]``."""
    if isinstance(pipe, torch.nn.Module):
        return []
    expert = getattr(pipe, "transformer_2", None)
    return [unwrap(expert)] if isinstance(expert, torch.nn.Module) else []


def enabled_models(pipe) -> list[torch.nn.Module]:
    """The denoiser, a second expert and every ControlNet of ``pipe`` that has attention
    processors (of any class): the models :func:`entropy_attn.disable` looks at."""
    nets = [net for _, net in _controlnet_models(pipe) if hasattr(net, "attn_processors")]
    return [find_denoiser(pipe), *second_experts(pipe), *nets]


def denoisers(pipe, *, controlnet: bool = True) -> list[tuple[str, torch.nn.Module]]:
    """Every model ``enable(pipe)`` patches: the denoiser first, then the ControlNets."""
    name = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
    if isinstance(pipe, torch.nn.Module):
        name = type(unwrap(pipe)).__name__
    return [(name, find_denoiser(pipe))] + (controlnets_of(pipe) if controlnet else [])


def controlnet_train_size(pipe, denoiser, train_size, vae_scale_factor) -> tuple[int, int] | int:
    """The training size (pixels) for a pipeline's ControlNets: ``train_size``, else the
    denoiser's training size (a ControlNet runs on the denoiser's latent)."""
    if train_size is not None:
        return train_size
    factor = vae_scale_factor_of(pipe, vae_scale_factor)
    height, width = training_latent_size(denoiser, pipe)
    return height * factor, width * factor


__all__ = [
    "second_experts",
    "SUPPORTED_CONTROLNETS",
    "controlnet_train_size",
    "controlnets_of",
    "denoisers",
]
