"""Re-dilated convolutions for UNets at sizes larger than the training size (ScaleCrafter).

He et al., "ScaleCrafter: Tuning-free Higher-Resolution Visual Generation with Diffusion Models"
(ICLR 2024, arXiv 2310.07702): a UNet's convolutions see a receptive field sized for the
training resolution; at a larger size, dilating them by the size ratio lets each conv cover the
same share of the image. What is taken from the paper and its reference code:

- **Which convolutions** (``default_selection``): every ResNet ``conv1``/``conv2`` and every
  down/upsampler ``conv`` of the UNet, except in the outermost (highest-resolution) down and up
  blocks; the mid block included. ``conv_in``/``conv_out``, 1x1 convs and attention layers are
  left alone. (Their SD 2.1 settings at 2x re-dilate exactly these.)
- **Which steps**: the early, noisy ones, where layout is decided: the paper's SD 2.1 setting at
  2x re-dilates the first 20 of 50 DDIM steps, i.e. timesteps ``t >= 600`` of 1000
  (``min_timestep=600`` here, the default).
- **How much**: dilation ``ceil(r)`` for a size ratio ``r`` per axis; a fractional ``r`` is met by
  resizing the conv's input by ``ceil(r) / r`` (bilinear) and its output back, as their reference
  code does. Here each axis gets its own ratio (``8x16`` from ``8x8``: 1 along rows, 2 along
  columns). An axis at or below the training size is not dilated.

Not taken: their noise-damped classifier-free guidance, kernel dispersion and progressive
dilation (used for 4x and beyond in their configs).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .hooks import BoundHook, always

DEFAULT_MIN_TIMESTEP = 600.0


def default_selection(name: str, conv: torch.nn.Module, unet: torch.nn.Module) -> bool:
    """ScaleCrafter's choice: ResNet and sampler convs outside the outermost down/up blocks."""
    if not isinstance(conv, torch.nn.Conv2d) or max(conv.kernel_size) <= 1:
        return False
    parts = name.split(".")
    if not (parts[-1] in ("conv1", "conv2") and "resnets" in parts) and not (
        parts[-1] == "conv" and ("downsamplers" in parts or "upsamplers" in parts)
    ):
        return False
    if parts[0] == "mid_block":
        return True
    if parts[0] == "down_blocks":
        return int(parts[1]) != 0
    if parts[0] == "up_blocks":
        return int(parts[1]) != len(unet.up_blocks) - 1
    return False


def selected_convs(unet: torch.nn.Module, select: Callable | None) -> dict[str, torch.nn.Conv2d]:
    """Qualified name -> conv to re-dilate (``select(name, conv)``, default ScaleCrafter's)."""
    chosen = {}
    for name, module in unet.named_modules():
        if not isinstance(module, torch.nn.Conv2d):
            continue
        keep = default_selection(name, module, unet) if select is None else select(name, module)
        if keep:
            if module.padding_mode != "zeros" or isinstance(module.padding, str):
                raise ValueError(
                    f"redilate_blocks selects {name!r}, whose padding ({module.padding!r}, "
                    f"{module.padding_mode!r}) is not numeric zero padding"
                )
            chosen[name] = module
    return chosen


def _timestep_of(args, kwargs) -> float | None:
    timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
    if timestep is None:
        return None
    if isinstance(timestep, torch.Tensor):
        return float(timestep.max()) if timestep.numel() else None
    return float(timestep)


def _sample_of(args, kwargs):
    return kwargs.get("sample", args[0] if args else None)


class RedilationContext:
    """One enable call's re-dilation: the training latent, the timestep threshold, and what
    the current UNet call decided (dilation and resize per axis, or nothing)."""

    def __init__(self, train_latent: tuple[int, int], min_timestep: float) -> None:
        self.train_latent = train_latent
        self.min_timestep = float(min_timestep)
        self.effective: Callable[[], bool] = always  # enable sets a picklable callable
        self.saved: dict[int, tuple] = {}  # conv -> its settings, between its two hooks
        self.current: tuple[tuple[int, int], tuple[float, float]] | None = None

    def decide(self, height: int, width: int, timestep: float | None) -> None:
        """Set :attr:`current` for a UNet call on a ``height x width`` latent at ``timestep``."""
        self.current = None
        if timestep is None or timestep < self.min_timestep or not self.effective():
            return
        ratios = (height / self.train_latent[0], width / self.train_latent[1])
        if max(ratios) <= 1.0:
            return
        dilation = tuple(max(1, math.ceil(r)) for r in ratios)
        resize = tuple(d / r if r > 1.0 else 1.0 for d, r in zip(dilation, ratios, strict=True))
        self.current = (dilation, resize)


def _conv_output_size(conv: torch.nn.Conv2d, size: tuple[int, int]) -> tuple[int, int]:
    return tuple(
        (n + 2 * p - d * (k - 1) - 1) // s + 1
        for n, p, d, k, s in zip(
            size, conv.padding, conv.dilation, conv.kernel_size, conv.stride, strict=True
        )
    )


def _on_unet(context: RedilationContext, module, args, kwargs) -> None:
    sample = _sample_of(args, kwargs)
    if isinstance(sample, torch.Tensor) and sample.dim() == 4:
        context.decide(sample.shape[-2], sample.shape[-1], _timestep_of(args, kwargs))
    else:
        context.current = None


def _before_conv(context: RedilationContext, conv, args):
    if context.current is None or not context.effective():
        return None
    (dilation, resize), x = context.current, args[0]
    stock_size = _conv_output_size(conv, tuple(x.shape[-2:]))
    if resize != (1.0, 1.0):
        size = tuple(round(n * f) for n, f in zip(x.shape[-2:], resize, strict=True))
        x = F.interpolate(x, size=size, mode="bilinear")
    context.saved[id(conv)] = (conv.dilation, conv.padding, stock_size)
    conv.dilation = dilation
    conv.padding = tuple(
        d * p for d, p in zip(dilation, context.saved[id(conv)][1], strict=True)
    )  # "same" padding of the dilated kernel
    return (x, *args[1:])


def _after_conv(context: RedilationContext, conv, args, output):
    state = context.saved.pop(id(conv), None)
    if state is None:
        return None
    conv.dilation, conv.padding, stock_size = state
    if output is not None and tuple(output.shape[-2:]) != stock_size:
        return F.interpolate(output, size=stock_size, mode="bilinear")
    return None


def install(
    unet: torch.nn.Module, context: RedilationContext, convs: dict[str, torch.nn.Conv2d]
) -> list:
    """Hooks: one on the UNet (reads the size and timestep of each call), two per conv (before:
    resize and dilate; after, always: undo the dilation, resize back). Returns removables."""
    removables = [unet.register_forward_pre_hook(BoundHook(_on_unet, context), with_kwargs=True)]
    for conv in convs.values():
        removables.append(conv.register_forward_pre_hook(BoundHook(_before_conv, context)))
        removables.append(
            conv.register_forward_hook(BoundHook(_after_conv, context), always_call=True)
        )
    return removables


__all__ = ["DEFAULT_MIN_TIMESTEP", "RedilationContext", "default_selection", "selected_convs"]
