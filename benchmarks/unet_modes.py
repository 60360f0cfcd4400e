"""A UNet step or a whole generation timed in one mode: stock, ``enable`` or recording entropy.

``run_mode`` enables ``entropy_attn`` on the target (or not), warms up, measures peak memory on
CUDA, times the rounds and checks that ``disable`` put back the very same processor objects;
``record_mode`` writes what was measured into the benchmark's ``extra_info``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from benchmarks.cases import CFG_BATCH, TEXT_TOKENS, VAE_DOWNSAMPLE
from benchmarks.timing import (
    WARMUP_CALLS,
    TimingPlan,
    cuda_peak_memory,
    record,
    timed_rounds,
    warm_up,
)

UNET_MODES = ("stock", "enable", "enable-record-entropy")
# The CPU suite's tiny UNet: two resolution levels with self- and cross-attention at the first,
# plus the mid block's.
TINY_UNET_CONFIG = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}


def unet_inputs(
    config: dict, latent_size: int, dtype: torch.dtype, device: str, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Seeded inputs of one classifier-free-guidance UNet step at a square latent size."""
    generator = torch.Generator(device=device).manual_seed(seed)
    channels = config.get("in_channels", 4)
    context_dim = config["cross_attention_dim"]
    sample_shape = (CFG_BATCH, channels, latent_size, latent_size)
    context_shape = (CFG_BATCH, TEXT_TOKENS, context_dim)
    return {
        "sample": torch.randn(sample_shape, generator=generator, device=device, dtype=dtype),
        "timestep": torch.full((CFG_BATCH,), 500, device=device, dtype=torch.long),
        "encoder_hidden_states": torch.randn(
            context_shape, generator=generator, device=device, dtype=dtype
        ),
    }


def processor_names(unet) -> list[str]:
    """Class names of the attention processors the UNet uses now."""
    return sorted({type(proc).__name__ for proc in unet.attn_processors.values()})


def run_mode(
    benchmark,
    target,
    call: Callable[[], object],
    mode: str,
    timer: Callable[[], float],
    plan: TimingPlan,
    *,
    cuda: bool,
    warmup_calls: int = WARMUP_CALLS,
) -> dict[str, Any]:
    """Time ``call`` with ``target`` (a UNet or a pipeline) in ``mode``; returns fields for
    ``record``.

    ``mode`` is ``"stock"`` (diffusers' own processors), ``"enable"``
    (``entropy_attn.enable(target)``) or ``"enable-record-entropy"``
    (``entropy_attn.enable(target, record_entropy=True)``; whatever the handle records during the
    timed rounds is part of the measured cost). ``entropy_attn.disable(target)`` runs afterwards,
    and the test fails if the stock processor objects are not back.
    """
    import entropy_attn

    if mode not in UNET_MODES:
        raise ValueError(f"mode must be one of {UNET_MODES}, got {mode!r}")
    unet = getattr(target, "unet", target)
    stock = dict(unet.attn_processors)
    enabled = mode != "stock"
    recording = mode == "enable-record-entropy"
    records = None
    if enabled:
        handle = entropy_attn.enable(target, record_entropy=recording)
    try:
        processors = processor_names(unet)
        # ``warm_up``, not ``probe``: a step that raises is a bug, not a shape to skip.
        warm_up(call, warmup_calls)
        peak = extra = None
        if cuda:
            peak, extra = cuda_peak_memory(call)
        plan_used = timed_rounds(benchmark, call, timer, plan)
        if recording:
            records = len(handle.entropy_rows())  # evidence that recording was on
    finally:
        if enabled:
            entropy_attn.disable(target)
    restored = unet.attn_processors
    assert set(restored) == set(stock) and all(restored[k] is v for k, v in stock.items()), (
        "entropy_attn.disable did not put back the stock processor objects"
    )
    return {
        "processors": processors,
        "peak_bytes": peak,
        "extra_bytes": extra,
        "entropy_records": records,
        **plan_used,
    }


def run_unet_mode(
    benchmark,
    unet,
    inputs: dict[str, torch.Tensor],
    mode: str,
    timer: Callable[[], float],
    plan: TimingPlan,
    *,
    cuda: bool,
) -> dict[str, Any]:
    """Time one UNet forward (one denoising step) on ``inputs`` in ``mode`` (see
    :func:`run_mode`)."""

    @torch.inference_mode()
    def step():
        return unet(**inputs, return_dict=False)[0]

    return run_mode(benchmark, unet, step, mode, timer, plan, cuda=cuda)


def record_mode(
    benchmark,
    fields: dict[str, Any],
    *,
    device: str,
    dtype: torch.dtype,
    impl: str,
    mode: str,
    what: str,
    model: str,
    image_size: int,
    batch: int,
    **info: Any,
) -> None:
    """:func:`record` for a UNet step (``impl="unet"``) or a whole generation
    (``impl="generation"``) in ``mode``; ``fields`` is what :func:`run_mode` returned and
    ``what`` names the timed call (``"UNet2DConditionModel step"``)."""
    record(
        benchmark,
        device=device,
        dtype=dtype,
        impl=impl,
        variant=mode,
        entropy=mode == "enable-record-entropy",
        baseline=f"{what}, {mode}",
        model=model,
        image_size=image_size,
        latent_size=image_size // VAE_DOWNSAMPLE,
        batch=batch,
        **info,
        **fields,
    )


GENERATION_STEPS = 50
GUIDANCE_SCALE = 7.5
GENERATION_PROMPT = "a photograph of an astronaut riding a horse"


def generation_call(pipe, image_size: int, steps: int = GENERATION_STEPS, seed: int = 0):
    """One whole text-to-image generation as a zero-argument callable: text encoding, ``steps``
    denoising steps with classifier-free guidance (a UNet batch of 2) and the autoencoder's
    decode, returning the images as a tensor (no PIL conversion)."""
    device = pipe.unet.device

    @torch.inference_mode()
    def generate():
        generator = torch.Generator(device=device).manual_seed(seed)
        return pipe(
            GENERATION_PROMPT,
            height=image_size,
            width=image_size,
            num_inference_steps=steps,
            guidance_scale=GUIDANCE_SCALE,
            generator=generator,
            output_type="pt",
        ).images

    return generate


def run_generation_mode(
    benchmark,
    pipe,
    image_size: int,
    mode: str,
    timer: Callable[[], float],
    plan: TimingPlan,
    *,
    cuda: bool,
    steps: int = GENERATION_STEPS,
) -> dict[str, Any]:
    """Time one whole generation of ``pipe`` at ``image_size``² in ``mode`` (see
    :func:`run_mode`); one untimed generation warms up (Triton autotuning, cuDNN plans)."""
    call = generation_call(pipe, image_size, steps)
    fields = run_mode(benchmark, pipe, call, mode, timer, plan, cuda=cuda, warmup_calls=1)
    return {**fields, "steps": steps, "guidance_scale": GUIDANCE_SCALE}
