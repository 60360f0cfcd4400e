"""entropy-attn: training-free variable-size image generation with entropy-preserving attention.

Jin et al., "Training-free Diffusion Model Adaptation for Variable-Sized Text-to-Image Synthesis"
(NeurIPS 2023, arXiv 2306.08645): replace the self-attention scale ``1/sqrt(d)`` by
``sqrt(log_T(N) / d)``.

    import entropy_attn
    entropy_attn.enable(pipe)      # SD 1.x/2.x, SDXL, LDM, PixArt, SD3, FLUX, or the denoiser
    image = pipe(prompt, height=768, width=768).images[0]
    entropy_attn.disable(pipe)
"""

from ._source_tree import install_kernels_finder
from .integration import EntropyAttnHandle, LayerInfo, disable, enable, enabled, layer_table
from .integration.generic import EntropyDispatchProcessor
from .integration.processors import EntropyAttnProcessor, EntropyJointAttnProcessor
from .op.api import attention
from .op.reference import attention_entropy, attention_reference
from .op.scale import log_scale

install_kernels_finder()

# FLUX's layers get the generic EntropyDispatchProcessor (it runs FluxAttnProcessor's own code);
# the name of the former FLUX-only processor stays importable, for isinstance checks.
EntropyFluxAttnProcessor = EntropyDispatchProcessor

__version__ = "0.1.0"

__all__ = [
    "EntropyAttnHandle",
    "EntropyAttnProcessor",
    "EntropyDispatchProcessor",
    "EntropyFluxAttnProcessor",
    "EntropyJointAttnProcessor",
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
