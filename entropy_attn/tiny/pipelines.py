"""Small pipelines with random weights, built offline: for the demo, tests and examples.

They have the real pipeline classes and the real component types (UNet2DConditionModel,
AutoencoderKL with 8x downsampling, CLIP text encoder or LDMBert, real tokenizers) at toy widths,
so everything entropy-attn does to SD or LDM runs on them in seconds on a CPU. Their images are
noise-like: the weights are random. The tokenizers are built from small vocab files written here
(a byte-level BPE vocab without merges for CLIP; letters plus a few words for BERT).

One file because the tiny pipelines share their component builders (one UNet, VAE, text-encoder
and tokenizer recipe each); each pipeline function is a few lines over them.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from .._extras import needs
from .._quiet import quiet_library_logs

TEXT_TOKENS = 77
_TINY_UNET = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(2, 4),
    norm_num_groups=8,
    cross_attention_dim=32,
)
_TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(16, 16, 32, 32),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=1,
    norm_num_groups=8,
    sample_size=128,
)
# Tiny diffusion transformers (also used directly by the tests). SD3: 16x16 latent at 128 px,
# patch 2. FLUX: 16 = 4 latent channels x 2x2 packing; rotary axes sum to the head dim.
TINY_SD3_TRANSFORMER = dict(
    sample_size=16,
    patch_size=2,
    in_channels=16,
    num_layers=2,
    attention_head_dim=8,
    num_attention_heads=4,
    caption_projection_dim=32,
    joint_attention_dim=32,
    pooled_projection_dim=64,
    out_channels=16,
    pos_embed_max_size=32,
)
TINY_FLUX_TRANSFORMER = dict(
    patch_size=1,
    in_channels=16,
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    axes_dims_rope=[4, 4, 8],
)
TINY_PIXART_TRANSFORMER = dict(
    sample_size=16,
    num_layers=2,
    patch_size=2,
    attention_head_dim=8,
    num_attention_heads=3,
    caption_channels=32,
    in_channels=4,
    cross_attention_dim=24,
    out_channels=8,
    attention_bias=True,
    activation_fn="gelu-approximate",
    num_embeds_ada_norm=1000,
    norm_type="ada_norm_single",
    norm_elementwise_affine=False,
    norm_eps=1e-6,
)
_WORDS = ["a", "an", "the", "photo", "of", "cat", "dog", "red", "blue", "car", "tree", "house"]


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character map (as in OpenAI's CLIP tokenizer)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


@needs("diffusers", "transformers")
def tiny_clip_tokenizer():
    """A CLIPTokenizer over single bytes (no merges): 2 * 256 byte tokens + start/end."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "vocab.json").write_text(json.dumps(vocab))
        (Path(folder) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(
            str(Path(folder) / "vocab.json"),
            str(Path(folder) / "merges.txt"),
            model_max_length=TEXT_TOKENS,
        )


@needs("diffusers", "transformers")
def tiny_bert_tokenizer():
    """A BertTokenizer over letters, digits and a few words."""
    from transformers import BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = list("abcdefghijklmnopqrstuvwxyz0123456789") + [
        f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"
    ]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "vocab.txt"
        path.write_text("\n".join(specials + pieces + _WORDS) + "\n")
        return BertTokenizer(str(path), model_max_length=TEXT_TOKENS)


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


@quiet_library_logs()
@needs("diffusers", "transformers")
def tiny_sd_pipeline(seed: int = 0):
    """A ``StableDiffusionPipeline`` at toy width: latent 16x16 at its 128 px training size.

    UNet: two levels with self- and cross-attention (heads 2 and 4, head dim 16), so the
    training token counts are T = 256 and 64. Random weights, seeded.
    """
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = tiny_clip_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**_TINY_UNET)
        vae = AutoencoderKL(**_TINY_VAE)
        text_encoder = CLIPTextModel(_tiny_clip_config(tokenizer))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@quiet_library_logs()
@needs("diffusers", "transformers")
def tiny_ldm_pipeline(seed: int = 0):
    """An ``LDMTextToImagePipeline`` at toy width: LDMBert text encoder, latent 16x16 at 128 px."""
    from diffusers import AutoencoderKL, LDMTextToImagePipeline, UNet2DConditionModel
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import (
        LDMBertConfig,
        LDMBertModel,
    )

    tokenizer = tiny_bert_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**_TINY_UNET)
        vqvae = AutoencoderKL(**_TINY_VAE)
        bert = LDMBertModel(
            LDMBertConfig(
                vocab_size=len(tokenizer),
                max_position_embeddings=TEXT_TOKENS,
                encoder_layers=2,
                encoder_ffn_dim=64,
                encoder_attention_heads=4,
                head_dim=8,
                d_model=32,
            )
        )
    pipe = LDMTextToImagePipeline(
        vqvae=vqvae, bert=bert.eval(), tokenizer=tokenizer, unet=unet.eval(), scheduler=_scheduler()
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@quiet_library_logs()
@needs("diffusers", "transformers")
def tiny_sdxl_pipeline(seed: int = 0):
    """A ``StableDiffusionXLPipeline`` at toy width: two CLIP text encoders, size conditioning,
    and, as in SDXL, no attention at the top level: self-attention only at the 8x8 level of its
    16x16 training latent (128 px), with 1 and 2 transformer layers per block."""
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = tiny_clip_tokenizer()
    text_config = _tiny_clip_config(tokenizer, projection_dim=32)
    unet_config = dict(
        _TINY_UNET,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=64,  # the two encoders' hidden states, concatenated
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8,  # pooled text + 6 size/crop ids
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**_TINY_VAE)
        text_encoder = CLIPTextModel(text_config)
        text_encoder_2 = CLIPTextModelWithProjection(text_config)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer=tokenizer,
        tokenizer_2=tiny_clip_tokenizer(),
        unet=unet.eval(),
        scheduler=_scheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tiny_clip_config(tokenizer, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TEXT_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def _tiny_t5(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_ff=64,
        d_kv=8,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
    )
    return T5EncoderModel(config).eval()


@quiet_library_logs()
@needs("diffusers", "transformers")
def tiny_sd3_pipeline(seed: int = 0):
    """A ``StableDiffusion3Pipeline`` at toy width: joint attention over image and text tokens
    (latent 16x16 at 128 px, patch 2: 64 image tokens; 77 CLIP tokens + ``max_sequence_length``
    T5 tokens). The byte-level CLIP tokenizer stands in for T5's."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    tokenizer = tiny_clip_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(**TINY_SD3_TRANSFORMER)
        vae = AutoencoderKL(**dict(_TINY_VAE, latent_channels=16, shift_factor=0.06))
        text_encoder = CLIPTextModelWithProjection(_tiny_clip_config(tokenizer, projection_dim=32))
        text_encoder_2 = CLIPTextModelWithProjection(
            _tiny_clip_config(tokenizer, projection_dim=32)
        )
        text_encoder_3 = _tiny_t5(len(tokenizer))
    pipe = StableDiffusion3Pipeline(
        transformer=transformer.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2.eval(),
        tokenizer_2=tiny_clip_tokenizer(),
        text_encoder_3=text_encoder_3,
        tokenizer_3=tiny_clip_tokenizer(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@quiet_library_logs()
@needs("diffusers", "transformers")
def tiny_flux_pipeline(seed: int = 0):
    """A ``FluxPipeline`` at toy width: one double- and one single-stream block with rotary
    embeddings; 2x2-packed latent tokens plus ``max_sequence_length`` T5 tokens."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextModel

    tokenizer = tiny_clip_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(**TINY_FLUX_TRANSFORMER)
        vae = AutoencoderKL(**dict(_TINY_VAE, shift_factor=0.1, scaling_factor=0.36))
        text_encoder = CLIPTextModel(_tiny_clip_config(tokenizer))
        text_encoder_2 = _tiny_t5(len(tokenizer))
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tiny_clip_tokenizer(),
        transformer=transformer.eval(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@quiet_library_logs()
@needs("diffusers", "transformers")
def tiny_pixart_pipeline(seed: int = 0):
    """A ``PixArtAlphaPipeline`` at toy width: self-attention over 8x8 patches of its 16x16
    training latent (128 px) and cross-attention to T5 tokens."""
    from diffusers import AutoencoderKL, PixArtAlphaPipeline, PixArtTransformer2DModel

    tokenizer = tiny_clip_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        transformer = PixArtTransformer2DModel(**TINY_PIXART_TRANSFORMER)
        vae = AutoencoderKL(**_TINY_VAE)
        text_encoder = _tiny_t5(len(tokenizer))
    pipe = PixArtAlphaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer.eval(),
        scheduler=_scheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@quiet_library_logs()
@needs("diffusers", "transformers")
def tiny_pixart_sigma_pipeline(seed: int = 0):
    """A ``PixArtSigmaPipeline`` with the components of :func:`tiny_pixart_pipeline`."""
    from diffusers import PixArtSigmaPipeline

    pipe = PixArtSigmaPipeline(**tiny_pixart_pipeline(seed).components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


TINY_PIPELINES = {
    "tiny-sd": tiny_sd_pipeline,
    "tiny-ldm": tiny_ldm_pipeline,
    "tiny-sdxl": tiny_sdxl_pipeline,
    "tiny-sd3": tiny_sd3_pipeline,
    "tiny-flux": tiny_flux_pipeline,
    "tiny-pixart": tiny_pixart_pipeline,
    "tiny-pixart-sigma": tiny_pixart_sigma_pipeline,
}

__all__ = [
    "TINY_FLUX_TRANSFORMER",
    "TINY_PIPELINES",
    "TINY_PIXART_TRANSFORMER",
    "TINY_SD3_TRANSFORMER",
    "tiny_bert_tokenizer",
    "tiny_clip_tokenizer",
    "tiny_flux_pipeline",
    "tiny_ldm_pipeline",
    "tiny_pixart_pipeline",
    "tiny_pixart_sigma_pipeline",
    "tiny_sd3_pipeline",
    "tiny_sd_pipeline",
    "tiny_sdxl_pipeline",
]
