"""The zoo's model definitions and its pipeline.

All models are pixel-space (no VAE: ``vae_scale_factor = 1``), class-conditional diffusers
denoisers. The class label reaches the model as ``encoder_hidden_states`` of shape
``(batch, 1, 10)``, a one-hot vector that the model's own text projection (the UNet's
``encoder_hid_proj``, PixArt's ``caption_projection``, FLUX's ``context_embedder``) turns into one
key/value token for cross-attention (FLUX: the text token of joint attention; FLUX also gets the
one-hot as its pooled text embedding, as it gets CLIP's pooled output). So every weight lives in
one diffusers model folder, and ``entropy_attn.enable(pipe)`` sees an ordinary
``UNet2DConditionModel``, ``PixArtTransformer2DModel`` or ``FluxTransformer2DModel``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    FluxTransformer2DModel,
    PixArtTransformer2DModel,
    UNet2DConditionModel,
)

NUM_CLASSES = 10
TRAIN_SIZE = 8
POSITIONS = ("interpolate", "extend")


def unet_config() -> dict:
    """``digits-unet``: self-attention at 8x8 (first level, 64 tokens) and 4x4 (second, mid)."""
    return {
        "sample_size": TRAIN_SIZE,
        "in_channels": 1,
        "out_channels": 1,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "cross_attention_dim": 64,
        # UNet2DConditionModel reads attention_head_dim as the number of heads (diffusers' naming
        # quirk): 4 heads, head dim 8 at 8x8 and 16 at 4x4.
        "attention_head_dim": 4,
        "encoder_hid_dim": NUM_CLASSES,
        "encoder_hid_dim_type": "text_proj",
    }


def dit_config() -> dict:
    """``digits-dit``: PixArt with patch 1 (64 tokens at 8x8), 6 blocks, width 64, 4 heads."""
    return {
        "num_attention_heads": 4,
        "attention_head_dim": 16,
        "in_channels": 1,
        "out_channels": 1,
        "num_layers": 6,
        "cross_attention_dim": 64,
        "sample_size": TRAIN_SIZE,
        "patch_size": 1,
        "caption_channels": NUM_CLASSES,
        "interpolation_scale": 1,
    }


def flux_config() -> dict:
    """``digits-flux``: FLUX as FLUX.1 is fed, 2x2 pixel patches packed into one token (4
    channels; 16 image tokens at 8x8) plus one text token; 2 double- and 4 single-stream blocks,
    width 64, 2 heads of dim 32; RoPE over (unused, row, column) with 8, 12 and 12 of the head's
    dims (FLUX.1's 16/56/56 split, scaled down), theta 10000."""
    return {
        "patch_size": 1,
        "in_channels": 4,
        "out_channels": 4,
        "num_layers": 2,
        "num_single_layers": 4,
        "attention_head_dim": 32,
        "num_attention_heads": 2,
        "joint_attention_dim": NUM_CLASSES,
        "pooled_projection_dim": NUM_CLASSES,
        "guidance_embeds": False,
        "axes_dims_rope": (8, 12, 12),
    }


KINDS = {
    "unet": UNet2DConditionModel,
    "dit": PixArtTransformer2DModel,
    "flux": FluxTransformer2DModel,
}


def build_denoiser(kind: str, seed: int = 0, config: dict | None = None) -> torch.nn.Module:
    """A freshly initialised ``"unet"``, ``"dit"`` or ``"flux"`` denoiser (seeded); ``config``
    overrides entries of :func:`unet_config` / :func:`dit_config` / :func:`flux_config`."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    defaults = {"unet": unet_config, "dit": dit_config, "flux": flux_config}[kind]()
    with torch.random.fork_rng():  # seeded weights; the caller's global RNG is left as it was
        torch.manual_seed(seed)
        return KINDS[kind](**(defaults | (config or {})))


def train_scheduler() -> DDPMScheduler:
    """DDPM training schedule: 1000 steps, cosine betas, epsilon prediction."""
    return DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon"
    )


def sample_scheduler() -> DDIMScheduler:
    """DDIM sampler matching :func:`train_scheduler`."""
    return DDIMScheduler.from_config(train_scheduler().config, clip_sample=True)


def one_hot(labels: torch.Tensor) -> torch.Tensor:
    """``(batch,)`` int labels -> ``(batch, 1, 10)`` float one-hot conditioning token."""
    return torch.nn.functional.one_hot(labels.long(), NUM_CLASSES).float()[:, None, :]


def flux_image_ids(height: int, width: int) -> torch.Tensor:
    """``(height * width, 3)`` RoPE ids of a ``height x width`` token grid, as FluxPipeline
    builds them: (0, row, column), row-major."""
    ids = torch.zeros(height, width, 3)
    ids[..., 1] = torch.arange(height)[:, None]
    ids[..., 2] = torch.arange(width)[None, :]
    return ids.reshape(height * width, 3)


def pack(images: torch.Tensor) -> torch.Tensor:
    """``(b, c, h, w)`` -> ``(b, h/2 * w/2, 4c)`` tokens of 2x2 patches (FluxPipeline's layout)."""
    b, c, h, w = images.shape
    patches = images.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack`."""
    b, _, channels = tokens.shape
    patches = tokens.view(b, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(b, channels // 4, height, width)


def run_denoiser(model, sample, timesteps, labels) -> torch.Tensor:
    """Predicted noise for every model family (images ``(batch, 1, h, w)`` in and out)."""
    cond = one_hot(labels).to(sample)
    if isinstance(model, UNet2DConditionModel):
        return model(sample, timesteps, encoder_hidden_states=cond).sample
    if isinstance(model, FluxTransformer2DModel):
        height, width = sample.shape[-2:]
        out = model(
            pack(sample),
            encoder_hidden_states=cond,
            pooled_projections=cond[:, 0],
            timestep=timesteps.to(sample.dtype) / 1000,  # FLUX multiplies by 1000 inside
            img_ids=flux_image_ids(height // 2, width // 2).to(sample),
            txt_ids=torch.zeros(1, 3).to(sample),
        ).sample
        return unpack(out, height, width)
    return model(
        sample,
        encoder_hidden_states=cond,
        timestep=timesteps,
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    ).sample


@contextlib.contextmanager
def extended_positions(transformer: PixArtTransformer2DModel) -> Iterator[None]:
    """Within the block, PixArt's 2-D sin-cos positions run 0, 1, 2, ... past the training range
    (as a RoPE model's positions do) instead of being interpolated into it (PixArt's default:
    a 16x16 image sees rows 0, 0.5, ..., 7.5)."""
    from diffusers.models.embeddings import get_2d_sincos_pos_embed_from_grid

    embed = transformer.pos_embed
    original = embed.forward
    scale = float(embed.interpolation_scale)

    def forward(latent):
        height, width = latent.shape[-2] // embed.patch_size, latent.shape[-1] // embed.patch_size
        tokens = embed.proj(latent).flatten(2).transpose(1, 2)
        grid_h = torch.arange(height, dtype=torch.float64) / scale
        grid_w = torch.arange(width, dtype=torch.float64) / scale
        grid = torch.stack(torch.meshgrid(grid_w, grid_h, indexing="xy"), dim=0)
        grid = grid.reshape(2, 1, height, width)
        pos = get_2d_sincos_pos_embed_from_grid(embed.pos_embed.shape[-1], grid, output_type="pt")
        return (tokens + pos.float().to(tokens.device)[None]).to(tokens.dtype)

    embed.forward = forward
    try:
        yield
    finally:
        del embed.forward
        if embed.forward != original:  # pragma: no cover - defensive
            embed.forward = original


def own_positions(pipe, positions: str | None) -> str | None:
    """``positions`` for :class:`DigitsPipeline` calls made by the zoo's tools: PixArt's own
    choice (``"interpolate"``, its default, or ``"extend"``) for the DiT; for the other models,
    whose pipeline has no such choice, ``"interpolate"`` (the tools' default) becomes ``None``."""
    if positions == "interpolate" and not isinstance(pipe.denoiser, PixArtTransformer2DModel):
        return None
    return positions


class DigitsPipeline(DiffusionPipeline):
    """Class-conditional digit generation at any size.

    ``pipe(labels, height=16, width=16, generator=g)`` returns images ``(batch, 1, h, w)`` in
    [-1, 1] (``output_type="pt"``) or uint8 ``(batch, h, w)`` (``"np"``). The starting noise is
    drawn on the CPU from ``generator`` (or passed as ``latents``), so the same seed gives the
    same noise with and without entropy-attn.
    """

    vae_scale_factor = 1
    # The label is one (batch, 1, 10) token: cross-attention's T and N are 1 (the token probe
    # counts with this, so `layers` and the recording agree).
    text_tokens = 1
    model_cpu_offload_seq = "denoiser"
    default_sample_size = TRAIN_SIZE

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.unet if hasattr(self, "unet") else self.transformer

    @property
    def train_size(self) -> tuple[int, int]:
        size = self.denoiser.config.get("sample_size") or self.default_sample_size
        return (size, size) if isinstance(size, int) else tuple(size)

    @torch.no_grad()
    def __call__(
        self,
        labels,
        *,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 20,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        positions: str | None = None,
        output_type: str = "pt",
        batch_size: int = 256,
    ):
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if labels.numel() == 0 or labels.min() < 0 or labels.max() >= NUM_CLASSES:
            raise ValueError(f"labels must be digits 0..9, got {labels.tolist()!r}")
        height = self.train_size[0] if height is None else height
        width = self.train_size[1] if width is None else width
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(f"{name} must be an int >= 2, got {value!r}")
        if isinstance(self.denoiser, FluxTransformer2DModel):
            if height % 2 or width % 2:
                raise ValueError("height and width must be even (FLUX packs 2x2 patches)")
        elif hasattr(self, "transformer"):
            patch = self.transformer.config.patch_size
            if height % patch or width % patch:
                raise ValueError(f"height and width must be multiples of the patch size {patch}")
        elif height % 2 or width % 2:
            raise ValueError("height and width must be even (the UNet halves the image once)")
        if positions is not None and positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS} or None, got {positions!r}")
        if isinstance(self.denoiser, FluxTransformer2DModel) and positions is not None:
            raise ValueError(
                "positions= is PixArt's (digits-dit); FLUX's RoPE positions are changed with "
                "entropy_attn.enable(pipe, positions=...)"
            )
        if positions == "extend" and not hasattr(self, "transformer"):
            raise ValueError("positions='extend' applies to the DiT only (the UNet has none)")
        if output_type not in ("pt", "np"):
            raise ValueError(f"output_type must be 'pt' or 'np', got {output_type!r}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps!r}")
        shape = (labels.numel(), 1, height, width)
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        model = self.denoiser
        param = next(model.parameters())
        context = extended_positions(model) if positions == "extend" else contextlib.nullcontext()
        outputs = []
        with context:
            for start in range(0, labels.numel(), batch_size):
                x = latents[start : start + batch_size].to(param.device, param.dtype)
                y = labels[start : start + batch_size].to(param.device)
                self.scheduler.set_timesteps(num_inference_steps)
                for t in self.progress_bar(self.scheduler.timesteps):
                    eps = run_denoiser(model, x, t.expand(x.shape[0]).to(x.device), y)
                    x = self.scheduler.step(eps, t, x).prev_sample
                outputs.append(x.float().clamp(-1, 1).cpu())
        images = torch.cat(outputs)
        if output_type == "np":
            return ((images[:, 0] + 1) * 127.5).round().to(torch.uint8).numpy()
        return images


class DigitsUNetPipeline(DigitsPipeline):
    """:class:`DigitsPipeline` around a ``UNet2DConditionModel``."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DConditionModel, scheduler: DDIMScheduler) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)


class DigitsFluxPipeline(DigitsPipeline):
    """:class:`DigitsPipeline` around a ``FluxTransformer2DModel`` (RoPE positions 0, 1, ...
    per axis, as FLUX's pipeline builds them: past the training size they extend)."""

    model_cpu_offload_seq = "transformer"
    # FluxTransformer2DModel's config has no sample_size: the training size, as FluxPipeline's
    # default_sample_size gives it (in latent pixels, here pixels; 2x2 of them per token).
    default_sample_size = TRAIN_SIZE
    # The label token (DigitsPipeline.text_tokens): joint attention sees 1 text key (FLUX.1
    # pipelines: 512).

    def __init__(self, transformer: FluxTransformer2DModel, scheduler: DDIMScheduler) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler)


class DigitsDiTPipeline(DigitsPipeline):
    """:class:`DigitsPipeline` around a ``PixArtTransformer2DModel``."""

    model_cpu_offload_seq = "transformer"

    def __init__(self, transformer: PixArtTransformer2DModel, scheduler: DDIMScheduler) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler)
