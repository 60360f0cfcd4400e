"""End-to-end CUDA benchmark: one UNet step, stock diffusers vs ``entropy_attn.enable``.

What is timed: one forward pass of ``UNet2DConditionModel`` (one denoising step of a
classifier-free-guidance batch of 2, fp16, 77 text tokens) of SD-2.1-base and LDM-256 (the
architecture of CompVis ldm-text2im-large-256), built from the package's shipped configs with
random weights (speed does not depend on the weights), in three modes measured in the same run:

* ``stock``: diffusers' own attention processors (``AttnProcessor2_0``, i.e. PyTorch SDPA);
* ``enable``: after ``entropy_attn.enable(unet)`` (the fused Triton kernel with the
  entropy-preserving scale in self-attention);
* ``enable-record-entropy``: after ``entropy_attn.enable(unet, record_entropy=True)``.

``entropy_attn.disable(unet)`` restores stock after each mode (checked). Sizes: SD-2.1-base at
224², 512² (its training size), 768² (the speed target: enable <= 2% slower, entropy recording
<= 8% slower) and 1024²; LDM-256 at 128², 256² (its training size), 384² and 512².

Excluded: building the model, input creation, warm-up calls (Triton autotuning, cuDNN
convolution plans), the peak-memory call. Included: everything one ``unet(...)`` call does.
Times use a timer that synchronises the device; the median over rounds is reported. Peak memory
is ``torch.cuda.max_memory_allocated`` after a reset (weights included).

``test_generation`` times one whole 50-step generation (``pipe(prompt, height, width,
num_inference_steps=50, guidance_scale=7.5, output_type="pt")``: text encoding, 50 guided UNet
steps, scheduler, autoencoder decode) of the whole pipeline built by
``entropy_attn.configs.build_pipeline`` (every network of the real architecture, random weights,
fp16) in the same three modes: SD-2.1-base at 512² and 768², LDM-256 at 256² and 512². One
untimed generation warms up, one measures peak memory, three are timed (median reported).
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.timing import cuda_sync_timer
from benchmarks.unet_modes import (
    UNET_MODES,
    record_mode,
    run_generation_mode,
    run_unet_mode,
    unet_inputs,
)

pytestmark = [
    pytest.mark.gpu_bench,
    pytest.mark.unet_bench,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="CUDA UNet benchmarks need a CUDA GPU; the CPU UNet benchmark is -m cpu_bench",
    ),
    pytest.mark.benchmark(timer=cuda_sync_timer),
]

diffusers = pytest.importorskip("diffusers", reason="the UNet benchmarks need diffusers")

from entropy_attn.configs import build_pipeline, load_unet_config  # noqa: E402

DEVICE = "cuda"
DTYPE = torch.float16
UNET_SIZES = {
    "sd21-base": (224, 512, 768, 1024),
    "ldm-256": (128, 256, 384, 512),
}
CASES = [(model, size) for model, sizes in UNET_SIZES.items() for size in sizes]
GENERATION_SIZES = {"sd21-base": (512, 768), "ldm-256": (256, 512)}
GENERATION_CASES = [(model, size) for model, sizes in GENERATION_SIZES.items() for size in sizes]
_UNETS: dict[str, object] = {}
_PIPELINES: dict[str, object] = {}


def _unet(model: str):
    """The model built once per session from its shipped config, random weights, fp16 on CUDA."""
    if model not in _UNETS:
        config = load_unet_config(model)
        torch.manual_seed(0)
        with torch.device(DEVICE):
            unet = diffusers.UNet2DConditionModel.from_config(config)
        _UNETS[model] = unet.to(dtype=DTYPE).eval().requires_grad_(False)
    return _UNETS[model]


def _pipeline(model: str):
    """The whole pipeline built once per session (real architecture, random weights, fp16)."""
    if model not in _PIPELINES:
        _UNETS.clear()  # one model on the device at a time
        _PIPELINES.clear()
        torch.cuda.empty_cache()
        _PIPELINES[model] = build_pipeline(model, device=DEVICE, dtype=DTYPE)
    return _PIPELINES[model]


@pytest.fixture(scope="module", autouse=True)
def _free_models():
    yield
    _UNETS.clear()
    _PIPELINES.clear()
    torch.cuda.empty_cache()


@pytest.mark.parametrize("mode", UNET_MODES)
@pytest.mark.parametrize(("model", "image_size"), CASES, ids=[f"{m}-{s}px" for m, s in CASES])
def test_unet_step(benchmark, model: str, image_size: int, mode: str, unet_plan) -> None:
    """One UNet step of ``model`` at ``image_size``² in ``mode``."""
    unet = _unet(model)
    latent = image_size // 8
    inputs = unet_inputs(dict(unet.config), latent, DTYPE, DEVICE)
    benchmark.group = f"{DEVICE} unet {model} {image_size}px"
    fields = run_unet_mode(benchmark, unet, inputs, mode, cuda_sync_timer, unet_plan, cuda=True)
    record_mode(
        benchmark,
        fields,
        device=DEVICE,
        dtype=DTYPE,
        impl="unet",
        mode=mode,
        what="UNet2DConditionModel step",
        model=model,
        image_size=image_size,
        batch=inputs["sample"].shape[0],
    )


@pytest.mark.parametrize("mode", UNET_MODES)
@pytest.mark.parametrize(
    ("model", "image_size"), GENERATION_CASES, ids=[f"{m}-{s}px" for m, s in GENERATION_CASES]
)
def test_generation(benchmark, model: str, image_size: int, mode: str, generation_plan) -> None:
    """One whole 50-step generation of ``model`` at ``image_size``² in ``mode``."""
    pipe = _pipeline(model)
    benchmark.group = f"{DEVICE} generation {model} {image_size}px"
    fields = run_generation_mode(
        benchmark, pipe, image_size, mode, cuda_sync_timer, generation_plan, cuda=True
    )
    record_mode(
        benchmark,
        fields,
        device=DEVICE,
        dtype=DTYPE,
        impl="generation",
        mode=mode,
        what=f"{type(pipe).__name__}.__call__, {fields['steps']} steps",
        model=model,
        image_size=image_size,
        batch=2,
    )
