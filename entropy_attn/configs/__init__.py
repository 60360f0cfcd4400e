"""Published model configurations shipped as data, so real architectures build with no download.

``build_denoiser("sd21-base")`` gives the Stable Diffusion 2.1-base UNet with random weights: the
real layer structure (heads, head dims, token counts per level), for layer tables, tests and speed
measurements. Weights are the user's: load real models with ``from_pretrained`` (see README).
See ``SOURCES.md`` in this folder for where each file came from.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

# name -> (denoiser file, denoiser class name in diffusers, VAE downsampling factor)
ARCHITECTURES: dict[str, tuple[str, str, int]] = {
    "sd21-base": ("unet.json", "UNet2DConditionModel", 8),
    "sd15": ("unet.json", "UNet2DConditionModel", 8),
    "sdxl-base": ("unet.json", "UNet2DConditionModel", 8),
    "ldm-256": ("unet.json", "UNet2DConditionModel", 8),
    "sd3-medium": ("transformer.json", "SD3Transformer2DModel", 8),
    "flux1-dev": ("transformer.json", "FluxTransformer2DModel", 8),
    "pixart-alpha-512": ("transformer.json", "PixArtTransformer2DModel", 8),
    "pixart-alpha-1024": ("transformer.json", "PixArtTransformer2DModel", 8),
}
# Hub ids (or the name users know them by) of the shipped architectures, for messages and docs.
HUB_IDS = {
    "sd21-base": "stabilityai/stable-diffusion-2-1-base",
    "sd15": "runwayml/stable-diffusion-v1-5",
    "sdxl-base": "stabilityai/stable-diffusion-xl-base-1.0",
    "ldm-256": "CompVis/ldm-text2im-large-256",
    "sd3-medium": "stabilityai/stable-diffusion-3-medium-diffusers",
    "flux1-dev": "black-forest-labs/FLUX.1-dev",
    "pixart-alpha-512": "PixArt-alpha/PixArt-XL-2-512x512",
    "pixart-alpha-1024": "PixArt-alpha/PixArt-XL-2-1024-MS",
}


def _check_name(name: str) -> None:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; shipped: {sorted(ARCHITECTURES)}")


def load_config(name: str, component: str) -> dict[str, Any]:
    """The JSON config of one component (``"unet"``, ``"vae"``, ``"scheduler"``, ...) as a dict."""
    _check_name(name)
    path = resources.files(__package__).joinpath(name, f"{component}.json")
    if not path.is_file():
        raise ValueError(f"architecture {name!r} ships no {component!r} config")
    return json.loads(path.read_text())


def load_unet_config(name: str) -> dict[str, Any]:
    """The denoiser config of a shipped architecture (the UNet, or the transformer of a DiT)."""
    _check_name(name)
    return load_config(name, ARCHITECTURES[name][0].removesuffix(".json"))


def vae_scale_factor(name: str) -> int:
    """Pixels per latent pixel of the architecture's autoencoder."""
    _check_name(name)
    return ARCHITECTURES[name][2]


def build_denoiser(name: str, *, device=None, dtype=None):
    """The architecture's denoiser with random weights (``device="meta"`` allocates nothing)."""
    import diffusers
    import torch

    config = load_unet_config(name)
    cls = getattr(diffusers, ARCHITECTURES[name][1])
    with torch.device(device or "cpu"):
        model = cls.from_config(config)
    if dtype is not None and dtype != model.dtype:
        model = model.to(dtype)
    return model.eval()


build_unet = build_denoiser

__all__ = [
    "ARCHITECTURES",
    "HUB_IDS",
    "build_denoiser",
    "build_unet",
    "load_config",
    "load_unet_config",
    "vae_scale_factor",
]
