"""entropy-attn: training-free variable-size image generation with entropy-preserving attention.

Jin et al., "Training-free Diffusion Model Adaptation for Variable-Sized Text-to-Image Synthesis"
(NeurIPS 2023, arXiv 2306.08645): replace the self-attention scale ``1/sqrt(d)`` by
``sqrt(log_T(N) / d)``.

    import entropy_attn
    entropy_attn.enable(pipe)      # pipe: a diffusers pipeline (SD, SDXL, LDM) or its UNet
    image = pipe(prompt, height=768, width=768).images[0]
    entropy_attn.disable(pipe)
"""

from .integration import (
    EntropyAttnHandle,
    EntropyAttnProcessor,
    LayerInfo,
    disable,
    enable,
    enabled,
    layer_table,
)
from .ops import attention
from .reference import attention_entropy, attention_reference
from .scale import log_scale

__version__ = "0.1.0"

__all__ = [
    "EntropyAttnHandle",
    "EntropyAttnProcessor",
    "LayerInfo",
    "__version__",
    "attention",
    "attention_entropy",
    "attention_reference",
    "disable",
    "enable",
    "enabled",
    "layer_table",
    "log_scale",
]
