"""Position presets for diffusion transformers at sizes they were not trained for.

``enable(pipe, positions=...)`` with one of :data:`PRESETS`; each changes an axis only where the
image is *longer* than at the training size along that axis (factor ``s = n / t > 1``, ``n`` the
tokens along the axis now, ``t`` at the training size): at and below the training size every
preset is the identity, and non-square sizes get one factor per axis.

- ``"stock"``: what the model does by itself (FLUX: RoPE positions 0, 1, ... run past the
  training range; SD3: a centre crop of its ``pos_embed_max_size`` table; PixArt: positions
  interpolated into the training range by its ``interpolation_scale``/``base_size``).
- ``"interpolate"`` (position interpolation, Chen et al. 2023, arXiv 2306.15595): positions
  ``p -> p / s`` per axis, i.e. into the training range. RoPE: every frequency divided by ``s``.
  SD3: the training-size window of the table, resampled linearly per axis at ``i * t / n``
  (PixArt's own rule), which also works past ``pos_embed_max_size``. PixArt: its stock positions
  already are this, so the preset changes nothing there.
- ``"ntk"`` (NTK-aware scaling, bloc97 2023, as used by I-Max and CineScale): RoPE base
  ``theta -> theta * s ** (d / (d - 2))`` per axis (``d`` the axis's rotary dims).
- ``"yarn"`` (YaRN, Peng et al. 2023, arXiv 2309.00071, its LLaMA defaults alpha = 1, beta = 32):
  per frequency, with ``r = t / wavelength`` the turns it makes over the training length, keep it
  where ``r > beta``, divide it by ``s`` where ``r < alpha``, blend linearly between; and YaRN's
  attention temperature, logits times ``(0.1 ln s + 1) ** 2`` (applied, as YaRN's code does, to
  the rotary cos/sin, so q and k each carry ``0.1 ln s + 1``), with ``s`` the largest per-axis
  factor. The temperature and entropy-attn's scale are never both applied: while an enable call
  with the scale on is in force on the denoiser, the scale replaces the temperature.

RoPE and SD3/PixArt presets are only defined for the backbones in :data:`ROPE_BACKBONES` and
:data:`ABSOLUTE_BACKBONES`; another RoPE backbone whose embedder maps ``ids (L, axes)`` to FLUX's
``(cos, sin)`` layout (``theta`` and ``axes_dim`` attributes) is one table entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

PRESETS = ("stock", "interpolate", "ntk", "yarn")
ROPE_PRESETS = ("interpolate", "ntk", "yarn")
YARN_ALPHA = 1.0  # YaRN's defaults for LLaMA (Peng et al. 2023, Sec. 3.2)
YARN_BETA = 32.0


# ---------------------------------------------------------------------------------------------
# The math: rotary frequencies of one axis under each preset


def rope_frequencies(
    dim: int, theta: float, preset: str, factor: float, train_length: float
) -> torch.Tensor:
    """``(dim // 2,)`` float64 angular frequencies of one RoPE axis of ``dim`` rotary dims.

    ``factor`` is ``s = n / t`` along the axis (``<= 1``: the stock frequencies, for every
    preset); ``train_length`` is ``t`` (YaRN's ramp counts turns over it).
    """
    if dim % 2 or dim < 2:
        raise ValueError(f"dim must be a positive even int, got {dim!r}")
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    exponents = torch.arange(0, dim, 2, dtype=torch.float64) / dim
    stock = 1.0 / (theta**exponents)
    if preset == "stock" or factor <= 1.0:
        return stock
    if preset == "interpolate":
        return stock / factor
    if preset == "ntk":
        if dim == 2:  # d / (d - 2) is undefined; one frequency, which is the base's 0-th power
            return stock
        return 1.0 / ((theta * factor ** (dim / (dim - 2))) ** exponents)
    turns = train_length * stock / (2 * math.pi)
    keep = ((turns - YARN_ALPHA) / (YARN_BETA - YARN_ALPHA)).clamp(0.0, 1.0)
    return (1.0 - keep) * stock / factor + keep * stock


def yarn_mscale(factor: float) -> float:
    """YaRN's q/k multiplier ``0.1 ln s + 1`` (logits get its square); 1 for ``s <= 1``."""
    return 1.0 if factor <= 1.0 else 0.1 * math.log(factor) + 1.0


def _rotary(pos: torch.Tensor, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # FLUX's layout (diffusers' get_1d_rotary_pos_embed with repeat_interleave_real=True).
    angles = torch.outer(pos.to(freqs.dtype), freqs)
    cos = angles.cos().repeat_interleave(2, dim=1).float()
    sin = angles.sin().repeat_interleave(2, dim=1).float()
    return cos, sin


# ---------------------------------------------------------------------------------------------
# What one enable call asks for, and whether it is the one in force


class PositionsContext:
    """Shared between a handle and its hooks: the preset, the training extent per axis and
    the questions the hooks ask at run time (is this call the newest one in force with a
    preset; is entropy-attn's scale in force on the denoiser)."""

    def __init__(self, preset: str, train_extent: tuple[float, float]) -> None:
        self.preset = preset
        self.train_extent = train_extent
        self.effective: Callable[[], bool] = lambda: True
        self.scale_in_force: Callable[[], bool] = lambda: False

    def factors(self, extent: tuple[float, float]) -> tuple[float, float]:
        """``s`` per image axis (row, column); ``<= 1`` means unchanged."""
        return tuple(float(n) / float(t) for n, t in zip(extent, self.train_extent, strict=True))


# ---------------------------------------------------------------------------------------------
# Backbones


def _ids_rope_hook(spec: RopeBackbone, context: PositionsContext):
    """Forward hook on a FLUX-style embedder ``ids (L, axes) -> (cos, sin)``: recomputes the
    output for the preset where an image axis is longer than at the training size, and returns
    ``None`` (the output untouched) otherwise."""

    def hook(module, args, output):
        if not context.effective():
            return None
        ids = args[0] if args else None
        if ids is None or ids.dim() != 2:
            return None
        pos = ids.float()
        extent = tuple(float(pos[:, axis].max()) + 1.0 for axis in spec.image_axes)
        factors = context.factors(extent)
        if max(factors) <= 1.0:
            return None
        axis_factor = dict(zip(spec.image_axes, factors, strict=True))
        axis_train = dict(zip(spec.image_axes, context.train_extent, strict=True))
        freqs_dtype = torch.float32 if ids.device.type in ("mps", "npu") else torch.float64
        cos_out, sin_out = [], []
        for axis in range(pos.shape[-1]):
            factor = axis_factor.get(axis, 1.0)
            freqs = rope_frequencies(
                int(module.axes_dim[axis]),
                float(module.theta),
                context.preset,
                factor,
                axis_train.get(axis, 1.0),
            ).to(device=ids.device, dtype=freqs_dtype)
            cos, sin = _rotary(pos[:, axis], freqs)
            cos_out.append(cos)
            sin_out.append(sin)
        cos, sin = torch.cat(cos_out, dim=-1), torch.cat(sin_out, dim=-1)
        if context.preset == "yarn" and not context.scale_in_force():
            mscale = yarn_mscale(max(factors))
            cos, sin = cos * mscale, sin * mscale
        return cos.to(output[0].device), sin.to(output[1].device)

    return hook


@dataclass(frozen=True)
class RopeBackbone:
    """How to reach one RoPE backbone's rotary embedder.

    ``embedder``: attribute path of the module on the denoiser; ``image_axes``: which id axes
    are image rows and columns; ``tokens_per_latent``: latent pixels per token along an axis (a
    patch or packing size), so the training extent is ``train latent / tokens_per_latent``;
    ``hook``: builds the forward hook (default: FLUX's ``ids -> (cos, sin)``).
    """

    embedder: str = "pos_embed"
    image_axes: tuple[int, int] = (1, 2)
    tokens_per_latent: int = 2
    hook: Callable = _ids_rope_hook


ROPE_BACKBONES: dict[str, RopeBackbone] = {
    "FluxTransformer2DModel": RopeBackbone(),  # FluxPipeline packs 2x2 latent patches per token
}


def _sd3_crop(module, context: PositionsContext, previous):
    """SD3's ``PatchEmbed.cropped_pos_embed`` with "interpolate": along an axis longer than at
    the training size, the training window (the centre ``t`` rows of the table, where stock
    SD3 crops at the training size) resampled linearly at ``i * t / n``; other axes as stock."""

    def cropped_pos_embed(height, width):
        patches = (height // module.patch_size, width // module.patch_size)
        factors = context.factors(patches)
        if not context.effective() or max(factors) <= 1.0:
            return previous(height, width)
        size = module.pos_embed_max_size
        table = module.pos_embed.reshape(1, size, size, -1)
        for axis, (n, t) in enumerate(zip(patches, context.train_extent, strict=True)):
            index0, index1, weight = _axis_sampling(int(n), int(t), size, table.device)
            dim = axis + 1
            lower = table.index_select(dim, index0)
            upper = table.index_select(dim, index1)
            shape = [1, 1, 1, 1]
            shape[dim] = -1
            weight = weight.to(table.dtype).reshape(shape)
            table = lower + (upper - lower) * weight
        return table.reshape(1, -1, table.shape[-1])

    return cropped_pos_embed


def _axis_sampling(n: int, t: int, size: int, device) -> tuple[torch.Tensor, ...]:
    """Rows of a ``size``-row table to blend for ``n`` positions: stock SD3's centre crop of
    ``n`` when ``n <= t``; else the centre window of ``t`` sampled at ``i * t / n``."""
    if n <= t:
        start = (size - n) // 2
        index = torch.arange(start, start + n, device=device)
        return index, index, torch.zeros(n, dtype=torch.float64, device=device)
    start = (size - t) // 2
    source = torch.arange(n, dtype=torch.float64, device=device) * (t / n)
    lower = source.floor().long()
    weight = source - lower
    upper = (lower + 1).clamp(max=t - 1)
    return lower + start, upper + start, weight


@dataclass(frozen=True)
class AbsoluteBackbone:
    """A backbone with a table of absolute positions: ``presets`` it supports (beyond stock)
    and how to install "interpolate" (``None``: the stock positions already interpolate)."""

    presets: tuple[str, ...]
    patch: Callable | None
    note: str


ABSOLUTE_BACKBONES: dict[str, AbsoluteBackbone] = {
    "SD3Transformer2DModel": AbsoluteBackbone(("interpolate",), _sd3_crop, "cropped sin-cos"),
    "PixArtTransformer2DModel": AbsoluteBackbone(
        ("interpolate",), None, "sin-cos already interpolated by interpolation_scale"
    ),
}


def supported_presets(denoiser: torch.nn.Module) -> tuple[str, ...]:
    """The presets besides ``"stock"`` that apply to this denoiser class."""
    name = type(denoiser).__name__
    if name in ROPE_BACKBONES:
        return ROPE_PRESETS
    if name in ABSOLUTE_BACKBONES:
        return ABSOLUTE_BACKBONES[name].presets
    return ()


def check_preset(preset, denoiser: torch.nn.Module) -> None:
    """Refuse a preset the denoiser has no positions for, naming the argument."""
    if preset not in PRESETS:
        raise ValueError(f"positions must be one of {PRESETS}, got {preset!r}")
    if preset == "stock":
        return
    supported = supported_presets(denoiser)
    if preset not in supported:
        name = type(denoiser).__name__
        raise ValueError(
            f"positions={preset!r} does not apply to {name} "
            + (f"(it supports {supported})" if supported else "(it has no position presets)")
            + f"; RoPE backbones: {sorted(ROPE_BACKBONES)}, others: {sorted(ABSOLUTE_BACKBONES)}"
        )


def _resolve(denoiser: torch.nn.Module, path: str) -> torch.nn.Module:
    module = denoiser
    for part in path.split("."):
        module = getattr(module, part)
    return module


class _AttributePatch:
    """An instance attribute set on a module, undone only while it is still ours (a later patch
    over it keeps working: ours then passes through to what it replaced)."""

    def __init__(self, module, name: str, value) -> None:
        self.module, self.name, self.value = module, name, value
        self.had = name in module.__dict__
        self.before = module.__dict__.get(name)
        setattr(module, name, value)

    def remove(self) -> None:
        if self.module.__dict__.get(self.name) is not self.value:
            return  # someone patched over it; ours stays below theirs and passes through
        if self.had:
            setattr(self.module, self.name, self.before)
        else:
            delattr(self.module, self.name)


def install(denoiser: torch.nn.Module, context: PositionsContext) -> list:
    """Install ``context.preset`` on the denoiser; returns removables (``.remove()``)."""
    name = type(denoiser).__name__
    if context.preset == "stock":
        return []
    if name in ROPE_BACKBONES:
        spec = ROPE_BACKBONES[name]
        embedder = _resolve(denoiser, spec.embedder)
        return [embedder.register_forward_hook(spec.hook(spec, context))]
    backbone = ABSOLUTE_BACKBONES[name]
    if backbone.patch is None:
        return []
    embedder = denoiser.pos_embed
    if embedder.pos_embed_max_size is None:
        raise ValueError(
            f"positions={context.preset!r}: this {name} has no pos_embed_max_size (no cropped "
            "table), so its positions are PixArt-style and already interpolated"
        )
    previous = embedder.cropped_pos_embed
    return [
        _AttributePatch(embedder, "cropped_pos_embed", backbone.patch(embedder, context, previous))
    ]


def train_extent(denoiser: torch.nn.Module, train_latent: tuple[int, int]) -> tuple[float, float]:
    """Tokens per image axis at the training size (latent / tokens per latent pixel)."""
    name = type(denoiser).__name__
    if name in ROPE_BACKBONES:
        step = ROPE_BACKBONES[name].tokens_per_latent
    else:
        step = int(getattr(denoiser.config, "patch_size", 1) or 1)
    return (train_latent[0] / step, train_latent[1] / step)


__all__ = [
    "ABSOLUTE_BACKBONES",
    "PRESETS",
    "ROPE_BACKBONES",
    "PositionsContext",
    "RopeBackbone",
    "check_preset",
    "install",
    "rope_frequencies",
    "supported_presets",
    "train_extent",
    "yarn_mscale",
]
