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

from .._quiet import quiet_library_logs

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
    # Served by the generic dispatcher path (entropy_attn.integration.generic); written from
    # published facts (SOURCES.md). Training sizes and frame counts:
    # entropy_attn.integration.families.
    "wan2.1-t2v-1.3b": ("transformer.json", "WanTransformer3DModel", 8),
    "wan2.1-t2v-14b": ("transformer.json", "WanTransformer3DModel", 8),
    "wan2.1-i2v-14b-480p": ("transformer.json", "WanTransformer3DModel", 8),
    "wan2.2-t2v-a14b": ("transformer.json", "WanTransformer3DModel", 8),  # + transformer_2.json
    "hunyuanvideo": ("transformer.json", "HunyuanVideoTransformer3DModel", 8),
    "ltx-video": ("transformer.json", "LTXVideoTransformer3DModel", 32),
    "cogvideox-5b": ("transformer.json", "CogVideoXTransformer3DModel", 8),
    "qwen-image": ("transformer.json", "QwenImageTransformer2DModel", 8),
    "flux2-dev": ("transformer.json", "Flux2Transformer2DModel", 8),
    "z-image-turbo": ("transformer.json", "ZImageTransformer2DModel", 8),
    "chroma1-hd": ("transformer.json", "ChromaTransformer2DModel", 8),
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
    "wan2.1-t2v-1.3b": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    "wan2.1-t2v-14b": "Wan-AI/Wan2.1-T2V-14B-Diffusers",
    "wan2.1-i2v-14b-480p": "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
    "wan2.2-t2v-a14b": "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
    "hunyuanvideo": "hunyuanvideo-community/HunyuanVideo",
    "ltx-video": "Lightricks/LTX-Video",
    "cogvideox-5b": "THUDM/CogVideoX-5b",
    "qwen-image": "Qwen/Qwen-Image",
    "flux2-dev": "black-forest-labs/FLUX.2-dev",
    "z-image-turbo": "Tongyi-MAI/Z-Image-Turbo",
    "chroma1-hd": "lodestones/Chroma1-HD",
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


@quiet_library_logs()
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

# Architectures whose whole text-to-image pipeline ships (text encoder, autoencoder, scheduler).
PIPELINES = ("sd21-base", "sd15", "ldm-256")


@quiet_library_logs()
def build_pipeline(name: str, *, device=None, dtype=None, seed: int = 0):
    """The architecture's whole text-to-image pipeline with random weights, for speed measurements.

    ``"sd21-base"`` and ``"sd15"`` give a ``StableDiffusionPipeline`` (CLIP text encoder,
    ``AutoencoderKL``, UNet, the published scheduler), ``"ldm-256"`` an ``LDMTextToImagePipeline``
    (LDMBert, KL autoencoder, UNet, DDIM). Every network has the real architecture, so a call costs
    what the real model's call costs; the weights are random (seeded) and the tokenizer is a small
    stand-in (the real vocabularies are not shipped), which pads every prompt to the real 77
    tokens. The images are noise: load real weights with ``from_pretrained`` (see README).

    ``device="meta"`` builds it without allocating (to inspect the structure).
    """
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..tiny.pipelines import tiny_bert_tokenizer, tiny_clip_tokenizer

    if name not in PIPELINES:
        raise ValueError(
            f"name must be one of {PIPELINES} (architectures that ship a whole pipeline), "
            f"got {name!r}"
        )
    scheduler_config = load_config(name, "scheduler")
    scheduler = getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config)
    device = torch.device(device or "cpu")
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices), device:
        torch.manual_seed(seed)
        unet = diffusers.UNet2DConditionModel.from_config(load_unet_config(name))
        if name == "ldm-256":
            from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import (
                LDMBertConfig,
                LDMBertModel,
            )

            fields = {k: v for k, v in load_config(name, "bert").items() if not k.startswith("_")}
            text_encoder = LDMBertModel(LDMBertConfig(**fields))
            autoencoder = diffusers.AutoencoderKL.from_config(load_config(name, "vqvae"))
        else:
            text_encoder = CLIPTextModel(CLIPTextConfig(**load_config(name, "text_encoder")))
            autoencoder = diffusers.AutoencoderKL.from_config(load_config(name, "vae"))
    modules = [unet, text_encoder, autoencoder]
    if dtype is not None:
        modules = [module.to(dtype) for module in modules]
    unet, text_encoder, autoencoder = (module.eval().requires_grad_(False) for module in modules)
    if name == "ldm-256":
        pipe = diffusers.LDMTextToImagePipeline(
            vqvae=autoencoder,
            bert=text_encoder,
            tokenizer=tiny_bert_tokenizer(),
            unet=unet,
            scheduler=scheduler,
        )
    else:
        pipe = diffusers.StableDiffusionPipeline(
            vae=autoencoder,
            text_encoder=text_encoder,
            tokenizer=tiny_clip_tokenizer(),
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


__all__ = [
    "ARCHITECTURES",
    "HUB_IDS",
    "PIPELINES",
    "build_denoiser",
    "build_pipeline",
    "build_unet",
    "load_config",
    "load_unet_config",
    "vae_scale_factor",
]
