"""Pipelines users combine: ControlNet, img2img, inpainting, LoRA, IP-Adapter, offloading, VAE
slicing/tiling, torch.compile, attention backends. Tiny pipelines with random weights, offline.

The tiny UNet (and a ControlNet, which mirrors its encoder) has self-attention at two levels: the
latent, h/8 x w/8 tokens, trained at 16x16 = 256 (128 px), and one stride-2 convolution down,
ceil(h/16) x ceil(w/16), trained at 8x8 = 64. The independent reference is the *stock* pipeline
with PyTorch SDPA patched, while the UNet or a ControlNet runs, to use ``log_scale(N, T, d)`` for
self-attention calls (T looked up from N by that fact); cross-attention keeps 1/sqrt(d).
"""

from __future__ import annotations

import contextlib
import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import entropy_attn

diffusers = pytest.importorskip("diffusers")
from diffusers.models.attention_processor import AttnProcessor2_0  # noqa: E402

from entropy_attn import tiny_pipelines  # noqa: E402

TRAIN = 128  # px: the tiny pipelines' training size
HEIGHT, WIDTH = 64, 96  # a non-square size (latent 8x12) against the 128x128 training size


def train_tokens_by_n(height: int, width: int) -> dict[int, int]:
    """Self-attention keys N -> T of the tiny UNet / ControlNet at (height, width) px."""
    return {
        (height // 8) * (width // 8): 16 * 16,
        math.ceil(height / 16) * math.ceil(width / 16): 8 * 8,
    }


@contextlib.contextmanager
def expected_scale(models, height, width, monkeypatch):
    """While any of ``models`` runs, SDPA self-attention calls use log_scale(N, T, d).

    Yields the list of (N, scale) it applied, to check that the patched models did run.
    """
    train = train_tokens_by_n(height, width)
    sdpa = F.scaled_dot_product_attention
    running, applied = [], []

    def scaled(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        n = key.shape[-2]
        if running and scale is None and query.shape[-2] == n and n in train:
            scale = entropy_attn.log_scale(n, train[n], query.shape[-1])
            applied.append((n, scale))
        return sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, **kw)

    def enter(*args):
        running.append(True)

    def leave(*args):
        running.pop()

    hooks = []
    for model in models:
        hooks.append(model.register_forward_pre_hook(enter))
        hooks.append(model.register_forward_hook(leave))
    monkeypatch.setattr(F, "scaled_dot_product_attention", scaled)
    try:
        yield applied
    finally:
        monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
        for hook in hooks:
            hook.remove()


def generate(pipe, height, width, **inputs):
    return pipe(
        "a red cat",
        height=height,
        width=width,
        num_inference_steps=1,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **inputs,
    ).images


def condition(height, width, seed=3):
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed))


def processors_of(models) -> list[dict]:
    return [dict(model.attn_processors) for model in models]


def assert_same_objects(before: list[dict], models) -> None:
    for saved, model in zip(before, models, strict=True):
        now = model.attn_processors
        assert now.keys() == saved.keys()
        assert all(now[name] is saved[name] for name in saved), type(model).__name__


def nets_of(pipe) -> list[torch.nn.Module]:
    net = pipe.controlnet
    return list(net.nets) if hasattr(net, "nets") else [net]


# ---------------------------------------------------------------------------------------------
# ControlNet

CONTROLNET_PIPELINES = [
    pytest.param(tiny_pipelines.tiny_sd_controlnet_pipeline, {}, id="sd"),
    pytest.param(tiny_pipelines.tiny_sdxl_controlnet_pipeline, {}, id="sdxl"),
    pytest.param(tiny_pipelines.tiny_sd_controlnet_pipeline, {"controlnets": 2}, id="multi"),
]


def controlnet_inputs(pipe, height, width):
    nets = nets_of(pipe)
    images = [condition(height, width, seed=3 + i) for i in range(len(nets))]
    return {"image": images if len(nets) > 1 else images[0]}


@pytest.mark.parametrize("build,options", CONTROLNET_PIPELINES)
def test_controlnet_is_rescaled_with_its_own_t(build, options, monkeypatch):
    pipe = build(**options)
    nets = nets_of(pipe)
    models = [pipe.unet, *nets]
    inputs = controlnet_inputs(pipe, HEIGHT, WIDTH)
    before = processors_of(models)
    stock = generate(pipe, HEIGHT, WIDTH, **inputs)
    handle = entropy_attn.enable(pipe)
    assert len(handle.controlnet_handles) == len(nets)
    for net, net_handle in zip(nets, handle.controlnet_handles, strict=True):
        assert net_handle.denoiser is net and net_handle.active
        # T counted on the ControlNet's own architecture: its levels' token counts at 128 px.
        self_layers = {n: t for n, t in net_handle.train_tokens.items() if n.endswith("attn1")}
        assert self_layers and set(self_layers.values()) <= {256, 64}
        assert sorted(net_handle.rescaled_layers) == sorted(self_layers)
    ours = generate(pipe, HEIGHT, WIDTH, **inputs)
    entropy_attn.disable(pipe)
    assert not any(h.active for h in (handle, *handle.controlnet_handles))
    assert_same_objects(before, models)
    with expected_scale(models, HEIGHT, WIDTH, monkeypatch) as applied:
        plain = generate(pipe, HEIGHT, WIDTH, **inputs)
    with expected_scale([pipe.unet], HEIGHT, WIDTH, monkeypatch):
        unet_only = generate(pipe, HEIGHT, WIDTH, **inputs)
    assert applied
    np.testing.assert_allclose(ours, plain, atol=2e-5, rtol=0)
    assert np.abs(ours - stock).max() > 1e-3, "entropy-attn changed nothing at 64x96"
    # The ControlNet's own rescaling is visible in the image.
    assert np.abs(plain - unet_only).max() > 1e-4


@pytest.mark.parametrize("build,options", CONTROLNET_PIPELINES)
def test_controlnet_training_size_is_stock_bit_for_bit(build, options):
    pipe = build(**options)
    models = [pipe.unet, *nets_of(pipe)]
    inputs = controlnet_inputs(pipe, TRAIN, TRAIN)
    before = processors_of(models)
    stock = generate(pipe, TRAIN, TRAIN, **inputs)
    with entropy_attn.enabled(pipe) as handle:
        assert all(h.active for h in handle.controlnet_handles)
        ours = generate(pipe, TRAIN, TRAIN, **inputs)
    np.testing.assert_array_equal(ours, stock)
    assert_same_objects(before, models)  # the context manager's handle.disable() undid both


def test_controlnet_opt_out_and_refusals(monkeypatch):
    pipe = tiny_pipelines.tiny_sd_controlnet_pipeline()
    net = pipe.controlnet
    net_before = dict(net.attn_processors)
    inputs = controlnet_inputs(pipe, HEIGHT, WIDTH)
    handle = entropy_attn.enable(pipe, controlnet=False)
    assert handle.controlnet_handles == ()
    assert all(net.attn_processors[k] is v for k, v in net_before.items())
    ours = generate(pipe, HEIGHT, WIDTH, **inputs)
    entropy_attn.disable(pipe)
    with expected_scale([pipe.unet], HEIGHT, WIDTH, monkeypatch):
        plain = generate(pipe, HEIGHT, WIDTH, **inputs)
    np.testing.assert_allclose(ours, plain, atol=2e-5, rtol=0)

    with pytest.raises(TypeError, match="controlnet must be a bool"):
        entropy_attn.enable(pipe, controlnet="no")

    # A ControlNet layer with a processor entropy-attn does not reproduce is refused before
    # anything changes, also while an earlier enable is in place.
    class IPAdapterLike(AttnProcessor2_0):
        pass

    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    special = IPAdapterLike()
    net.get_submodule(name).set_processor(special)
    processors = processors_of([pipe.unet, net])
    with pytest.raises(ValueError, match="IPAdapterLike"):
        entropy_attn.enable(pipe)
    assert_same_objects(processors, [pipe.unet, net])
    first = entropy_attn.enable(pipe, layers=lambda n, attn: n != name and n.endswith("attn1"))
    assert net.get_submodule(name).processor is special
    processors = processors_of([pipe.unet, net])
    with pytest.raises(ValueError, match="IPAdapterLike"):
        entropy_attn.enable(pipe)
    assert first.active and first.controlnet_handles[0].active
    assert_same_objects(processors, [pipe.unet, net])
    entropy_attn.disable(pipe)
    assert net.get_submodule(name).processor is special

    # A ControlNet class whose tokens entropy-attn cannot count is named, not skipped.
    other = types.SimpleNamespace(unet=pipe.unet, controlnet=torch.nn.Identity())
    with pytest.raises(ValueError, match="controlnet=False"):
        entropy_attn.enable(other)


# ---------------------------------------------------------------------------------------------
# Image-to-image and inpainting


def img2img_inputs(pipe, height, width):
    inputs = {"image": condition(height, width), "strength": 1.0}
    if isinstance(pipe, diffusers.StableDiffusionInpaintPipeline):
        mask = torch.zeros(1, 1, height, width)
        mask[..., height // 4 :, width // 3 :] = 1.0
        inputs["mask_image"] = mask
    return inputs


def generate_from_image(pipe, height, width):
    inputs = img2img_inputs(pipe, height, width)
    if isinstance(pipe, diffusers.StableDiffusionXLImg2ImgPipeline):
        # The SDXL img2img pipeline takes its size from the image.
        return pipe(
            "a red cat",
            num_inference_steps=1,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
            **inputs,
        ).images
    return generate(pipe, height, width, **inputs)


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(tiny_pipelines.tiny_sd_img2img_pipeline, id="sd-img2img"),
        pytest.param(tiny_pipelines.tiny_sd_inpaint_pipeline, id="sd-inpaint-9ch"),
        pytest.param(tiny_pipelines.tiny_sdxl_img2img_pipeline, id="sdxl-img2img"),
    ],
)
def test_image_to_image_and_inpainting(build, monkeypatch):
    pipe = build()
    before = processors_of([pipe.unet])
    stock_train = generate_from_image(pipe, TRAIN, TRAIN)
    stock = generate_from_image(pipe, HEIGHT, WIDTH)
    with entropy_attn.enabled(pipe) as handle:
        assert handle.train_latent_size == (16, 16)  # from the UNet config, as for text-to-image
        ours_train = generate_from_image(pipe, TRAIN, TRAIN)
        ours = generate_from_image(pipe, HEIGHT, WIDTH)
    assert_same_objects(before, [pipe.unet])
    with expected_scale([pipe.unet], HEIGHT, WIDTH, monkeypatch) as applied:
        plain = generate_from_image(pipe, HEIGHT, WIDTH)
    assert applied
    assert ours.shape == (1, HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(ours_train, stock_train)
    np.testing.assert_allclose(ours, plain, atol=2e-5, rtol=0)
    assert np.abs(ours - stock).max() > 1e-3
