"""The attention op: :func:`attention` (validation and backend dispatch, ``api.py``), the PyTorch
reference every backend is tested against (``reference.py``), the entropy-preserving scale
(``scale.py``) and the measured choice between kernel and PyTorch (``autoselect.py``).

Knows nothing of diffusers; the Triton kernel it calls lives in :mod:`entropy_attn.kernels`.
"""

from .api import BACKENDS, attention
from .reference import attention_entropy, attention_reference
from .scale import log_scale

__all__ = ["BACKENDS", "attention", "attention_entropy", "attention_reference", "log_scale"]
