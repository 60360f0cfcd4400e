"""The shipped real architectures: layer structure and per-layer N and T at the paper's sizes.

Models are built on the ``meta`` device from the shipped configs (no weights, no download).
Expected token counts are computed by hand from the UNet's stride-2 downsampling with padding 1,
``ceil(h / 2)`` per level, and written out literally below.
"""

from __future__ import annotations

import math
import os
import re

import numpy as np
import pytest
import torch

import entropy_attn
from entropy_attn import configs

pytest.importorskip("diffusers")

# Self-attention N per UNet level (down_blocks.i -> level i, mid_block -> level 3,
# up_blocks.j -> level 3 - j), per image size (height, width) in pixels.
SD21_N = {
    (224, 224): (784, 196, 49, 16),  # latent 28 -> 14 -> 7 -> 4
    (448, 448): (3136, 784, 196, 49),  # 56 -> 28 -> 14 -> 7
    (512, 512): (4096, 1024, 256, 64),  # training size
    (768, 768): (9216, 2304, 576, 144),  # 96 -> 48 -> 24 -> 12
    (512, 288): (2304, 576, 144, 40),  # 64x36 -> 32x18 -> 16x9 -> 8x5
    (512, 384): (3072, 768, 192, 48),  # 64x48 -> 32x24 -> 16x12 -> 8x6
}
SD21_T = (4096, 1024, 256, 64)
LDM_N = {
    (128, 128): (256, 64, 16, 4),  # latent 16 -> 8 -> 4 -> 2
    (224, 224): (784, 196, 49, 16),  # 28 -> 14 -> 7 -> 4
    (256, 256): (1024, 256, 64, 16),  # training size
    (384, 384): (2304, 576, 144, 36),  # 48 -> 24 -> 12 -> 6
    (256, 144): (576, 144, 40, 12),  # 32x18 -> 16x9 -> 8x5 -> 4x3
    (256, 192): (768, 192, 48, 12),  # 32x24 -> 16x12 -> 8x6 -> 4x3
}
LDM_T = (1024, 256, 64, 16)


def level_of(name: str) -> int:
    if name.startswith("mid_block"):
        return 3
    block, index = re.match(r"(down|up)_blocks\.(\d+)", name).groups()
    return int(index) if block == "down" else 3 - int(index)


@pytest.fixture(scope="module")
def sd21():
    return configs.build_denoiser("sd21-base", device="meta")


@pytest.fixture(scope="module")
def ldm():
    return configs.build_denoiser("ldm-256", device="meta")


def check_table(unet, size, expected_n, expected_t, head_dims, train_px):
    rows = entropy_attn.layer_table(unet, size)
    self_rows = [r for r in rows if r.kind == "self"]
    cross_rows = [r for r in rows if r.kind == "cross"]
    # 3 levels x 2 (down) + 1 (mid) + 3 levels x 3 (up) transformer blocks, each attn1 + attn2.
    assert len(self_rows) == len(cross_rows) == 16
    for row in self_rows:
        level = level_of(row.name)
        assert row.name.endswith("attn1")
        assert (row.n_tokens, row.train_tokens) == (expected_n[level], expected_t[level]), row
        assert row.query_tokens == row.n_tokens
        assert row.head_dim == head_dims[level]
        assert row.scale == pytest.approx(
            math.sqrt(math.log(row.n_tokens, row.train_tokens) / row.head_dim), rel=1e-12
        )
        # Rounding can land a level on its training count (LDM at 224 px: the 4x4 mid block).
        assert row.changed == (row.n_tokens != row.train_tokens)
        if tuple(size) == (train_px, train_px):
            assert not row.changed and row.scale == row.head_dim**-0.5
    for row in cross_rows:
        assert row.name.endswith("attn2")
        assert row.n_tokens == row.train_tokens == 77
        assert row.scale == row.head_dim**-0.5 and not row.changed


@pytest.mark.parametrize("size", list(SD21_N))
def test_sd21_base_layer_table(sd21, size):
    check_table(sd21, size, SD21_N[size], SD21_T, (64, 64, 64, 64), 512)
    rows = entropy_attn.layer_table(sd21, size)
    heads = {level_of(r.name): r.heads for r in rows}
    assert heads == {0: 5, 1: 10, 2: 20, 3: 20}


@pytest.mark.parametrize("size", list(LDM_N))
def test_ldm_256_layer_table(ldm, size):
    check_table(ldm, size, LDM_N[size], LDM_T, (40, 80, 160, 160), 256)
    assert {r.heads for r in entropy_attn.layer_table(ldm, size)} == {8}


def test_ldm_256_structure(ldm):
    """The diffusers UNet written from the CompVis YAML has the LDM layer structure."""
    cfg = ldm.config
    assert (cfg.sample_size, cfg.in_channels, cfg.out_channels) == (32, 4, 4)
    assert tuple(cfg.block_out_channels) == (320, 640, 1280, 1280)  # 320 x channel_mult 1/2/4/4
    assert cfg.cross_attention_dim == 1280 and cfg.layers_per_block == 2
    # attention_resolutions 4/2/1: attention at the first three levels, none at the fourth.
    assert [hasattr(b, "attentions") for b in ldm.down_blocks] == [True, True, True, False]
    assert [len(b.resnets) for b in ldm.down_blocks] == [2, 2, 2, 2]
    assert len(ldm.mid_block.attentions) == 1
    attn = ldm.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    assert attn.to_k.in_features == 1280 and attn.heads == 8
    assert len(ldm.down_blocks[0].attentions[0].transformer_blocks) == 1  # transformer_depth 1
    assert entropy_attn.integration.training_latent_size(ldm) == (32, 32)


def test_ldm_256_vqvae_and_bert_configs():
    from diffusers import AutoencoderKL
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig

    vae_cfg = configs.load_config("ldm-256", "vqvae")
    vae = AutoencoderKL.from_config(vae_cfg).to("meta")
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 8
    assert vae.config.latent_channels == 4 and vae.config.scaling_factor == 0.18215
    bert = LDMBertConfig(
        **{k: v for k, v in configs.load_config("ldm-256", "bert").items() if not k.startswith("_")}
    )
    assert (bert.d_model, bert.encoder_layers, bert.encoder_attention_heads) == (1280, 32, 8)
    assert bert.max_position_embeddings == 77


def test_sd15_head_dims():
    unet = configs.build_denoiser("sd15", device="meta")
    rows = entropy_attn.layer_table(unet, 512)
    assert {level_of(r.name): r.head_dim for r in rows} == {0: 40, 1: 80, 2: 160, 3: 160}
    assert {r.heads for r in rows} == {8}
    assert all(r.n_tokens == r.train_tokens for r in rows)


def test_sdxl_attention_only_at_64_and_32():
    unet = configs.build_denoiser("sdxl-base", device="meta")
    rows = entropy_attn.layer_table(unet, (768, 768))
    self_rows = [r for r in rows if r.kind == "self"]
    # 1024 px -> latent 128; attention at 64x64 and 32x32 (and the 32x32 mid block) only.
    assert {r.train_tokens for r in self_rows} == {4096, 1024}
    assert {(r.train_tokens, r.n_tokens) for r in self_rows} == {(4096, 2304), (1024, 576)}
    assert {r.head_dim for r in rows} == {64}
    assert all(r.n_tokens == 77 for r in rows if r.kind == "cross")
    # transformer_layers_per_block 2 / 10: (2*2 + 3*2) at 64x64 and (2*10 + 3*10 + 10) at 32x32
    assert sum(r.train_tokens == 4096 for r in self_rows) == 10
    assert sum(r.train_tokens == 1024 for r in self_rows) == 60


def test_unknown_architecture_is_named():
    with pytest.raises(ValueError, match="unknown architecture 'sd9'"):
        configs.load_unet_config("sd9")


@pytest.mark.parametrize("name", configs.PIPELINES)
def test_build_pipeline_has_the_real_architecture(name: str) -> None:
    """Every network of the random-weight pipeline is built from the shipped configs."""
    pipe = configs.build_pipeline(name, device="meta")
    assert dict(pipe.unet.config) | configs.load_unet_config(name) == dict(pipe.unet.config)
    assert pipe.unet.device.type == "meta"
    scheduler = configs.load_config(name, "scheduler")
    assert type(pipe.scheduler).__name__ == scheduler["_class_name"]
    assert pipe.scheduler.config.beta_schedule == scheduler["beta_schedule"]
    if name == "ldm-256":
        bert = configs.load_config(name, "bert")
        assert type(pipe).__name__ == "LDMTextToImagePipeline"
        assert pipe.bert.config.d_model == bert["d_model"] == 1280
        assert len(pipe.bert.model.layers) == bert["encoder_layers"] == 32
        text_encoder, vocab = pipe.bert, bert["vocab_size"]
        assert (
            pipe.vqvae.config.block_out_channels
            == (configs.load_config(name, "vqvae")["block_out_channels"])
        )
    else:
        text = configs.load_config(name, "text_encoder")
        assert type(pipe).__name__ == "StableDiffusionPipeline"
        assert pipe.text_encoder.config.hidden_size == text["hidden_size"]
        assert pipe.text_encoder.config.num_hidden_layers == text["num_hidden_layers"]
        assert pipe.unet.config.cross_attention_dim == text["hidden_size"]
        text_encoder, vocab = pipe.text_encoder, text["vocab_size"]
        assert (
            list(pipe.vae.config.block_out_channels)
            == (configs.load_config(name, "vae")["block_out_channels"])
        )
    assert all(not p.requires_grad for p in text_encoder.parameters())
    # The stand-in tokenizer pads to the real 77 tokens, with ids the real embedding table has.
    ids = pipe.tokenizer("a red bicycle", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and max(ids) < vocab


def test_build_pipeline_names_the_bad_argument() -> None:
    with pytest.raises(ValueError, match="name must be one of"):
        configs.build_pipeline("sdxl-base", device="meta")


@pytest.mark.skipif(
    os.environ.get("ENTROPY_ATTN_SLOW") != "1", reason="slow (real pipelines on CPU)"
)
@pytest.mark.parametrize("name", ["sd21-base", "ldm-256"])
def test_build_pipeline_generates_and_enable_changes_it(name: str) -> None:
    """A whole real-architecture generation on CPU (64 px, 2 steps), stock and enabled."""
    pipe = configs.build_pipeline(name)

    def generate():
        generator = torch.Generator().manual_seed(0)
        return pipe(
            "a red bicycle",
            height=64,
            width=64,
            num_inference_steps=2,
            guidance_scale=7.5,
            generator=generator,
            output_type="np",
        ).images

    stock = generate()
    assert stock.shape == (1, 64, 64, 3) and np.isfinite(stock).all()
    with entropy_attn.enabled(pipe):
        changed = generate()
    assert np.isfinite(changed).all() and np.abs(changed - stock).max() > 1e-3
    assert np.array_equal(generate(), stock)
