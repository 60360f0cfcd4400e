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

from .demo import demo_grid
from .load import MODELS, WEIGHTS, WeightsError, check_weights, load_pipeline, weights_folder
from .metrics import evaluate

__all__ = [
    "MODELS",
    "WEIGHTS",
    "WeightsError",
    "check_weights",
    "demo_grid",
    "evaluate",
    "load_pipeline",
    "weights_folder",
]
