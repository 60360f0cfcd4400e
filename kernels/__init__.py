"""Triton kernels of entropy-attn (installed as ``entropy_attn.kernels``).

Only kernels and their launchers live here: no validation, no diffusers, no policy.
"""

from .attention_fwd import MAX_HEAD_DIM, SUPPORTED_DTYPES, flash_attention_forward, interpreting

__all__ = ["MAX_HEAD_DIM", "SUPPORTED_DTYPES", "flash_attention_forward", "interpreting"]
