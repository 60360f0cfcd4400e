"""entropy-attn: training-free variable-size image generation with entropy-preserving attention.

Jin et al., "Training-free Diffusion Model Adaptation for Variable-Sized Text-to-Image Synthesis"
(NeurIPS 2023, arXiv 2306.08645): replace the self-attention scale ``1/sqrt(d)`` by
``sqrt(log_T(N) / d)``.
"""

from .ops import attention
from .reference import attention_entropy, attention_reference
from .scale import log_scale

__version__ = "0.1.0"

__all__ = ["__version__", "attention", "attention_entropy", "attention_reference", "log_scale"]
