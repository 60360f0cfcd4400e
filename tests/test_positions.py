"""Position presets (FLUX RoPE, SD3 cropped table, PixArt) against hand-written references."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FluxTransformer2DModel, PixArtTransformer2DModel, SD3Transformer2DModel
from diffusers.models.embeddings import get_1d_rotary_pos_embed

import entropy_attn
from entropy_attn.fixes import positions as P

# ---------------------------------------------------------------------------------------------
# The frequency math


@pytest.mark.parametrize("dim", [8, 12, 56])
@pytest.mark.parametrize("factor", [0.5, 1.0, 1.5, 2.0, 4.0])
def test_rope_frequencies_match_diffusers_linear_and_ntk_factors(dim, factor):
    pos = torch.arange(40, dtype=torch.float64)
    s = max(factor, 1.0)
    cases = {
        "stock": {},
        "interpolate": {"linear_factor": s},
        "ntk": {"ntk_factor": s ** (dim / (dim - 2))},
    }
    for preset, kwargs in cases.items():
        want_cos, want_sin = get_1d_rotary_pos_embed(
            dim, pos, theta=10000, use_real=True, freqs_dtype=torch.float64, **kwargs
        )
        freqs = P.rope_frequencies(dim, 10000, preset, factor, train_length=64)
        cos, sin = P._rotary(pos, freqs)
        err = max((cos - want_cos).abs().max().item(), (sin - want_sin).abs().max().item())
        assert err <= 1e-6, (preset, err)


@pytest.mark.parametrize("length", [64, 1024])  # FLUX.1's 64 tokens per axis; a long one
def test_yarn_frequencies_hand_written(length):
    dim, theta, s = 56, 10000.0, 2.0
    got = P.rope_frequencies(dim, theta, "yarn", s, train_length=length).tolist()
    for k, value in enumerate(got):
        base = theta ** (-2 * k / dim)
        turns = length / (2 * math.pi / base)
        if turns < 1:
            want = base / s
        elif turns > 32:
            want = base
        else:
            gamma = (turns - 1) / 31
            want = (1 - gamma) * base / s + gamma * base
        assert value == pytest.approx(want, rel=1e-12), k
    # At 1024 all three regimes occur; at FLUX.1's 64 no frequency turns 32 times (none kept)
    turns = [length * theta ** (-2 * k / dim) / (2 * math.pi) for k in range(dim // 2)]
    assert min(turns) < 1 < max(turns)
    assert (max(turns) > 32) == (length == 1024)
    assert P.yarn_mscale(2.0) == pytest.approx(0.1 * math.log(2.0) + 1)
    assert P.yarn_mscale(1.0) == P.yarn_mscale(0.5) == 1.0


def test_bad_preset_arguments():
    with pytest.raises(ValueError, match="preset"):
        P.rope_frequencies(8, 10000, "linear", 2.0, 4)
    with pytest.raises(ValueError, match="dim"):
        P.rope_frequencies(7, 10000, "ntk", 2.0, 4)


# ---------------------------------------------------------------------------------------------
# FLUX


def _flux():
    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=8,
        pooled_projection_dim=8,
        axes_dims_rope=(4, 6, 6),
    ).eval()


def _flux_ids(rows, cols):
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(cols)[None, :]
    return ids.reshape(-1, 3)


def _flux_call(model, rows, cols, img_ids=None):
    g = torch.Generator().manual_seed(1)
    tokens = rows * cols
    with torch.no_grad():
        return model(
            torch.randn(1, tokens, 4, generator=g),
            encoder_hidden_states=torch.randn(1, 3, 8, generator=g),
            pooled_projections=torch.randn(1, 8, generator=g),
            timestep=torch.tensor([0.5]),
            img_ids=_flux_ids(rows, cols) if img_ids is None else img_ids,
            txt_ids=torch.zeros(3, 3),
        ).sample


# Training latent 8x8 -> 4x4 tokens (FLUX packs 2x2).
FLUX_OPTIONS = {"train_size": 8, "vae_scale_factor": 1, "text_tokens": 3}


@pytest.mark.parametrize("preset", P.PRESETS)
@pytest.mark.parametrize("scale", [False, True])
def test_flux_presets_are_bit_identical_at_and_below_the_training_size(preset, scale):
    model = _flux()
    stock = {size: _flux_call(model, *size) for size in ((4, 4), (2, 4), (2, 2))}
    with entropy_attn.enabled(model, positions=preset, scale=scale, **FLUX_OPTIONS):
        for size, want in stock.items():
            if size == (4, 4) or not scale:
                assert torch.equal(_flux_call(model, *size), want), size


def test_flux_interpolate_equals_stock_on_interpolated_ids():
    model = _flux()
    for rows, cols in ((8, 8), (4, 8), (6, 12)):
        ids = _flux_ids(rows, cols)
        ids[:, 1] *= min(1.0, 4 / rows)
        ids[:, 2] *= min(1.0, 4 / cols)
        want = _flux_call(model, rows, cols, img_ids=ids)
        with entropy_attn.enabled(model, positions="interpolate", scale=False, **FLUX_OPTIONS):
            got = _flux_call(model, rows, cols)
        err = (got - want).abs().max().item()
        assert err <= 2e-5, ((rows, cols), err)
        assert (got - _flux_call(model, rows, cols)).abs().max() > 1e-3


def _reference_rope(ids, axes_dim, factors, train, preset, mscale=1.0):
    """Hand-written per-axis RoPE (FLUX layout) for a preset, factor and training length."""
    cos_parts, sin_parts = [], []
    for axis, dim in enumerate(axes_dim):
        s = factors.get(axis, 1.0)
        freqs = []
        for k in range(dim // 2):
            base = 10000.0 ** (-2 * k / dim)
            if s <= 1 or preset == "stock":
                freqs.append(base)
            elif preset == "ntk":
                freqs.append((10000.0 * s ** (dim / (dim - 2))) ** (-2 * k / dim))
            elif preset == "interpolate":
                freqs.append(base / s)
            else:
                turns = train * base / (2 * math.pi)
                gamma = min(1.0, max(0.0, (turns - 1) / 31))
                freqs.append((1 - gamma) * base / s + gamma * base)
        angles = ids[:, axis].double()[:, None] * torch.tensor(freqs, dtype=torch.float64)
        cos_parts.append(angles.cos().repeat_interleave(2, 1))
        sin_parts.append(angles.sin().repeat_interleave(2, 1))
    return torch.cat(cos_parts, 1) * mscale, torch.cat(sin_parts, 1) * mscale


@pytest.mark.parametrize("preset", ["interpolate", "ntk", "yarn"])
@pytest.mark.parametrize("size", [(8, 8), (4, 12), (6, 6)])
def test_flux_rope_output_matches_hand_written_reference(preset, size):
    model = _flux()
    ids = torch.cat([torch.zeros(3, 3), _flux_ids(*size)])
    factors = {1: size[0] / 4, 2: size[1] / 4}
    with entropy_attn.enabled(model, positions=preset, scale=False, **FLUX_OPTIONS):
        cos, sin = model.pos_embed(ids)
    mscale = P.yarn_mscale(max(factors.values())) if preset == "yarn" else 1.0
    want_cos, want_sin = _reference_rope(ids, (4, 6, 6), factors, 4, preset, mscale)
    err = max((cos - want_cos).abs().max().item(), (sin - want_sin).abs().max().item())
    assert err <= 1e-6, err
    if size[0] == 4:  # rows at the training length: the row axis keeps its stock frequencies
        stock_cos, _ = _reference_rope(ids, (4, 6, 6), {}, 4, "stock")
        assert torch.allclose(cos[:, 4:10] / mscale, stock_cos[:, 4:10].float(), atol=1e-6)


def test_yarn_temperature_is_replaced_by_the_scale_never_stacked():
    model = _flux()
    ids = torch.cat([torch.zeros(3, 3), _flux_ids(8, 8)])
    mscale = P.yarn_mscale(2.0)
    with entropy_attn.enabled(model, positions="yarn", scale=False, **FLUX_OPTIONS):
        warm = model.pos_embed(ids)
    with entropy_attn.enabled(model, positions="yarn", **FLUX_OPTIONS):
        cold = model.pos_embed(ids)
        # A nested call with the scale off takes the scale out (its processors replace the
        # outer ones), so YaRN's temperature is back inside it, and gone again after it.
        with entropy_attn.enabled(model, scale=False, **FLUX_OPTIONS):
            inner = model.pos_embed(ids)
        still_cold = model.pos_embed(ids)
    assert torch.allclose(warm[0], cold[0] * mscale, atol=1e-6)
    assert torch.allclose(warm[1], cold[1] * mscale, atol=1e-6)
    assert torch.equal(still_cold[0], cold[0]) and torch.equal(inner[0], warm[0])
    # The temperature multiplies every attention logit by mscale ** 2 (diffusers' own rotary).
    from diffusers.models.embeddings import apply_rotary_emb

    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 1, 2, ids.shape[0], 16, generator=g)
    logits = {}
    for name, (cos, sin) in (("warm", warm), ("cold", cold)):
        q_rot = apply_rotary_emb(q, (cos, sin), sequence_dim=2)
        k_rot = apply_rotary_emb(k, (cos, sin), sequence_dim=2)
        logits[name] = q_rot @ k_rot.transpose(-1, -2)
    assert torch.allclose(logits["warm"], logits["cold"] * mscale**2, rtol=1e-5, atol=1e-5)


def test_flux_lifecycle_keeps_user_hooks_and_nested_blocks():
    model = _flux()
    calls = []
    user = model.pos_embed.register_forward_hook(lambda m, a, o: calls.append(1))
    hooks_before = dict(model.pos_embed._forward_hooks)
    forward_before = model.pos_embed.forward
    ntk_alone = interp_alone = None
    with entropy_attn.enabled(model, positions="ntk", **FLUX_OPTIONS):
        ntk_alone = _flux_call(model, 8, 8)
    with entropy_attn.enabled(model, positions="interpolate", **FLUX_OPTIONS):
        interp_alone = _flux_call(model, 8, 8)
    stock = _flux_call(model, 8, 8)
    with entropy_attn.enabled(model, positions="ntk", **FLUX_OPTIONS):
        with entropy_attn.enabled(model, positions="interpolate", **FLUX_OPTIONS):
            assert torch.equal(_flux_call(model, 8, 8), interp_alone)
        assert torch.equal(_flux_call(model, 8, 8), ntk_alone), "the outer preset resumes"
        with entropy_attn.enabled(model, **FLUX_OPTIONS):  # defaults: positions carry on
            assert torch.equal(_flux_call(model, 8, 8), ntk_alone)
    assert torch.equal(_flux_call(model, 8, 8), stock)
    assert dict(model.pos_embed._forward_hooks) == hooks_before
    assert model.pos_embed.forward == forward_before
    assert calls, "the user's hook kept running"
    handle = entropy_attn.enable(model, positions="yarn", scale=False, **FLUX_OPTIONS)
    assert handle.active and handle.installed != {}
    entropy_attn.disable(model)
    assert dict(model.pos_embed._forward_hooks) == hooks_before
    user.remove()


# ---------------------------------------------------------------------------------------------
# SD3: the cropped table


def _sd3():
    torch.manual_seed(0)
    return SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=8,
        caption_projection_dim=16,
        pooled_projection_dim=8,
        out_channels=4,
        pos_embed_max_size=8,
    ).eval()


def _sd3_call(model, latent):
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        return model(
            torch.randn(1, 4, *latent, generator=g),
            encoder_hidden_states=torch.randn(1, 3, 8, generator=g),
            pooled_projections=torch.randn(1, 8, generator=g),
            timestep=torch.tensor([500.0]),
        ).sample


def _sd3_reference_table(model, patches, train=4):
    """Loops: centre crop per axis up to the training length, else the centre window of
    ``train`` rows sampled linearly at ``i * train / n``."""
    size = model.pos_embed.pos_embed_max_size
    table = model.pos_embed.pos_embed.reshape(size, size, -1).double()

    def axis_weights(n):
        if n <= train:
            start = (size - n) // 2
            return [[(start + i, 1.0)] for i in range(n)]
        start = (size - train) // 2
        rows = []
        for i in range(n):
            x = i * train / n
            lo = math.floor(x)
            hi = min(lo + 1, train - 1)
            rows.append([(start + lo, 1 - (x - lo)), (start + hi, x - lo)])
        return rows

    rows, cols = axis_weights(patches[0]), axis_weights(patches[1])
    out = torch.zeros(patches[0], patches[1], table.shape[-1], dtype=torch.float64)
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            for r, wr in row:
                for c, wc in col:
                    out[i, j] += wr * wc * table[r, c]
    return out.reshape(1, -1, table.shape[-1])


@pytest.mark.parametrize("latent", [(16, 16), (8, 16), (32, 24), (12, 12)])
def test_sd3_interpolate_matches_hand_written_table(latent):
    model = _sd3()
    patches = (latent[0] // 2, latent[1] // 2)
    with entropy_attn.enabled(model, positions="interpolate", train_size=64, text_tokens=3):
        got = model.pos_embed.cropped_pos_embed(*latent)
        out = _sd3_call(model, latent)  # runs past pos_embed_max_size too
    want = _sd3_reference_table(model, patches)
    err = (got.double() - want).abs().max().item()
    assert err <= 1e-6, err
    assert out.shape == (1, 4, *latent) and torch.isfinite(out).all()
    if max(patches) > 8:
        with pytest.raises(ValueError, match="pos_embed_max_size"):
            _sd3_call(model, latent)  # stock SD3 cannot


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_sd3_with_a_preset_copies_and_pickles(how):
    import copy
    import pickle

    model = _sd3()
    options = dict(positions="interpolate", train_size=64, scale=False, text_tokens=3)
    stock = _sd3_call(model, (16, 16))
    entropy_attn.enable(model, **options)
    want = _sd3_call(model, (16, 16))
    twin = copy.deepcopy(model) if how == "deepcopy" else pickle.loads(pickle.dumps(model))
    assert torch.equal(_sd3_call(twin, (16, 16)), want)
    entropy_attn.disable(twin)
    assert "cropped_pos_embed" not in twin.pos_embed.__dict__
    assert torch.equal(_sd3_call(model, (16, 16)), want)
    entropy_attn.disable(model)
    assert torch.equal(_sd3_call(model, (16, 16)), stock)


def test_sd3_identity_at_training_size_and_restore():
    model = _sd3()
    stock_train, stock_small = _sd3_call(model, (8, 8)), _sd3_call(model, (4, 8))
    with entropy_attn.enabled(model, positions="interpolate", train_size=64, text_tokens=3):
        assert "cropped_pos_embed" in model.pos_embed.__dict__
        assert torch.equal(_sd3_call(model, (8, 8)), stock_train)
    with entropy_attn.enabled(
        model, positions="interpolate", train_size=64, scale=False, text_tokens=3
    ):
        assert torch.equal(_sd3_call(model, (4, 8)), stock_small)
    assert "cropped_pos_embed" not in model.pos_embed.__dict__
    with pytest.raises(ValueError, match="positions='ntk'"):
        entropy_attn.enable(model, positions="ntk")
    assert entropy_attn.integration.handle.DenoiserState.of(model) is None, "nothing changed"


# ---------------------------------------------------------------------------------------------
# PixArt, UNets, bad input


def test_pixart_interpolate_is_its_stock_and_rope_presets_are_refused():
    torch.manual_seed(0)
    model = PixArtTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=1,
        out_channels=1,
        num_layers=1,
        cross_attention_dim=16,
        sample_size=8,
        patch_size=1,
        caption_channels=4,
        interpolation_scale=1,
    ).eval()

    def call():
        with torch.no_grad():
            return model(
                torch.randn(1, 1, 16, 8, generator=torch.Generator().manual_seed(0)),
                encoder_hidden_states=torch.ones(1, 1, 4),
                timestep=torch.tensor([10]),
                added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            ).sample

    stock = call()
    with entropy_attn.enabled(model, positions="interpolate", scale=False, vae_scale_factor=1):
        assert torch.equal(call(), stock)
    for preset in ("ntk", "yarn"):
        with pytest.raises(ValueError, match=f"positions='{preset}' does not apply"):
            entropy_attn.enable(model, positions=preset)
    with pytest.raises(ValueError, match="positions must be one of"):
        entropy_attn.enable(model, positions="extend")
    with pytest.raises(ValueError, match="redilate=True applies to UNets"):
        entropy_attn.enable(model, redilate=True)
    with pytest.raises(TypeError, match="scale must be a bool"):
        entropy_attn.enable(model, scale="yes")
    with pytest.raises(ValueError, match="layers='all' selects layers for the scale"):
        entropy_attn.enable(model, scale=False, layers="all")
