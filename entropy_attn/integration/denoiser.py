"""The denoiser of a pipeline and its sizes: which model to patch, pixels per latent pixel, and
the training latent size ``T`` is counted at. Shared by the plan, the layer table and
:mod:`entropy_attn.integration.pipelines` (ControlNets), so none of them imports another."""

from __future__ import annotations

import torch

from .probe import attention_modules, unwrap


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


def vae_scale_factor_of(pipe, override: int | None = None) -> int:
    """Pixels per latent pixel of ``pipe``: ``override`` (validated) if given, else the
    pipeline's ``vae_scale_factor``, else from its autoencoder's config; 8 for a bare model."""
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


def pixels_to_latent(size, factor: int, what: str) -> tuple[int, int]:
    """``(height, width)`` of the latent for ``size`` in pixels; ``what`` names the argument in
    the errors (not a multiple of ``factor``; more latent tokens than the probe can count)."""
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
