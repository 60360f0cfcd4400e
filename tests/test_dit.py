"""Diffusion transformers: PixArt (self + cross), SD3 (joint), FLUX (joint + single stream, RoPE).

Tiny denoisers are built from config dicts with random weights. The independent reference is the
*stock* diffusers processor with PyTorch SDPA patched to use the expected scale, so everything the
stock processor does (rotary embeddings, QK norms, output projections) is the library's own code.
"""

from __future__ import annotations

import helpers
import pytest
import torch
import torch.nn.functional as F
from helpers import FLUX_TEXT_TOKENS, assert_close, flux_inputs

import entropy_attn
from entropy_attn import configs
from entropy_attn.tiny import pipelines as tiny

diffusers = pytest.importorskip("diffusers")

TEXT = FLUX_TEXT_TOKENS  # text tokens in these tests


def tiny_sd3():
    return diffusers.SD3Transformer2DModel(**tiny.TINY_SD3_TRANSFORMER).eval()


def tiny_flux():
    # Two single-stream blocks, to check that every block of that kind is replaced.
    return helpers.tiny_flux(num_single_layers=2)


def tiny_pixart():
    # An 8x8 training latent: 16 image tokens, so the test runs fast.
    return diffusers.PixArtTransformer2DModel(
        **dict(tiny.TINY_PIXART_TRANSFORMER, sample_size=8)
    ).eval()


def sd3_inputs(latent_h, latent_w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(2, 16, latent_h, latent_w, generator=g),
        encoder_hidden_states=torch.randn(2, TEXT, 32, generator=g),
        pooled_projections=torch.randn(2, 64, generator=g),
        timestep=torch.tensor([500.0, 500.0]),
    )


def pixart_inputs(latent_h, latent_w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(2, 4, latent_h, latent_w, generator=g),
        encoder_hidden_states=torch.randn(2, TEXT, 32, generator=g),
        timestep=torch.tensor([500, 500]),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    )


# name, builder, inputs, enable options, training tokens of the rescaled layers (by construction)
CASES = [
    # SD3: latent 16x16 at its training size, patch 2 -> 64 image tokens, + 8 text tokens (joint).
    pytest.param(tiny_sd3, sd3_inputs, {"text_tokens": TEXT}, 64 + TEXT, id="sd3"),
    # FLUX: no sample_size in its config; declare 128 px -> latent 16 -> 8x8 packed tokens + text.
    pytest.param(
        tiny_flux, flux_inputs, {"text_tokens": TEXT, "train_size": 128}, 64 + TEXT, id="flux"
    ),
    # PixArt: latent 8x8, patch 2 -> 16 image tokens in self-attention; cross-attention keeps 77.
    pytest.param(tiny_pixart, pixart_inputs, {"text_tokens": TEXT}, 16, id="pixart"),
]


def run(model, inputs):
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def run_with_expected_scale(model, inputs, train_tokens, monkeypatch):
    """Stock processors; SDPA gets log_scale(N, T, d) for image-token keys, 1/sqrt(d) for text."""
    sdpa = F.scaled_dot_product_attention
    seen = []

    def scaled(query, key, value, *args, scale=None, **kwargs):
        n, d = key.shape[-2], key.shape[-1]
        assert scale is None  # the stock processors rely on the default
        scale = d**-0.5 if n == TEXT else entropy_attn.log_scale(n, train_tokens, d)
        seen.append(n)
        return sdpa(query, key, value, *args, scale=scale, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", scaled)
    out = run(model, inputs)
    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
    assert seen, "the stock processors did not call SDPA"
    return out


@pytest.mark.parametrize("build,inputs,options,train_tokens", CASES)
def test_training_size_matches_stock_and_disable_restores(build, inputs, options, train_tokens):
    model = build()
    before = dict(model.attn_processors)
    train = inputs(16, 16) if build is not tiny_pixart else inputs(8, 8)
    stock = run(model, train)
    handle = entropy_attn.enable(model, **options)
    assert set(handle.train_tokens[n] for n in handle.rescaled_layers) == {train_tokens}
    ours = run(model, train)
    entropy_attn.disable(model)
    assert torch.equal(ours, stock)
    assert all(model.attn_processors[k] is v for k, v in before.items())
    assert torch.equal(run(model, train), stock)


@pytest.mark.parametrize("build,inputs,options,train_tokens", CASES)
def test_other_size_matches_stock_math_with_expected_scale(
    build, inputs, options, train_tokens, monkeypatch
):
    model = build()
    other = inputs(12, 20)
    stock = run(model, other)
    expected = run_with_expected_scale(model, other, train_tokens, monkeypatch)
    with entropy_attn.enabled(model, **options):
        ours = run(model, other)
    assert_close(ours, expected, atol=2e-6, rtol=2e-6, what=f"{type(model).__name__} 12x20")
    assert (ours - stock).abs().max() > 1e-5


def test_joint_entropy_recording_counts_text_tokens():
    model = tiny_sd3()
    with entropy_attn.enabled(model, text_tokens=TEXT, record_entropy=True) as handle:
        run(model, sd3_inputs(12, 20))
        rows = handle.entropy_rows()
    assert len(rows) == 2
    for row in rows:
        assert row["kind"] == "joint"
        assert row["n_tokens"] == 6 * 10 + TEXT and row["train_tokens"] == 64 + TEXT
        assert row["scale"] == pytest.approx(entropy_attn.log_scale(68, 72, 8), rel=1e-12)
        assert 0 < row["entropy"] < torch.log(torch.tensor(68.0)).item()


def test_flux_default_training_size_is_1024px():
    with entropy_attn.enabled(tiny_flux(), text_tokens=TEXT) as handle:
        assert handle.train_latent_size == (128, 128)
        assert set(handle.train_tokens.values()) == {64 * 64 + TEXT}


# Real configurations, counted on the meta device.


def test_sd3_medium_tokens():
    model = configs.build_denoiser("sd3-medium", device="meta")
    rows = entropy_attn.layer_table(model, 512)
    assert len(rows) == 24 and {r.kind for r in rows} == {"joint"}
    # 1024 px -> latent 128 -> patch 2 -> 64x64 = 4096 image tokens, + 77 CLIP + 256 T5 tokens.
    assert {r.train_tokens for r in rows} == {4096 + 333}
    assert {r.n_tokens for r in rows} == {1024 + 333}  # 512 px: 32x32 patches
    assert {(r.heads, r.head_dim) for r in rows} == {(24, 64)}
    assert all(r.changed for r in rows)


def test_flux1_dev_tokens():
    model = configs.build_denoiser("flux1-dev", device="meta")
    rows = entropy_attn.layer_table(model, (768, 1024))
    assert len(rows) == 19 + 38
    # Double- and single-stream blocks both attend over text + image tokens: "joint" (measured by
    # the generic path's probe: the keys grow with the image and with the text).
    assert {r.kind for r in rows} == {"joint"}
    # 1024 px -> latent 128 -> 2x2 packing -> 4096 image tokens, + 512 T5 tokens.
    assert {r.train_tokens for r in rows} == {4096 + 512}
    assert {r.n_tokens for r in rows} == {48 * 64 + 512}
    assert {(r.heads, r.head_dim) for r in rows} == {(24, 128)}


@pytest.mark.parametrize(
    "name,train_tokens,size,n_tokens",
    [("pixart-alpha-512", 1024, 1024, 4096), ("pixart-alpha-1024", 4096, 512, 1024)],
)
def test_pixart_alpha_tokens(name, train_tokens, size, n_tokens):
    model = configs.build_denoiser(name, device="meta")
    rows = entropy_attn.layer_table(model, size)
    self_rows = [r for r in rows if r.kind == "self"]
    cross_rows = [r for r in rows if r.kind == "cross"]
    assert len(self_rows) == len(cross_rows) == 28
    assert {(r.train_tokens, r.n_tokens) for r in self_rows} == {(train_tokens, n_tokens)}
    assert {(r.heads, r.head_dim) for r in rows} == {(16, 72)}
    # T5 captions: 120 tokens for PixArt-alpha; cross-attention is never rescaled.
    assert {(r.n_tokens, r.changed) for r in cross_rows} == {(120, False)}


# Whole pipelines (tiny, offline): the pipeline passes text of max_sequence_length tokens.

SEQ = 16  # max_sequence_length passed to the pipelines
PIPELINE_CASES = [
    # SD3: 64 image tokens at 128 px + 77 CLIP + 16 T5 tokens, all joint.
    pytest.param("tiny_sd3_pipeline", {"text_tokens": 77 + SEQ}, 64 + 77 + SEQ, 77 + SEQ, id="sd3"),
    # FLUX: 64 packed image tokens + 16 T5 tokens; FluxPipeline's default size is 1024 px.
    pytest.param(
        "tiny_flux_pipeline", {"text_tokens": SEQ, "train_size": 128}, 64 + SEQ, SEQ, id="flux"
    ),
    # PixArt: 64 image tokens in self-attention; cross-attention over the 16 T5 tokens.
    pytest.param("tiny_pixart_pipeline", {}, 64, SEQ, id="pixart-alpha"),
    pytest.param("tiny_pixart_sigma_pipeline", {}, 64, SEQ, id="pixart-sigma"),
]


def generate(pipe, height, width):
    kwargs = dict(num_inference_steps=2, max_sequence_length=SEQ, output_type="pt")
    if type(pipe).__name__ in ("PixArtAlphaPipeline", "PixArtSigmaPipeline"):
        kwargs.update(clean_caption=False, use_resolution_binning=False)
    return pipe(
        "a red cat",
        height=height,
        width=width,
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    ).images


def generate_with_expected_scale(pipe, height, width, train_tokens, text_len, monkeypatch):
    """Stock processors; while the denoiser runs (not the text encoders), SDPA gets
    log_scale(N, T, d), or 1/sqrt(d) for cross-attention to the text tokens."""
    sdpa = F.scaled_dot_product_attention
    active = []

    def scaled(query, key, value, *args, scale=None, **kwargs):
        if active:
            n, d = key.shape[-2], key.shape[-1]
            assert scale is None
            scale = d**-0.5 if n == text_len else entropy_attn.log_scale(n, train_tokens, d)
        return sdpa(query, key, value, *args, scale=scale, **kwargs)

    hooks = [
        pipe.transformer.register_forward_pre_hook(lambda *a: active.append(1)),
        pipe.transformer.register_forward_hook(lambda *a: active.clear()),
    ]
    monkeypatch.setattr(F, "scaled_dot_product_attention", scaled)
    try:
        return generate(pipe, height, width)
    finally:
        monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize("builder,options,train_tokens,text_len", PIPELINE_CASES)
def test_dit_pipelines(builder, options, train_tokens, text_len, monkeypatch):
    pipe = getattr(tiny, builder)()
    stock_train = generate(pipe, 128, 128)
    stock_other = generate(pipe, 64, 96)
    with entropy_attn.enabled(pipe, **options) as handle:
        assert {handle.train_tokens[n] for n in handle.rescaled_layers} == {train_tokens}
        if "PixArt" in type(pipe).__name__:  # cross-attention T: the family's T5 length
            cross = {n for n in handle.train_tokens if n.endswith("attn2")}
            expected = 300 if "Sigma" in type(pipe).__name__ else 120
            assert {handle.train_tokens[n] for n in cross} == {expected}
        ours_train = generate(pipe, 128, 128)
        ours_other = generate(pipe, 64, 96)
    assert torch.equal(ours_train, stock_train)
    assert (ours_other - stock_other).abs().max() > 1e-4
    expected = generate_with_expected_scale(pipe, 64, 96, train_tokens, text_len, monkeypatch)
    assert_close(ours_other, expected, atol=1e-5, rtol=0, what=f"{builder} at 64x96")
    assert torch.equal(generate(pipe, 64, 96), stock_other)


def test_chosen_attention_backend_is_not_dropped():
    # Kept on entropy-attn's processors, which pass it the scale (tests/test_pipelines.py).
    model = tiny_flux()
    model.set_attention_backend("native")
    with entropy_attn.enabled(model, text_tokens=TEXT, train_size=128) as handle:
        assert len(handle.rescaled_layers) == 3
        assert {p._attention_backend for p in model.attn_processors.values()} == {"native"}
    model.reset_attention_backend()


# Issue 19 item 2 on the transformers whose fuse_qkv_projections() swaps processors: SD3
# (FusedJointAttnProcessor2_0) and PixArt (FusedAttnProcessor2_0).


@pytest.mark.parametrize(
    "build,inputs", [(tiny_sd3, sd3_inputs), (tiny_pixart, pixart_inputs)], ids=["sd3", "pixart"]
)
def test_r2_item2_fuse_qkv_projections_while_enabled_on_transformers(build, inputs):
    from entropy_attn.integration.attention_base import EntropyAttnBase

    model = build()
    before = dict(model.attn_processors)
    x = inputs(8, 12)

    def run():
        with torch.no_grad():
            return model(**x, return_dict=False)[0]

    stock = run()
    options = {"text_tokens": TEXT, "train_size": 128}
    with entropy_attn.enabled(model, **options):
        expected = run()
    handle = entropy_attn.enable(model, **options)
    model.fuse_qkv_projections()
    assert torch.equal(run(), expected) and handle.active  # same processors, same bits
    entropy_attn.disable(model)
    assert all("Fused" in type(p).__name__ for p in model.attn_processors.values())
    model.unfuse_qkv_projections()
    now = model.attn_processors
    assert not any(isinstance(p, EntropyAttnBase) for p in now.values())
    assert all(now[name] is p for name, p in before.items())
    assert torch.equal(run(), stock)
