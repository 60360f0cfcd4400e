"""Position presets for diffusion transformers at sizes they were not trained for.

``enable(pipe, positions=...)`` with one of :data:`PRESETS`; each changes an axis only where the
image (or video) is *longer* than at the training size along that axis (factor ``s = n / t > 1``,
``n`` the tokens along the axis now, ``t`` at the training size): at and below the training size
every preset is the identity, and each axis gets its own factor (rows, columns, and for video
models frames).

- ``"stock"``: what the model does by itself (RoPE backbones: positions 0, 1, ... run past the
  training range, except CogVideoX 1.0, whose pipeline fits its positions into the training grid
  keeping the aspect ratio; SD3: a centre crop of its ``pos_embed_max_size`` table; PixArt:
  positions interpolated into the training range by its ``interpolation_scale``/``base_size``).
- ``"interpolate"`` (position interpolation, Chen et al. 2023, arXiv 2306.15595): positions
  ``p -> p / s`` per axis, i.e. into the training range. RoPE: every frequency divided by ``s``.
  SD3: the training-size window of the table, resampled linearly per axis at ``i * t / n``
  (PixArt's own rule), which also works past ``pos_embed_max_size``. PixArt: its stock positions
  already are this, so the preset changes nothing there.
- ``"ntk"`` (NTK-aware scaling, bloc97 2023, as used by I-Max and CineScale): RoPE base
  ``theta -> theta * s ** (d / (d - 2))`` per axis (``d`` the axis's rotary dims). On any
  geometric ladder of ``K`` frequencies this is: the ``j``-th fastest divided by
  ``s ** (j / (K - 1))`` (the fastest kept, the slowest divided by ``s``), which is how it is
  applied to LTX-Video's ladder (no ``theta ** (-2k/d)`` form there).
- ``"yarn"`` (YaRN, Peng et al. 2023, arXiv 2309.00071, its LLaMA defaults alpha = 1, beta = 32):
  per frequency, with ``r = t / wavelength`` the turns it makes over the training length, keep it
  where ``r > beta``, divide it by ``s`` where ``r < alpha``, blend linearly between; and YaRN's
  attention temperature, logits times ``(0.1 ln s + 1) ** 2`` (applied, as YaRN's code does, to
  the rotary cos/sin, so q and k each carry ``0.1 ln s + 1``), with ``s`` the largest per-axis
  factor. The temperature and entropy-attn's scale are never both applied: while an enable call
  with the scale on is in force on the denoiser, the scale replaces the temperature. Where a
  backbone rotates only its image tokens (HunyuanVideo, CogVideoX), image-text logits get the
  multiplier once and text-text logits not at all.

A RoPE preset changes the embedding *function* of an axis (its frequencies), so it applies to
every token that carries a position on that axis: text tokens placed on the image axes (Qwen-Image
puts them on the diagonal after the image) move with it, which keeps them just past the image.

Backbones: :data:`ROPE_BACKBONES` (FLUX.1, FLUX.2, Chroma, Qwen-Image, Z-Image, Wan 2.1/2.2,
HunyuanVideo, LTX-Video, CogVideoX 1.0/1.5 with rotary positions) and :data:`ABSOLUTE_BACKBONES`
(SD3, PixArt). Each RoPE entry recomputes its embedder's output from the positions it was given,
in the embedder's own layout; another backbone whose embedder maps ``ids (L, axes)`` to FLUX's
``(cos, sin)`` layout (``theta`` and ``axes_dim`` attributes) is one table entry.

One file because each backbone's hook is short and reads best next to the frequency math it
applies and the table that registers it (about 750 lines).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .hooks import BoundHook, always, never

PRESETS = ("stock", "interpolate", "ntk", "yarn")
ROPE_PRESETS = ("interpolate", "ntk", "yarn")
YARN_ALPHA = 1.0  # YaRN's defaults for LLaMA (Peng et al. 2023, Sec. 3.2)
YARN_BETA = 32.0


# ---------------------------------------------------------------------------------------------
# The math: rotary frequencies of one axis under each preset


def scaled_frequencies(
    freqs: torch.Tensor, preset: str, factor: float, train_length: float
) -> torch.Tensor:
    """One axis's angular frequencies (radians per token, any order) under ``preset``.

    ``factor`` is ``s = n / t`` along the axis (``<= 1``: ``freqs`` unchanged, for every preset);
    ``train_length`` is ``t`` in tokens (YaRN's ramp counts turns over it).
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    if preset == "stock" or factor <= 1.0:
        return freqs
    if preset == "interpolate":
        return freqs / factor
    if preset == "ntk":
        count = freqs.numel()
        if count < 2:  # one frequency: the base's 0-th power, which NTK keeps
            return freqs
        rank = torch.empty(count, dtype=freqs.dtype, device=freqs.device)
        rank[torch.argsort(freqs.abs(), descending=True, stable=True)] = torch.arange(
            count, dtype=freqs.dtype, device=freqs.device
        )
        return freqs * factor ** (-rank / (count - 1))
    turns = train_length * freqs.abs() / (2 * math.pi)
    keep = ((turns - YARN_ALPHA) / (YARN_BETA - YARN_ALPHA)).clamp(0.0, 1.0)
    return (1.0 - keep) * freqs / factor + keep * freqs


def theta_frequencies(dim: int, theta: float) -> torch.Tensor:
    """``(dim // 2,)`` float64 stock RoPE frequencies ``theta ** (-2k / dim)``."""
    if dim % 2 or dim < 2:
        raise ValueError(f"dim must be a positive even int, got {dim!r}")
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))


def rope_frequencies(
    dim: int, theta: float, preset: str, factor: float, train_length: float
) -> torch.Tensor:
    """``(dim // 2,)`` float64 angular frequencies of one RoPE axis of ``dim`` rotary dims
    (base ``theta``) under ``preset``; see :func:`scaled_frequencies`."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    return scaled_frequencies(theta_frequencies(dim, theta), preset, factor, train_length)


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
    """Shared between a handle and its hooks: the preset, the training extent per axis (rows,
    columns; video models: frames, rows, columns) and the questions the hooks ask at run time
    (is this call the newest one in force with a preset; is entropy-attn's scale in force on the
    denoiser)."""

    def __init__(self, preset: str, train_extent: tuple[float, ...]) -> None:
        self.preset = preset
        self.train_extent = tuple(float(t) for t in train_extent)
        # Set by enable to picklable callables (functools.partial of module-level functions
        # and methods), so a model with a preset still deep-copies and pickles.
        self.effective: Callable[[], bool] = always
        self.scale_in_force: Callable[[], bool] = never
        self.model: torch.nn.Module | None = None  # the denoiser (context parallelism check)
        # The image's extent in the denoiser forward now running, where the embedder is called
        # once for the image and once for the text (FLUX.2, Z-Image): both calls then carry the
        # same preset and YaRN temperature, as one call over all tokens would.
        self.forward_extent: tuple | None = None

    def factors(self, extent: tuple[float, ...]) -> tuple[float, ...]:
        """``s`` per axis of :attr:`train_extent`; ``<= 1`` means unchanged."""
        return tuple(float(n) / t for n, t in zip(extent, self.train_extent, strict=True))

    def changes(self, extent: tuple[float, ...]) -> tuple[float, ...] | None:
        """The factors where this call is in force and some axis is longer than at the
        training size, else ``None`` (the stock positions stay). ``extent`` is what the
        embedder sees; the denoiser's :attr:`forward_extent` wins where it is known."""
        if not self.effective():
            return None
        factors = self.factors(self.forward_extent or extent)
        if max(factors) <= 1.0:
            return None
        if context_parallel(self.model):
            raise RuntimeError(
                f"positions={self.preset!r} cannot run under context parallelism (each rank "
                "sees a slice of the positions): call disable_parallelism(), or enable "
                "entropy-attn with positions='stock'"
            )
        return factors

    def frequencies(self, stock: list[torch.Tensor], axes: dict[int, tuple]) -> list:
        """Each embedder axis's frequencies under the preset; ``axes`` maps an axis of
        ``stock`` to ``(index in train_extent, factor)`` (other axes keep their frequencies)."""
        out = []
        for axis, freqs in enumerate(stock):
            if axis in axes:
                index, factor = axes[axis]
                freqs = scaled_frequencies(freqs, self.preset, factor, self.train_extent[index])
            out.append(freqs)
        return out

    def mscale(self, factors: tuple[float, ...]) -> float:
        """YaRN's q/k multiplier where it applies (the scale is not in force), else 1."""
        if self.preset != "yarn" or self.scale_in_force():
            return 1.0
        return yarn_mscale(max(factors))


def context_parallel(model) -> bool:
    """Whether diffusers' ``enable_parallelism`` split this model's sequence over ranks."""
    config = getattr(getattr(model, "_parallel_config", None), "context_parallel_config", None)
    if config is None:
        return False
    return int(config.ring_degree) * int(config.ulysses_degree) > 1


def _axis_map(axes: tuple[int, ...], factors: tuple[float, ...]) -> dict[int, tuple]:
    """Embedder axis -> (index in the training extent, factor)."""
    return {axis: (index, factors[index]) for index, axis in enumerate(axes)}


def _freqs_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type in ("mps", "npu") else torch.float64


def _grid(extent: tuple[int, ...], device, dtype) -> list[torch.Tensor]:
    """Flattened positions ``0 .. n - 1`` per axis of a grid (first axis slowest)."""
    axes = [torch.arange(int(n), device=device, dtype=dtype) for n in extent]
    return [g.reshape(-1) for g in torch.meshgrid(*axes, indexing="ij")]


def _real_rope(positions: list, freqs: list, mscale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-axis ``(cos, sin)`` in FLUX's layout, axes concatenated, times ``mscale``."""
    parts = [_rotary(pos, f) for pos, f in zip(positions, freqs, strict=True)]
    cos = torch.cat([c for c, _ in parts], dim=-1)
    sin = torch.cat([s for _, s in parts], dim=-1)
    if mscale != 1.0:
        cos, sin = cos * mscale, sin * mscale
    return cos, sin


def _complex_rope(positions: list, freqs: list, mscale: float) -> torch.Tensor:
    """Per-axis ``exp(i p w)`` (complex64, Qwen-Image's and Z-Image's layout), times ``mscale``."""
    angles = torch.cat(
        [torch.outer(p.to(f.dtype), f).float() for p, f in zip(positions, freqs, strict=True)],
        dim=-1,
    )
    out = torch.polar(torch.ones_like(angles), angles)
    return out * mscale if mscale != 1.0 else out


def _bound(module, args, kwargs) -> inspect.BoundArguments:
    bound = inspect.signature(module.forward).bind(*args, **kwargs)
    bound.apply_defaults()
    return bound


def _default_theta(module) -> float:
    """The embedder's ``theta``, or its constructor's default where it keeps none (Wan)."""
    theta = getattr(module, "theta", None)
    if theta is None:
        theta = inspect.signature(type(module).__init__).parameters["theta"].default
    return float(theta)


def _preset_frequencies(context, extent, axes, dims, theta, device, steps=None):
    """``(factors, frequencies)`` of an embedder's axes under the preset, or ``None`` where the
    preset changes nothing at ``extent`` (the image's extent along the embedder ``axes`` it
    names). Stock frequencies are ``theta ** (-2k / d)`` per axis of ``dims``, times ``steps``
    (positions that far apart per token) where given."""
    factors = context.changes(extent)
    if factors is None:
        return None
    dtype = _freqs_dtype(device)
    stock = [theta_frequencies(int(d), float(theta)).to(device, dtype) for d in dims]
    if steps is not None:
        stock = [freqs * step for freqs, step in zip(stock, steps, strict=True)]
    return factors, context.frequencies(stock, _axis_map(axes, factors))


def _grid_rope(context, extent, dims, theta, device, steps=None):
    """``(cos, sin)`` in FLUX's layout of a video grid (frames, rows, columns; positions ``0 ..
    n - 1`` per axis) under the preset, or ``None`` where it changes nothing."""
    found = _preset_frequencies(context, extent, (0, 1, 2), dims, theta, device, steps)
    if found is None:
        return None
    factors, freqs = found
    grid = _grid(extent, device, _freqs_dtype(device))
    return _real_rope(grid, freqs, context.mscale(factors))


# ---------------------------------------------------------------------------------------------
# RoPE backbones: each hook recomputes its embedder's output for the preset where an axis is
# longer than at the training size, and returns None (the output untouched) otherwise.


def _ids_rope(context: PositionsContext, module, args, output):
    """FLUX.1, FLUX.2 and Chroma: ``ids (L, axes) -> (cos, sin)``, image rows and columns on id
    axes 1 and 2 (FLUX.2's fourth axis and FLUX.1's first keep their frequencies)."""
    ids = args[0] if args else None
    if ids is None or ids.dim() != 2:
        return None
    pos = ids.float()
    extent = tuple(float(pos[:, axis].max()) + 1.0 for axis in (1, 2))
    found = _preset_frequencies(context, extent, (1, 2), module.axes_dim, module.theta, ids.device)
    if found is None:
        return None
    factors, freqs = found
    positions = [pos[:, axis] for axis in range(len(freqs))]
    cos, sin = _real_rope(positions, freqs, context.mscale(factors))
    return cos.to(output[0].device), sin.to(output[1].device)


def _wan_rope(context: PositionsContext, module, args, output):
    """Wan 2.1/2.2: ``hidden_states (B, C, F, H, W) -> (cos, sin)`` of shape ``(1, L, 1, D)``,
    axes frames / rows / columns of ``t_dim``/``h_dim``/``w_dim`` dims."""
    frames, height, width = args[0].shape[2:]
    p_t, p_h, p_w = module.patch_size
    extent = (frames // p_t, height // p_h, width // p_w)
    dims = (module.t_dim, module.h_dim, module.w_dim)
    rotary = _grid_rope(context, extent, dims, _default_theta(module), args[0].device)
    if rotary is None:
        return None
    cos, sin = rotary
    shape = (1, cos.shape[0], 1, cos.shape[1])
    return cos.reshape(shape).to(output[0].device), sin.reshape(shape).to(output[1].device)


def _hunyuan_video_rope(context: PositionsContext, module, args, output):
    """HunyuanVideo: ``hidden_states (B, C, F, H, W) -> (cos, sin)`` of shape ``(L, D)``."""
    frames, height, width = args[0].shape[2:]
    p, p_t = module.patch_size, module.patch_size_t
    extent = (frames // p_t, height // p, width // p)
    rotary = _grid_rope(context, extent, module.rope_dim, module.theta, args[0].device)
    if rotary is None:
        return None
    cos, sin = rotary
    return cos.to(output[0].device), sin.to(output[1].device)


def _ltx_video_rope(context: PositionsContext, module, args, kwargs, output):
    """LTX-Video: angle ``f_k (2 g - 1)`` per axis with ``f_k = (pi / 2) theta ** (k / (K - 1))``
    and ``g`` the position in units of the base size (``rope_interpolation_scale`` x patch /
    base, or ``video_coords / base``); the constant ``-f_k`` cancels between query and key, so
    each ``f_k`` is an angular frequency of ``2 f_k`` x (the step of ``g`` per token). The preset
    rescales each ``f_k`` by the ratio it applies to that per-token frequency. Layout: frequency
    major, axes (frames, rows, columns) inner, repeated for (real, imaginary), and ``dim % 6``
    pass-through columns first."""
    bound = _bound(module, args, kwargs).arguments
    hidden = bound["hidden_states"]
    coords = bound.get("video_coords")
    base = (module.base_num_frames, module.base_height, module.base_width)
    if coords is None:
        if bound.get("num_frames") is None:
            return None
        extent = (int(bound["num_frames"]), int(bound["height"]), int(bound["width"]))
        grid = torch.stack(_grid(extent, hidden.device, torch.float64))  # (3, L)
        scale = bound.get("rope_interpolation_scale")
        if scale is not None:
            patches = (module.patch_size_t, module.patch_size, module.patch_size)
            step = [float(scale[i]) * patches[i] / base[i] for i in range(3)]
        else:
            step = [1.0, 1.0, 1.0]
        grid = grid * torch.tensor(step, dtype=torch.float64, device=hidden.device)[:, None]
        grid = grid[None].expand(hidden.shape[0], -1, -1)  # (B, 3, L)
    else:
        grid = torch.stack([coords[:, i].double() / base[i] for i in range(3)], dim=1)
        extent = tuple(int(torch.unique(coords[0, i]).numel()) for i in range(3))
        step = []
        for i in range(3):
            values = grid[0, i]
            span = float(values.max() - values.min())
            step.append(span / (extent[i] - 1) if extent[i] > 1 else 1.0)
    factors = context.changes(extent)
    if factors is None:
        return None
    count = module.dim // 6
    k = torch.arange(count, dtype=torch.float64, device=hidden.device)
    base_freqs = (math.pi / 2.0) * module.theta ** (k / max(count - 1, 1))
    per_token = [2.0 * base_freqs * step[i] for i in range(3)]
    scaled = context.frequencies(per_token, _axis_map((0, 1, 2), factors))
    # (B, 3, L, K): angle of axis i, token, frequency; then frequency-major as stock.
    angles = torch.stack(
        [
            (base_freqs * (new / old))[None, None, :] * (grid[:, i, :, None] * 2.0 - 1.0)
            for i, (new, old) in enumerate(zip(scaled, per_token, strict=True))
        ],
        dim=1,
    )
    angles = angles.permute(0, 2, 3, 1).flatten(2)  # (B, L, K * 3)
    mscale = context.mscale(factors)
    cos = angles.cos().float().repeat_interleave(2, dim=-1)
    sin = angles.sin().float().repeat_interleave(2, dim=-1)
    pad = module.dim % 6
    if pad:
        cos = torch.cat([torch.ones_like(cos[..., :pad]), cos], dim=-1)
        sin = torch.cat([torch.zeros_like(sin[..., :pad]), sin], dim=-1)
    cos, sin = cos * mscale, sin * mscale
    return cos.to(output[0].device), sin.to(output[1].device)


def _qwen_image_rope(context: PositionsContext, module, args, kwargs, output):
    """Qwen-Image: ``(video_fhw, device, max_txt_seq_len) -> (image, text)`` complex rotations;
    image rows and columns centred (``scale_rope``), text on the diagonal after the image."""
    bound = _bound(module, args, kwargs).arguments
    video_fhw = bound["video_fhw"]
    if isinstance(video_fhw, list):  # as stock: a batch shares the first sample's shapes
        video_fhw = video_fhw[0]
    if not isinstance(video_fhw, list):
        video_fhw = [video_fhw]
    first = video_fhw[0]
    device = output[0].device
    found = _preset_frequencies(
        context, (first[1], first[2]), (1, 2), module.axes_dim, module.theta, device
    )
    if found is None:
        return None
    factors, freqs = found
    dtype = _freqs_dtype(device)
    mscale = context.mscale(factors)
    images, last = [], 0
    for index, (frame, height, width) in enumerate(video_fhw):
        positions = _grid((frame, height, width), device, dtype)
        positions[0] = positions[0] + index
        if module.scale_rope:
            positions[1] = positions[1] - (height - height // 2)
            positions[2] = positions[2] - (width - width // 2)
            last = max(height // 2, width // 2, last)
        else:
            last = max(height, width, last)
        images.append(_complex_rope(positions, freqs, mscale))
    text = torch.arange(int(bound["max_txt_seq_len"]), device=device, dtype=dtype) + last
    return torch.cat(images, dim=0), _complex_rope([text] * 3, freqs, mscale)


class _ZImageRope:
    """Stands in for Z-Image's ``rope_embedder`` (a plain object, not a module, so no hook can
    reach it): ``ids (L, 3) -> exp(i p w)``, image rows and columns on id axes 1 and 2; what it
    replaced answers wherever the preset changes nothing."""

    def __init__(self, previous, context: PositionsContext) -> None:
        self.previous, self.context = previous, context

    def __getattr__(self, name):
        # Only what is not ours goes to the embedder it stands in for (copy and pickle look
        # attributes up on a half-built instance, before ``previous`` exists).
        if name in ("previous", "context") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.previous, name)

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        extent = tuple(float(ids[:, axis].max()) + 1.0 for axis in (1, 2))
        embedder = self.previous
        found = _preset_frequencies(
            self.context, extent, (1, 2), embedder.axes_dims, embedder.theta, ids.device
        )
        if found is None:
            return embedder(ids)
        factors, freqs = found
        positions = [ids[:, axis] for axis in range(len(freqs))]
        return _complex_rope(positions, freqs, self.context.mscale(factors))


def _cogvideox_spacing(config, context: PositionsContext) -> tuple[float, float, float]:
    """Position step per token (frames, rows, columns) at the training size, as CogVideoX's
    pipeline makes it: 1.0 fits the grid into its config's (``sample_height // patch`` x
    ``sample_width // patch``), so the step is that over the training extent (1 at the
    pipeline's default size); 1.5 (``patch_size_t`` set) steps by 1."""
    if config.patch_size_t:
        return (1.0, 1.0, 1.0)
    base = (config.sample_height // config.patch_size, config.sample_width // config.patch_size)
    return (1.0, base[0] / context.train_extent[1], base[1] / context.train_extent[2])


def _cogvideox_rope(context: PositionsContext, module, args, kwargs):
    """CogVideoX (rotary): the pipeline passes ``image_rotary_emb`` to the transformer, so a
    pre-hook on the transformer replaces it where the preset applies: positions ``i x step``
    per axis (:func:`_cogvideox_spacing`, what its pipeline gives at the training size) under
    the preset, in ``get_3d_rotary_pos_embed``'s layout (frames ``D / 4``, rows and columns
    ``3 D / 8`` dims, theta 10000). A call without rotary embeddings is left alone."""
    bound = _bound(module, args, kwargs)
    rotary = bound.arguments.get("image_rotary_emb")
    if rotary is None:
        return None
    config = module.config
    frames, _, height, width = bound.arguments["hidden_states"].shape[1:]
    p, p_t = config.patch_size, config.patch_size_t
    extent = ((frames + p_t - 1) // p_t if p_t else frames, height // p, width // p)
    head_dim = int(config.attention_head_dim)
    dims = (head_dim // 4, head_dim // 8 * 3, head_dim // 8 * 3)
    # Per-token frequencies (step x stock), so that YaRN counts turns over the training extent.
    spacing = _cogvideox_spacing(config, context)
    new = _grid_rope(context, extent, dims, 10000.0, rotary[0].device, spacing)
    if new is None:
        return None
    cos, sin = new
    bound.arguments["image_rotary_emb"] = (cos.to(rotary[0].dtype), sin.to(rotary[1].dtype))
    return bound.args, bound.kwargs


def _on_embedder(path: str, function: Callable, with_kwargs: bool = False) -> Callable:
    """An installer: ``function(context, module, args, [kwargs,] output)`` as a forward hook
    on the denoiser's submodule at ``path``."""

    def install(denoiser, context):
        module = _resolve(denoiser, path)
        hook = BoundHook(function, context)
        return [module.register_forward_hook(hook, with_kwargs=with_kwargs)]

    return install


def _set_forward_extent(context, extent_of, module, args, kwargs) -> None:
    context.forward_extent = extent_of(_bound(module, args, kwargs).arguments)


def _clear_forward_extent(context, module, args, output) -> None:
    context.forward_extent = None


def _with_forward_extent(install: Callable, extent_of: Callable) -> Callable:
    """``install`` plus hooks on the denoiser that set ``context.forward_extent`` from its
    inputs for the length of each forward (``extent_of(arguments)``, ``None``: unknown)."""

    def install_both(denoiser, context):
        before = BoundHook(_set_forward_extent, context, extent_of)
        after = BoundHook(_clear_forward_extent, context)
        return [
            denoiser.register_forward_pre_hook(before, with_kwargs=True),
            denoiser.register_forward_hook(after, always_call=True),
            *install(denoiser, context),
        ]

    return install_both


def _flux2_extent(arguments) -> tuple | None:
    ids = arguments.get("img_ids")
    if ids is None:
        return None
    ids = ids[0] if ids.dim() == 3 else ids
    return tuple(float(ids[:, axis].max()) + 1.0 for axis in (1, 2))


def _z_image_extent(arguments) -> tuple | None:
    images = arguments.get("x")
    first = images[0] if isinstance(images, (list, tuple)) and images else None
    if not isinstance(first, torch.Tensor) or first.dim() != 4:
        return None  # omni inputs (lists per sample): the embedder's own ids decide
    patch = int(arguments.get("patch_size") or 1)
    return (first.shape[2] // patch, first.shape[3] // patch)


def _install_z_image(denoiser, context):
    previous = denoiser.rope_embedder
    return [_AttributePatch(denoiser, "rope_embedder", _ZImageRope(previous, context))]


def _install_cogvideox(denoiser, context):
    hook = BoundHook(_cogvideox_rope, context)
    return [denoiser.register_forward_pre_hook(hook, with_kwargs=True)]


def _packed(config, latent) -> tuple[float, float]:
    """2x2 latent pixels per token (FLUX, FLUX.2, Chroma, Qwen-Image pack them)."""
    return (latent[1] / 2, latent[2] / 2)


def _patched_image(config, latent) -> tuple[float, float]:
    patch = int(config["all_patch_size"][0])
    return (latent[1] / patch, latent[2] / patch)


def _patched_video(config, latent) -> tuple[float, float, float]:
    patch = config["patch_size"]
    if isinstance(patch, (tuple, list)):  # Wan: (frames, rows, columns)
        p_t, p_h, p_w = (int(x) for x in patch)
    else:
        p_h = p_w = int(patch)
        p_t = int(config.get("patch_size_t") or 1)
    return ((latent[0] + p_t - 1) // p_t, latent[1] / p_h, latent[2] / p_w)


def _qwen_refusal(denoiser) -> str | None:
    name = type(denoiser.pos_embed).__name__
    return None if name == "QwenEmbedRope" else f"its {name} has no preset registered"


def _cogvideox_refusal(denoiser) -> str | None:
    if not denoiser.config.get("use_rotary_positional_embeddings"):
        return "it has no rotary positions (CogVideoX-2b's are sin-cos, computed for each size)"
    return None


def _no_refusal(denoiser) -> str | None:
    return None


@dataclass(frozen=True)
class RopeBackbone:
    """How to reach one RoPE backbone's positions.

    ``install(denoiser, context)`` returns removables (``.remove()``); ``train_tokens(config,
    latent)`` gives the training extent in tokens per axis from the training latent ``(frames,
    height, width)`` (image models: rows, columns; video models: frames, rows, columns);
    ``refusal(denoiser)`` says why an instance has no preset (``None``: it has).
    """

    install: Callable = field(default=_on_embedder("pos_embed", _ids_rope))
    train_tokens: Callable = _packed
    refusal: Callable = _no_refusal


ROPE_BACKBONES: dict[str, RopeBackbone] = {
    "FluxTransformer2DModel": RopeBackbone(),
    "Flux2Transformer2DModel": RopeBackbone(
        _with_forward_extent(_on_embedder("pos_embed", _ids_rope), _flux2_extent)
    ),
    "ChromaTransformer2DModel": RopeBackbone(),
    "QwenImageTransformer2DModel": RopeBackbone(
        _on_embedder("pos_embed", _qwen_image_rope, with_kwargs=True), refusal=_qwen_refusal
    ),
    "ZImageTransformer2DModel": RopeBackbone(
        _with_forward_extent(_install_z_image, _z_image_extent), _patched_image
    ),
    "WanTransformer3DModel": RopeBackbone(_on_embedder("rope", _wan_rope), _patched_video),
    "HunyuanVideoTransformer3DModel": RopeBackbone(
        _on_embedder("rope", _hunyuan_video_rope), _patched_video
    ),
    "LTXVideoTransformer3DModel": RopeBackbone(
        _on_embedder("rope", _ltx_video_rope, with_kwargs=True), _patched_video
    ),
    "CogVideoXTransformer3DModel": RopeBackbone(
        _install_cogvideox, _patched_video, refusal=_cogvideox_refusal
    ),
}


def _sd3_crop(module, context: PositionsContext, previous, height, width):
    """SD3's ``PatchEmbed.cropped_pos_embed`` with "interpolate": along an axis longer than at
    the training size, the training window (the centre ``t`` rows of the table, where stock
    SD3 crops at the training size) resampled linearly at ``i * t / n``; other axes as stock
    (``previous``: an instance attribute it stands over, else the class's method)."""
    patches = (height // module.patch_size, width // module.patch_size)
    factors = context.factors(patches)
    if not context.effective() or max(factors) <= 1.0:
        if previous is not None:
            return previous(height, width)
        return type(module).cropped_pos_embed(module, height, width)
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


def _model(denoiser: torch.nn.Module) -> torch.nn.Module:
    return getattr(denoiser, "_orig_mod", denoiser)  # the module under torch.compile's wrapper


def supported_presets(denoiser: torch.nn.Module) -> tuple[str, ...]:
    """The presets besides ``"stock"`` that apply to this denoiser."""
    model = _model(denoiser)
    name = type(model).__name__
    if name in ROPE_BACKBONES:
        return () if ROPE_BACKBONES[name].refusal(model) else ROPE_PRESETS
    if name in ABSOLUTE_BACKBONES:
        return ABSOLUTE_BACKBONES[name].presets
    return ()


def check_preset(preset, denoiser: torch.nn.Module) -> None:
    """Refuse a preset the denoiser has no positions for, naming the argument."""
    if preset not in PRESETS:
        raise ValueError(f"positions must be one of {PRESETS}, got {preset!r}")
    if preset == "stock":
        return
    model = _model(denoiser)
    supported = supported_presets(model)
    if preset not in supported:
        name = type(model).__name__
        spec = ROPE_BACKBONES.get(name)
        reason = spec.refusal(model) if spec is not None else None
        if reason is None:
            reason = f"it supports {supported}" if supported else "it has no position presets"
        raise ValueError(
            f"positions={preset!r} does not apply to {name} ({reason}); RoPE backbones: "
            f"{sorted(ROPE_BACKBONES)}, others: {sorted(ABSOLUTE_BACKBONES)}"
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
    model = _model(denoiser)
    name = type(model).__name__
    if context.preset == "stock":
        return []
    if context_parallel(model):
        raise ValueError(
            f"positions={context.preset!r} cannot run under context parallelism (each rank "
            "sees a slice of the positions): keep positions='stock' there, or call "
            "disable_parallelism() first"
        )
    context.model = model
    if name in ROPE_BACKBONES:
        return ROPE_BACKBONES[name].install(model, context)
    backbone = ABSOLUTE_BACKBONES[name]
    if backbone.patch is None:
        return []
    embedder = model.pos_embed
    if embedder.pos_embed_max_size is None:
        raise ValueError(
            f"positions={context.preset!r}: this {name} has no pos_embed_max_size (no cropped "
            "table), so its positions are PixArt-style and already interpolated"
        )
    previous = embedder.__dict__.get("cropped_pos_embed")  # someone's patch, else the method
    patch = BoundHook(backbone.patch, embedder, context, previous)
    return [_AttributePatch(embedder, "cropped_pos_embed", patch)]


def train_extent(denoiser: torch.nn.Module, train_latent: tuple[int, int, int]) -> tuple:
    """Tokens per axis at the training size, from the training latent ``(frames, height,
    width)``: rows and columns (video RoPE backbones: frames, rows and columns)."""
    model = _model(denoiser)
    name = type(model).__name__
    if name in ROPE_BACKBONES:
        return tuple(ROPE_BACKBONES[name].train_tokens(dict(model.config), train_latent))
    step = int(getattr(model.config, "patch_size", 1) or 1)
    return (train_latent[1] / step, train_latent[2] / step)


__all__ = [
    "ABSOLUTE_BACKBONES",
    "PRESETS",
    "ROPE_BACKBONES",
    "PositionsContext",
    "RopeBackbone",
    "check_preset",
    "context_parallel",
    "install",
    "rope_frequencies",
    "scaled_frequencies",
    "supported_presets",
    "theta_frequencies",
    "train_extent",
    "yarn_mscale",
]
