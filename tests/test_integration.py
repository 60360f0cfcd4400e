"""enable(pipe) on tiny SD and LDM pipelines built offline (random weights, real classes).

The tiny UNet has two levels: a 16x16 latent at its 128 px training size (T = 256 tokens) and
8x8 below (T = 64). Expected scales here come from that fact and ``log_scale``, independently of
the package's token probe.
"""

from __future__ import annotations

import math
import re
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICE, assert_close

import entropy_attn
from entropy_attn.op.reference import attention_entropy
from entropy_attn.tiny.pipelines import tiny_ldm_pipeline, tiny_sd_pipeline, tiny_sdxl_pipeline

pytest.importorskip("diffusers")
from diffusers.models.attention_processor import AttnProcessor2_0  # noqa: E402

PIPELINES = [
    pytest.param(tiny_sd_pipeline, id="sd"),
    pytest.param(tiny_ldm_pipeline, id="ldm"),
    pytest.param(tiny_sdxl_pipeline, id="sdxl"),  # attention only at the 8x8 level
]
TRAIN_TOKENS_BY_LEVEL = {0: 16 * 16, 1: 8 * 8}


def level_of(name: str) -> int:
    """UNet level of a layer of the 2-level tiny UNet, from its place in the module tree."""
    if name.startswith("mid_block"):
        return 1
    block, index = re.match(r"(down|up)_blocks\.(\d+)", name).groups()
    return int(index) if block == "down" else 1 - int(index)


class StraightforwardProcessor(AttnProcessor2_0):
    """The method written the plain way: stock math, SDPA with log_scale for self-attention."""

    def __init__(self, name, entropies=None):
        super().__init__()
        self.name, self.entropies = name, entropies

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
        self_attention = encoder_hidden_states is None
        context = hidden_states if self_attention else encoder_hidden_states
        batch = hidden_states.shape[0]
        heads = attn.heads
        q = attn.to_q(hidden_states)
        k, v = attn.to_k(context), attn.to_v(context)
        d = q.shape[-1] // heads
        q, k, v = (t.view(batch, -1, heads, d).transpose(1, 2) for t in (q, k, v))
        n = k.shape[2]
        t = TRAIN_TOKENS_BY_LEVEL[level_of(self.name)] if self_attention else 77
        scale = entropy_attn.log_scale(n, t, d)
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        if self.entropies is not None:
            self.entropies.append((self.name, n, t, attention_entropy(q, k, scale).mean().item()))
        out = out.transpose(1, 2).reshape(batch, -1, heads * d)
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


def install_straightforward(unet, entropies=None):
    unet.set_attn_processor(
        {
            f"{name}.processor": StraightforwardProcessor(name, entropies)
            for name in (k.removesuffix(".processor") for k in unet.attn_processors)
        }
    )


def generate(pipe, height, width, steps=2, seed=0, **kwargs):
    return pipe(
        "a red cat",
        height=height,
        width=width,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        **kwargs,
    ).images


@pytest.mark.parametrize("build", PIPELINES)
def test_other_size_matches_straightforward_and_differs_from_stock(build):
    pipe = build()
    stock = generate(pipe, 64, 96)
    handle = entropy_attn.enable(pipe)
    ours = generate(pipe, 64, 96)
    entropy_attn.disable(pipe)
    install_straightforward(pipe.unet)
    plain = generate(pipe, 64, 96)
    np.testing.assert_allclose(ours, plain, atol=2e-5, rtol=0)
    assert np.abs(ours - stock).max() > 1e-3, "entropy-attn changed nothing at 64x96"
    self_layers = [n for n, p in pipe.unet.attn_processors.items() if n.endswith("attn1.processor")]
    assert len(handle.rescaled_layers) == len(self_layers) > 0


@pytest.mark.parametrize("build", PIPELINES)
def test_training_size_matches_stock_and_disable_restores(build):
    pipe = build()
    before = dict(pipe.unet.attn_processors)
    stock = generate(pipe, 128, 128)
    with entropy_attn.enabled(pipe):
        ours = generate(pipe, 128, 128)
    # At N == T the scale is exactly 1/sqrt(d): stock numbers, bit for bit on the PyTorch path.
    np.testing.assert_array_equal(ours, stock)
    after = pipe.unet.attn_processors
    assert all(after[name] is before[name] for name in before)
    np.testing.assert_array_equal(generate(pipe, 64, 96), generate(build(), 64, 96))


def test_enable_twice_and_disable_never_enabled_are_harmless():
    pipe = tiny_sd_pipeline()
    entropy_attn.disable(pipe)
    before = dict(pipe.unet.attn_processors)
    entropy_attn.enable(pipe)
    handle = entropy_attn.enable(pipe, layers="all")
    assert handle.active
    entropy_attn.disable(pipe)
    entropy_attn.disable(pipe)
    assert all(pipe.unet.attn_processors[k] is v for k, v in before.items())
    assert not handle.active


def test_bare_unet_and_layer_predicate():
    pipe = tiny_sd_pipeline()
    handle = entropy_attn.enable(pipe.unet, layers=lambda name, attn: name.startswith("down"))
    processors = {k.removesuffix(".processor"): p for k, p in pipe.unet.attn_processors.items()}
    assert all(isinstance(p, entropy_attn.EntropyAttnProcessor) for p in processors.values())
    assert sorted(handle.rescaled_layers) == sorted(n for n in processors if n.startswith("down"))
    assert all(p.rescale == n.startswith("down") for n, p in processors.items())
    entropy_attn.disable(pipe)  # the pipeline finds the same UNet's handle
    assert not handle.active


def test_train_size_override_changes_t():
    pipe = tiny_sd_pipeline()
    # Declaring 64 px as the training size: T = 8*8 and 4*4, so at 64 px nothing changes.
    handle = entropy_attn.enable(pipe, train_size=64)
    assert handle.train_latent_size == (8, 8)
    assert handle.train_tokens["down_blocks.0.attentions.0.transformer_blocks.0.attn1"] == 64
    assert handle.train_tokens["mid_block.attentions.0.transformer_blocks.0.attn1"] == 16
    ours = generate(pipe, 64, 64)
    entropy_attn.disable(pipe)
    np.testing.assert_array_equal(ours, generate(pipe, 64, 64))


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        ({"layers": "cross"}, ValueError, "layers must be"),
        ({"train_size": (100, 128)}, ValueError, "multiple of the VAE scale factor 8"),
        ({"train_size": (128,)}, ValueError, "train_size must be"),
        ({"record_entropy": 1}, TypeError, "record_entropy"),
        ({"backend": "cuda"}, ValueError, "backend"),
        ({"vae_scale_factor": 0}, ValueError, "vae_scale_factor"),
    ],
)
def test_bad_options(kwargs, exc, pattern):
    pipe = tiny_sd_pipeline()
    with pytest.raises(exc, match=pattern):
        entropy_attn.enable(pipe, **kwargs)
    assert not any(
        isinstance(p, entropy_attn.EntropyAttnProcessor) for p in pipe.unet.attn_processors.values()
    )


def test_not_a_pipeline():
    with pytest.raises(TypeError, match="pipe must be"):
        entropy_attn.enable(object())
    with pytest.raises(TypeError, match="pipe must be"):
        entropy_attn.enable(torch.nn.Linear(2, 2))


def test_special_processor_is_never_dropped():
    class IPAdapterLike(AttnProcessor2_0):
        pass

    pipe = tiny_sd_pipeline()
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    special = IPAdapterLike()
    pipe.unet.get_submodule(name).set_processor(special)
    with pytest.raises(ValueError, match="IPAdapterLike"):
        entropy_attn.enable(pipe)
    handle = entropy_attn.enable(
        pipe, layers=lambda n, attn: n != name and not attn.is_cross_attention
    )
    assert pipe.unet.get_submodule(name).processor is special
    assert name not in handle.original_processors
    entropy_attn.disable(pipe)
    assert pipe.unet.get_submodule(name).processor is special


def unet_inputs(pipe, height, width, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, height // 8, width // 8, generator=g)
    context = torch.randn(batch, 77, pipe.unet.config.cross_attention_dim, generator=g)
    return latents, torch.tensor(500), context


def test_attention_mask_is_applied_not_dropped():
    pipe = tiny_sd_pipeline()
    latents, t, context = unet_inputs(pipe, 128, 128)
    mask = torch.ones(2, 77, dtype=torch.bool)
    mask[:, 20:] = False
    with torch.no_grad():
        stock_masked = pipe.unet(latents, t, context, encoder_attention_mask=mask).sample
        stock_plain = pipe.unet(latents, t, context).sample
        with entropy_attn.enabled(pipe, layers="all"):
            ours_masked = pipe.unet(latents, t, context, encoder_attention_mask=mask).sample
    assert (stock_masked - stock_plain).abs().max() > 1e-4  # the mask matters here
    assert_close(ours_masked, stock_masked, atol=1e-6, rtol=0, what="masked cross-attention")


def test_entropy_recording_matches_oracle_and_is_bounded():
    pipe = tiny_sd_pipeline()
    latents, t, context = unet_inputs(pipe, 64, 96)
    handle = entropy_attn.enable(pipe, record_entropy=True)
    calls = 3
    with torch.no_grad():
        for _ in range(calls):
            pipe.unet(latents, t, context)
    layers = len(pipe.unet.attn_processors)
    # Memory bound: one 0-d tensor per (step, layer call), nothing larger kept.
    assert len(handle.recorder) == calls * layers
    assert all(value.numel() == 1 for value in handle.recorder.scalars())
    rows = handle.entropy_rows()
    assert [r["step"] for r in rows] == [s for s in range(calls) for _ in range(layers)]
    entropy_attn.disable(pipe)

    expected = []
    install_straightforward(pipe.unet, expected)
    with torch.no_grad():
        pipe.unet(latents, t, context)
    assert len(expected) == layers
    for row, (name, n, t_tokens, entropy) in zip(rows[:layers], expected, strict=True):
        assert row["layer"] == name and row["n_tokens"] == n and row["train_tokens"] == t_tokens
        assert row["kind"] == ("cross" if n == 77 else "self")
        d = row["head_dim"]
        assert row["scale"] == pytest.approx(entropy_attn.log_scale(n, t_tokens, d), rel=1e-12)
        assert row["entropy"] == pytest.approx(entropy, abs=2e-5)
    handle.reset_entropy()
    assert handle.entropy_rows() == []


def test_entropy_rows_need_recording():
    pipe = tiny_sd_pipeline()
    with entropy_attn.enabled(pipe) as handle, pytest.raises(RuntimeError, match="record_entropy"):
        handle.entropy_rows()


def test_classifier_free_guidance_and_several_images_per_prompt():
    pipe = tiny_sd_pipeline()
    with entropy_attn.enabled(pipe):
        images = generate(pipe, 64, 64, num_images_per_prompt=3, guidance_scale=7.5)
    install_straightforward(pipe.unet)
    plain = generate(pipe, 64, 64, num_images_per_prompt=3, guidance_scale=7.5)
    assert images.shape == (3, 64, 64, 3)
    np.testing.assert_allclose(images, plain, atol=2e-5, rtol=0)


@pytest.mark.parametrize(
    "dtype,tol", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)], ids=["bf16", "fp16"]
)
def test_dtype_change_after_enable(dtype, tol):
    pipe = tiny_sd_pipeline()
    latents, t, context = unet_inputs(pipe, 64, 96)
    entropy_attn.enable(pipe)
    pipe.unet.to(dtype)
    with torch.no_grad():
        ours = pipe.unet(latents.to(dtype), t, context.to(dtype)).sample
    entropy_attn.disable(pipe)
    install_straightforward(pipe.unet)
    with torch.no_grad():
        plain = pipe.unet(latents.to(dtype), t, context.to(dtype)).sample
    assert ours.dtype == dtype
    assert_close(ours, plain, atol=tol, rtol=tol, what=f"{dtype} UNet")


def test_torch_compile_of_the_unet():
    pipe = tiny_sd_pipeline()
    latents, t, context = unet_inputs(pipe, 64, 96)
    entropy_attn.enable(pipe)
    with torch.no_grad():
        eager = pipe.unet(latents, t, context).sample
        torch._dynamo.reset()
        compiled = torch.compile(pipe.unet, backend="aot_eager")
        out = compiled(latents, t, context).sample
    assert_close(out, eager, atol=1e-5, rtol=1e-5, what="compiled UNet")
    # enable/disable accept the compiled wrapper and act on the module inside it.
    entropy_attn.disable(compiled)
    assert not any(
        isinstance(p, entropy_attn.EntropyAttnProcessor) for p in pipe.unet.attn_processors.values()
    )


@pytest.mark.interpreter
def test_pipeline_runs_real_triton_kernel():
    """One UNet pass through the fused kernel itself (on CUDA, or TRITON_INTERPRET=1 on CPU)."""
    pipe = tiny_sd_pipeline().to(DEVICE)
    latents, t, context = (x.to(DEVICE) for x in unet_inputs(pipe, 64, 96, batch=1))
    calls = []
    from entropy_attn.op import api as ops

    original = ops._attention_fwd

    def spy(*args):
        calls.append(args[0].shape)
        return original(*args)

    ops._attention_fwd = spy
    try:
        with torch.no_grad():
            with entropy_attn.enabled(pipe, backend="triton", record_entropy=True) as handle:
                kernel = pipe.unet(latents, t, context).sample
                kernel_rows = handle.entropy_rows()
            with entropy_attn.enabled(pipe, backend="torch", record_entropy=True) as handle:
                torch_path = pipe.unet(latents, t, context).sample
                torch_rows = handle.entropy_rows()
    finally:
        ops._attention_fwd = original
    assert len(calls) == len(pipe.unet.attn_processors)
    assert_close(kernel, torch_path, atol=5e-5, rtol=1e-4, what="UNet via Triton")
    for a, b in zip(kernel_rows, torch_rows, strict=True):
        assert a["layer"] == b["layer"] and a["entropy"] == pytest.approx(b["entropy"], abs=5e-5)
    assert math.isfinite(kernel.abs().max().item())


def with_ip_adapter_plus_projection(pipe):
    """Attach an IP-Adapter Plus image projection: attention modules outside the forward."""
    from diffusers.models.embeddings import (
        IPAdapterPlusImageProjection,
        MultiIPAdapterImageProjection,
    )

    unet = pipe.unet
    unet.encoder_hid_proj = MultiIPAdapterImageProjection(
        [
            IPAdapterPlusImageProjection(
                embed_dims=32,
                output_dims=unet.config.cross_attention_dim,
                hidden_dims=32,
                depth=1,
                dim_head=8,
                heads=4,
                num_queries=4,
            )
        ]
    )
    return [n for n in unet.attn_processors if n.startswith("encoder_hid_proj")]


def test_layers_outside_the_forward_are_left_alone():
    pipe = tiny_sd_pipeline()
    outside = with_ip_adapter_plus_projection(pipe)
    assert outside
    before = dict(pipe.unet.attn_processors)
    with pytest.warns(UserWarning, match="do not run in the denoiser's forward"):
        handle = entropy_attn.enable(pipe)
    after = pipe.unet.attn_processors
    assert all(after[name] is before[name] for name in outside)
    assert len(handle.rescaled_layers) == 7
    assert not any(
        r.name.startswith("encoder_hid_proj") for r in entropy_attn.layer_table(pipe, 64)
    )
    entropy_attn.disable(pipe)
    # An explicit selection of such a layer is refused: it has no training token count.
    with pytest.raises(ValueError, match="does not run in the denoiser's forward"):
        entropy_attn.enable(pipe, layers=lambda name, attn: True)


def test_failed_enable_leaves_the_previous_one_in_place():
    pipe = tiny_sd_pipeline()
    first = entropy_attn.enable(pipe)
    processors = dict(pipe.unet.attn_processors)
    with pytest.raises(ValueError, match="layers must be"):
        entropy_attn.enable(pipe, layers="bogus")
    assert first.active
    assert all(pipe.unet.attn_processors[k] is v for k, v in processors.items())
    entropy_attn.disable(pipe)


def test_single_token_training_size_is_refused_at_enable():
    pipe = tiny_sd_pipeline()
    # 16 px -> latent 2x2 -> the 8x8 level of the tiny UNet sees 1x1 = 1 token: no ln T.
    with pytest.raises(ValueError, match="T must be > 1"):
        entropy_attn.enable(pipe, train_size=16)
    assert not any(
        isinstance(p, entropy_attn.EntropyAttnProcessor) for p in pipe.unet.attn_processors.values()
    )


def test_tensor_parallelism_is_refused():
    """Context parallelism is supported (tests/test_parallel.py); tensor parallelism is not."""
    pipe = tiny_sd_pipeline()
    pipe.unet._parallel_config = types.SimpleNamespace(
        tensor_parallel_config=object(), context_parallel_config=None
    )
    with pytest.raises(ValueError, match="tensor parallelism"):
        entropy_attn.enable(pipe)


def test_autocast_gives_one_dtype_like_sdpa():
    pipe = tiny_sd_pipeline()
    latents, t, context = unet_inputs(pipe, 64, 96)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        stock = pipe.unet(latents, t, context).sample
        with entropy_attn.enabled(pipe, train_size=(64, 96)):  # N == T: stock scale everywhere
            ours = pipe.unet(latents, t, context).sample
    assert ours.dtype == stock.dtype
    assert torch.equal(ours, stock)


# ---------------------------------------------------------------------------------------------
# Issue 19 item 8: refusals name the unsupported feature, never the size


class _MyUNet(__import__("diffusers").UNet2DConditionModel):
    """A user's subclass: the token probe knows the classes it builds inputs for by name."""


@pytest.mark.parametrize(
    "build,feature",
    [
        (lambda: _MyUNet(**_tiny_unet_config()), "_MyUNet"),
        (
            lambda: __import__("diffusers").UNet2DConditionModel(
                **_tiny_unet_config(), addition_embed_type="text"
            ),
            "addition_embed_type 'text'",
        ),
        (
            lambda: __import__("diffusers").UNet2DConditionModel(
                **_tiny_unet_config(), class_embed_type="timestep"
            ),
            "class_embed_type 'timestep'",
        ),
    ],
    ids=["subclass", "addition_embed_type", "class_embed_type"],
)
def test_r2_item8_probe_refusals_name_the_feature_not_the_size(build, feature):
    from entropy_attn.integration import probe

    unet = build()
    before = {name: m.processor for name, m in probe.attention_modules(unet).items()}
    for call in (
        lambda: entropy_attn.enable(unet),
        lambda: entropy_attn.layer_table(unet, 128),
        lambda: probe.probe_tokens(unet, (16, 16)),
    ):
        with pytest.raises(NotImplementedError) as caught:
            call()
        message = str(caught.value)
        assert feature in message, message
        assert "choose a size" not in message and "cannot run through" not in message, message
    after = {name: m.processor for name, m in probe.attention_modules(unet).items()}
    assert all(after[name] is p for name, p in before.items())


def _tiny_unet_config() -> dict:
    from entropy_attn.tiny import pipelines as tiny

    return dict(tiny._TINY_UNET)
