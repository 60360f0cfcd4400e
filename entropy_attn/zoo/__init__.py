"""A real model in the box: tiny diffusion models trained on scikit-learn's 8x8 digits.

    from entropy_attn import zoo, enable
    pipe = zoo.load_pipeline("digits-unet")          # offline, a few MB, fp16 on disk
    images = pipe([3, 7], height=16, width=16, generator=torch.Generator().manual_seed(0))
    enable(pipe)                                      # the paper's scale, unchanged API

Models (trained by :mod:`entropy_attn.zoo.train`, model cards in ``zoo/weights/<name>/README.md``):

- ``digits-unet``: pixel-space class-conditional ``UNet2DConditionModel``, trained at 8x8;
- ``digits-dit``: pixel-space class-conditional ``PixArtTransformer2DModel`` (patch 1), 8x8;
- ``digits-flux``: pixel-space class-conditional ``FluxTransformer2DModel`` (RoPE positions,
  2x2 pixels per token as FLUX packs its latents, the label as the text token), 8x8.

Tools: :func:`evaluate` (quality table, :mod:`entropy_attn.zoo.metrics`), :func:`demo_grid`
(one PNG, stock vs entropy-attn at five sizes), :mod:`entropy_attn.zoo.attention` (entropy and
logit variance per layer).
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).parent / "weights"
MODELS = ("digits-unet", "digits-dit", "digits-flux")


def weights_folder(name: str) -> Path:
    """The ``save_pretrained`` folder of a shipped model."""
    if name not in MODELS:
        raise ValueError(f"name must be one of {MODELS}, got {name!r}")
    folder = WEIGHTS / name
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"the weights of {name!r} are not installed at {folder}")
    return folder


def load_pipeline(name: str, device="cpu"):
    """Load a shipped zoo model through ``DiffusionPipeline.from_pretrained`` (offline).

    Returns a :class:`~entropy_attn.zoo.models.DigitsPipeline` in float32 on ``device``:
    ``pipe(labels, height=h, width=w, generator=g)`` -> images ``(n, 1, h, w)`` in [-1, 1];
    ``entropy_attn.enable(pipe)`` works on it unchanged (``vae_scale_factor`` is 1, the
    training size is the denoiser's ``sample_size``).
    """
    import torch

    from .models import DigitsDiTPipeline, DigitsFluxPipeline, DigitsUNetPipeline

    cls = {"digits-unet": DigitsUNetPipeline, "digits-flux": DigitsFluxPipeline}.get(
        name, DigitsDiTPipeline
    )
    folder = weights_folder(name)
    pipe = cls.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    return pipe.to(device)


from .demo import demo_grid  # noqa: E402
from .metrics import evaluate  # noqa: E402

__all__ = ["MODELS", "WEIGHTS", "demo_grid", "evaluate", "load_pipeline", "weights_folder"]
