"""The diffusers integration: ``enable(pipe)`` / ``disable(pipe)`` / ``with enabled(pipe):``.

Read top to bottom:

- ``lifecycle.py``: enable, disable, enabled, handles (the entry points and their options);
- ``plan.py``: what an enable call will do, judged before anything changes (``T`` per layer);
- ``handle.py``: what it did, and how to undo it in any order (the stack per denoiser);
- ``table.py``: :func:`layer_table`, the plan at an image size, without running the model;
- ``denoiser.py``: the model to patch and its training latent size;
- ``processors.py``: the per-family attention processors (UNets, SD3, PixArt, PAG);
- ``generic.py``: the one processor for every backbone that calls diffusers' dispatcher;
- ``families.py``, ``probe.py``: the generic path's model table, and the meta-device token probe;
- ``recording.py``: per-layer entropy recording; ``pipelines.py``: ControlNets and second experts;
- ``parallel.py``: context parallelism (Ulysses, ring) with the global ``N``.
"""

from .denoiser import find_denoiser, training_latent_size, vae_scale_factor_of
from .handle import EntropyAttnHandle
from .lifecycle import disable, enable, enabled, handles
from .table import LayerInfo, layer_table

__all__ = [
    "EntropyAttnHandle",
    "LayerInfo",
    "disable",
    "enable",
    "enabled",
    "find_denoiser",
    "handles",
    "layer_table",
    "training_latent_size",
    "vae_scale_factor_of",
]
