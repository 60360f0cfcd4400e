"""End-to-end CPU benchmark: one step of a tiny UNet, stock diffusers vs ``entropy_attn.enable``.

The CPU target is "``enable(pipe)`` on the PyTorch path is at most 5% slower than stock diffusers
on CPU". What is timed: one forward pass (classifier-free-guidance batch of 2, fp32, 77 text
tokens) of a tiny ``UNet2DConditionModel`` built from ``unet_modes.TINY_UNET_CONFIG`` with random
weights, in three modes measured in the same run: ``stock``, ``enable``
(``entropy_attn.enable(unet)``, which takes the PyTorch path off CUDA) and ``enable-record-entropy``
(``entropy_attn.enable(unet, record_entropy=True)``). ``entropy_attn.disable(unet)`` restores
stock after each mode (checked). Latent sizes: 16 (the config's ``sample_size``, so ``N == T``)
and 32 (``N = 4 T`` at every level, where the scale differs from ``1/sqrt(d)``).

Excluded: building the model, input creation, warm-up calls. Times are ``time.perf_counter`` wall
times, median over rounds.

``test_tiny_generation_cpu`` times a whole generation (``pipe(prompt, ...)``, 4 guided steps,
256 px, ``output_type="pt"``) of ``entropy_attn.tiny.pipelines.tiny_sd_pipeline`` (trained size
128 px) in the same three modes: the code path of the CUDA 50-step generation benchmark, at a
size CI runs.
"""

from __future__ import annotations

import time

import pytest
import torch

from benchmarks.unet_modes import (
    TINY_UNET_CONFIG,
    UNET_MODES,
    record_mode,
    run_generation_mode,
    run_unet_mode,
    unet_inputs,
)

pytestmark = [pytest.mark.cpu_bench, pytest.mark.unet_bench]

diffusers = pytest.importorskip("diffusers", reason="the UNet benchmarks need diffusers")

DEVICE = "cpu"
DTYPE = torch.float32
LATENT_SIZES = (16, 32)


@pytest.fixture(scope="module")
def tiny_unet():
    """The tiny UNet, built once, random weights (seeded), fp32, eval mode."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel.from_config(TINY_UNET_CONFIG)
    return unet.to(dtype=DTYPE).eval().requires_grad_(False)


@pytest.mark.parametrize("mode", UNET_MODES)
@pytest.mark.parametrize("latent_size", LATENT_SIZES, ids=lambda n: f"latent{n}")
def test_tiny_unet_step_cpu(benchmark, tiny_unet, latent_size: int, mode: str, cpu_plan) -> None:
    """One step of the tiny UNet at a ``latent_size``² latent in ``mode``."""
    inputs = unet_inputs(TINY_UNET_CONFIG, latent_size, DTYPE, DEVICE)
    benchmark.group = f"{DEVICE} unet tiny latent{latent_size}"
    fields = run_unet_mode(
        benchmark, tiny_unet, inputs, mode, time.perf_counter, cpu_plan, cuda=False
    )
    record_mode(
        benchmark,
        fields,
        device=DEVICE,
        dtype=DTYPE,
        impl="unet",
        mode=mode,
        what="UNet2DConditionModel step",
        model="tiny",
        image_size=latent_size * 8,
        batch=inputs["sample"].shape[0],
        torch_num_threads=torch.get_num_threads(),
    )


GENERATION_SIZE = 256
GENERATION_STEPS_CPU = 4


@pytest.fixture(scope="module")
def tiny_pipe():
    from entropy_attn.tiny.pipelines import tiny_sd_pipeline

    return tiny_sd_pipeline()


@pytest.mark.parametrize("mode", UNET_MODES)
def test_tiny_generation_cpu(benchmark, tiny_pipe, mode: str, generation_plan) -> None:
    """One whole generation of the tiny SD pipeline at 256² in ``mode``."""
    benchmark.group = f"{DEVICE} generation tiny-sd {GENERATION_SIZE}px"
    fields = run_generation_mode(
        benchmark,
        tiny_pipe,
        GENERATION_SIZE,
        mode,
        time.perf_counter,
        generation_plan,
        cuda=False,
        steps=GENERATION_STEPS_CPU,
    )
    if mode == "enable-record-entropy":  # 4 steps, 2 self-attention layers a step
        assert fields["entropy_records"] >= GENERATION_STEPS_CPU * 2
    record_mode(
        benchmark,
        fields,
        device=DEVICE,
        dtype=DTYPE,
        impl="generation",
        mode=mode,
        what=f"StableDiffusionPipeline.__call__, {fields['steps']} steps",
        model="tiny-sd",
        image_size=GENERATION_SIZE,
        batch=2,
        torch_num_threads=torch.get_num_threads(),
    )
