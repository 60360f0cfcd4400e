"""Config entries of the denoiser families served by the generic dispatcher path.

One entry per diffusers transformer class: how to build its forward inputs for a latent of a given
size (on the meta device for the token probe, or real tensors for tests), the text length its
pipelines feed it, the training size its pipelines default to, and its autoencoder's factors.
Nothing here knows about attention: which layers are self-, joint or cross-attention is found by
the probe (:mod:`entropy_attn.integration.generic`), from whether a call's keys grow with the image.

Sizes are in pixels (``height``, ``width``) and frames of the decoded video; the latent has
``(frames - 1) // temporal + 1`` frames for the causal video autoencoders (Wan, HunyuanVideo,
LTX-Video, CogVideoX), and ``height // spatial`` x ``width // spatial`` pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# make(shape, kind) -> tensor: kind is "float" (latents, embeddings), "mask" (ones) or "time".
TensorMaker = Callable[[tuple, str], torch.Tensor]


@dataclass(frozen=True)
class Family:
    """One denoiser class's config entry.

    Attributes:
        inputs: ``(config, latent_frames, latent_height, latent_width, text_tokens, make)`` ->
            the forward keyword arguments (batch 1).
        text_tokens: text tokens (or image-encoder tokens) the pipelines pass by default.
        train_size: the pipelines' default ``(height, width)`` in pixels (the training size).
        train_frames: the pipelines' default frame count (1 for image models).
        spatial: pixels per latent pixel; ``temporal``: frames per latent frame (video).
        pipeline: the diffusers pipeline class(es), for messages and the README.
        from_config: ``config -> ((height, width), frames)`` where the pipelines take their
            defaults from the model's config (CogVideoX: ``sample_height``/``sample_width`` x
            the autoencoder factor, ``sample_frames``), else ``None``.
    """

    inputs: Callable[..., dict]
    text_tokens: int
    train_size: tuple[int, int]
    train_frames: int = 1
    spatial: int = 8
    temporal: int = 1
    pipeline: str = ""
    from_config: Callable[[dict], tuple[tuple[int, int], int]] | None = None

    def defaults(self, config) -> tuple[tuple[int, int], int]:
        """The pipelines' default ``(height, width)`` in pixels and frame count for a model of
        this config: the training size and frames ``T`` is counted at."""
        if self.from_config is not None:
            return self.from_config(dict(config))
        return self.train_size, self.train_frames

    @property
    def video(self) -> bool:
        return self.temporal > 1

    def latent_frames(self, frames: int) -> int:
        """Latent frames of a ``frames``-frame video (causal autoencoders keep the first)."""
        return (frames - 1) // self.temporal + 1 if self.video else 1


def meta_maker(shape: tuple, kind: str) -> torch.Tensor:
    """Meta tensors for the token probe (no memory)."""
    if kind == "ids":
        return torch.zeros(shape, device="meta")
    return torch.empty(shape, device="meta")


def _video(config, frames, height, width):
    return (1, config["in_channels"], frames, height, width)


def _wan(config, frames, height, width, text_tokens, make):
    inputs = {
        "hidden_states": make(_video(config, frames, height, width), "float"),
        "timestep": make((1,), "time"),
        "encoder_hidden_states": make((1, text_tokens, config["text_dim"]), "float"),
    }
    if config.get("image_dim") is not None:  # I2V: CLIP image tokens (257 for ViT-H/14)
        inputs["encoder_hidden_states_image"] = make((1, 257, config["image_dim"]), "float")
    return inputs


def _hunyuan_video(config, frames, height, width, text_tokens, make):
    inputs = {
        "hidden_states": make(_video(config, frames, height, width), "float"),
        "timestep": make((1,), "time"),
        "encoder_hidden_states": make((1, text_tokens, config["text_embed_dim"]), "float"),
        "encoder_attention_mask": make((1, text_tokens), "mask"),
        "pooled_projections": make((1, config["pooled_projection_dim"]), "float"),
    }
    if config.get("guidance_embeds", True):
        inputs["guidance"] = make((1,), "time")
    return inputs


def _ltx_video(config, frames, height, width, text_tokens, make):
    tokens = frames * height * width  # patch size 1: the pipeline packs the latent itself
    return {
        "hidden_states": make((1, tokens, config["in_channels"]), "float"),
        "encoder_hidden_states": make((1, text_tokens, config["caption_channels"]), "float"),
        "timestep": make((1,), "time"),
        "encoder_attention_mask": make((1, text_tokens), "mask"),
        "num_frames": frames,
        "height": height,
        "width": width,
    }


def _cogvideox(config, frames, height, width, text_tokens, make):
    # CogVideoX takes (batch, frames, channels, height, width).
    return {
        "hidden_states": make((1, frames, config["in_channels"], height, width), "float"),
        "encoder_hidden_states": make((1, text_tokens, config["text_embed_dim"]), "float"),
        "timestep": make((1,), "time"),
    }


def _qwen_image(config, frames, height, width, text_tokens, make):
    tokens = (height // 2) * (width // 2)  # the pipeline packs 2x2 latent pixels per token
    return {
        "hidden_states": make((1, tokens, config["in_channels"]), "float"),
        "encoder_hidden_states": make((1, text_tokens, config["joint_attention_dim"]), "float"),
        "encoder_hidden_states_mask": make((1, text_tokens), "mask"),
        "timestep": make((1,), "time"),
        "img_shapes": [[(1, height // 2, width // 2)]],
    }


def _flux_like(config, frames, height, width, text_tokens, make, axes):
    tokens = (height // 2) * (width // 2)
    inputs = {
        "hidden_states": make((1, tokens, config["in_channels"]), "float"),
        "encoder_hidden_states": make((1, text_tokens, config["joint_attention_dim"]), "float"),
        "timestep": make((1,), "time"),
        "img_ids": make((tokens, axes), "ids"),
        "txt_ids": make((text_tokens, axes), "ids"),
    }
    if config.get("guidance_embeds"):
        inputs["guidance"] = make((1,), "time")
    return inputs


def _flux(config, frames, height, width, text_tokens, make):
    inputs = _flux_like(config, frames, height, width, text_tokens, make, 3)
    inputs["pooled_projections"] = make((1, config["pooled_projection_dim"]), "float")
    return inputs


def _flux2(config, frames, height, width, text_tokens, make):
    return _flux_like(config, frames, height, width, text_tokens, make, 4)


def _chroma(config, frames, height, width, text_tokens, make):
    return _flux_like(config, frames, height, width, text_tokens, make, 3)


def _z_image(config, frames, height, width, text_tokens, make):
    # Lists of per-sample tensors: the latent (channels, frames, height, width) and the caption.
    return {
        "x": [make((config["in_channels"], 1, height, width), "float")],
        "t": make((1,), "time"),
        "cap_feats": [make((text_tokens, config["cap_feat_dim"]), "float")],
    }


def _cogvideox_defaults(config) -> tuple[tuple[int, int], int]:
    # CogVideoXPipeline: height = sample_height x 8, width = sample_width x 8, frames =
    # sample_frames (1.0: 480 x 720, 49 frames; 1.5 configs carry their own).
    size = (config["sample_height"] * 8, config["sample_width"] * 8)
    return size, int(config["sample_frames"])


FAMILIES: dict[str, Family] = {
    "WanTransformer3DModel": Family(
        _wan, 512, (480, 832), 81, spatial=8, temporal=4, pipeline="WanPipeline, WanImageToVideo"
    ),
    "HunyuanVideoTransformer3DModel": Family(
        _hunyuan_video, 256, (720, 1280), 129, spatial=8, temporal=4, pipeline="HunyuanVideo"
    ),
    "LTXVideoTransformer3DModel": Family(
        _ltx_video, 128, (512, 704), 161, spatial=32, temporal=8, pipeline="LTXPipeline"
    ),
    "CogVideoXTransformer3DModel": Family(
        _cogvideox,
        226,
        (480, 720),
        49,
        spatial=8,
        temporal=4,
        pipeline="CogVideoXPipeline",
        from_config=_cogvideox_defaults,
    ),
    "QwenImageTransformer2DModel": Family(
        _qwen_image, 512, (1024, 1024), pipeline="QwenImagePipeline"
    ),
    # FLUX.1: FluxPipeline.default_sample_size 128 (1024 px), 512 T5 tokens (FLUX.1-dev).
    "FluxTransformer2DModel": Family(_flux, 512, (1024, 1024), pipeline="FluxPipeline"),
    "Flux2Transformer2DModel": Family(_flux2, 512, (1024, 1024), pipeline="Flux2Pipeline"),
    "ZImageTransformer2DModel": Family(_z_image, 512, (1024, 1024), pipeline="ZImagePipeline"),
    "ChromaTransformer2DModel": Family(_chroma, 512, (1024, 1024), pipeline="ChromaPipeline"),
}


def family_of(model: torch.nn.Module) -> Family | None:
    """The config entry of a denoiser's class, or ``None``."""
    return FAMILIES.get(type(model).__name__)


__all__ = ["FAMILIES", "Family", "family_of", "meta_maker"]
