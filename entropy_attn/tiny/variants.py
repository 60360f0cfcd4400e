"""More small pipelines with random weights, built offline: ControlNet, img2img, inpainting,
the SDXL refiner.

They reuse the components of :mod:`entropy_attn.tiny.pipelines` (same UNet, VAE, text encoders and
tokenizers, 128 px training size) under the other pipeline classes users generate with.
ControlNets are built from their UNet as ``ControlNetModel.from_unet`` does, with the zero
convolutions that a fresh ControlNet starts from replaced by small random ones, so the ControlNet
changes the image (with zero convolutions its attention could not be seen in the output).
"""

from __future__ import annotations

import torch

from .._extras import needs
from .pipelines import tiny_sd_pipeline, tiny_sdxl_pipeline

# Condition embedding: four stages, 8x down from pixels to the latent, as in real ControlNets.
_CONDITION_CHANNELS = (8, 8, 16, 16)


@needs("diffusers", "transformers")
def tiny_controlnet(unet, seed: int = 1):
    """A ``ControlNetModel`` mirroring ``unet``'s encoder, random weights, non-zero outputs."""
    from diffusers import ControlNetModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = ControlNetModel.from_unet(
            unet,
            conditioning_embedding_out_channels=_CONDITION_CHANNELS,
            load_weights_from_unet=False,
        )
        zero_convs = [*net.controlnet_down_blocks, net.controlnet_mid_block]
        for conv in [*zero_convs, net.controlnet_cond_embedding.conv_out]:
            torch.nn.init.normal_(conv.weight, std=0.2)
            torch.nn.init.normal_(conv.bias, std=0.2)
    return net.eval()


@needs("diffusers", "transformers")
def tiny_sd_controlnet_pipeline(seed: int = 0, controlnets: int = 1):
    """A ``StableDiffusionControlNetPipeline`` on the tiny SD components; ``controlnets > 1``
    gives a ``MultiControlNetModel`` of that many nets."""
    from diffusers import StableDiffusionControlNetPipeline
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    components = tiny_sd_pipeline(seed).components
    nets = [tiny_controlnet(components["unet"], seed + 1 + i) for i in range(controlnets)]
    controlnet = nets[0] if controlnets == 1 else MultiControlNetModel(nets)
    pipe = StableDiffusionControlNetPipeline(**components, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@needs("diffusers", "transformers")
def tiny_sdxl_controlnet_pipeline(seed: int = 0):
    """A ``StableDiffusionXLControlNetPipeline`` on the tiny SDXL components (size conditioning,
    attention only at the 8x8 level of the 16x16 training latent)."""
    from diffusers import StableDiffusionXLControlNetPipeline

    components = tiny_sdxl_pipeline(seed).components
    controlnet = tiny_controlnet(components["unet"], seed + 1)
    pipe = StableDiffusionXLControlNetPipeline(**components, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@needs("diffusers", "transformers")
def tiny_sd_img2img_pipeline(seed: int = 0):
    """A ``StableDiffusionImg2ImgPipeline`` on the tiny SD components."""
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline(**tiny_sd_pipeline(seed).components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@needs("diffusers", "transformers")
def tiny_sdxl_img2img_pipeline(seed: int = 0):
    """A ``StableDiffusionXLImg2ImgPipeline`` on the tiny SDXL components (6 size ids, as the
    base model; a refiner's aesthetic-score UNet would need 5)."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    pipe = StableDiffusionXLImg2ImgPipeline(
        **tiny_sdxl_pipeline(seed).components, requires_aesthetics_score=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@needs("diffusers", "transformers")
def tiny_sdxl_refiner_pipeline(seed: int = 0):
    """A ``StableDiffusionXLImg2ImgPipeline`` shaped like the SDXL refiner: only the second
    text encoder (its hidden states are the cross-attention context), and 5 conditioning ids
    (original size, crop, aesthetic score) in the UNet's added embedding."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel

    components = tiny_sdxl_pipeline(seed).components
    config = dict(
        components["unet"].config,
        cross_attention_dim=32,  # text_encoder_2's hidden size alone
        projection_class_embeddings_input_dim=32 + 5 * 8,  # pooled text + 5 ids
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(config).eval()
    components.update(unet=unet, text_encoder=None, tokenizer=None)
    pipe = StableDiffusionXLImg2ImgPipeline(**components, requires_aesthetics_score=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@needs("diffusers", "transformers")
def tiny_sd_inpaint_pipeline(seed: int = 0):
    """A ``StableDiffusionInpaintPipeline`` whose UNet takes 9 channels (latent, mask, masked
    image latent), as SD inpainting checkpoints do."""
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    components = tiny_sd_pipeline(seed).components
    config = dict(components["unet"].config, in_channels=9)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        components["unet"] = UNet2DConditionModel.from_config(config).eval()
    pipe = StableDiffusionInpaintPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


__all__ = [
    "tiny_controlnet",
    "tiny_sd_controlnet_pipeline",
    "tiny_sd_img2img_pipeline",
    "tiny_sd_inpaint_pipeline",
    "tiny_sdxl_controlnet_pipeline",
    "tiny_sdxl_img2img_pipeline",
    "tiny_sdxl_refiner_pipeline",
]
