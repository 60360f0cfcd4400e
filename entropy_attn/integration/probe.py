"""How many tokens each attention layer of a denoiser sees at a given latent size.

The count is taken from the architecture itself rather than from an area ratio: a copy of the
denoiser is built from its config on the ``meta`` device (no memory, no weights) and run forward
on a meta latent of the requested size, with a hook on every attention module. This follows the
model's own rounding: SD-2.1-base at 224 px has a 28x28 latent, and its self-attention levels see
28x28, 14x14, 7x7 and 4x4 tokens (784, 196, 49, 16), where an area ratio would say 12.25 at the
last level.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LayerTokens:
    """Tokens one attention call sees: queries and keys."""

    query_tokens: int
    key_tokens: int


def unwrap(denoiser: torch.nn.Module) -> torch.nn.Module:
    """The module under ``torch.compile``'s wrapper, if any."""
    return getattr(denoiser, "_orig_mod", denoiser)


def attention_modules(denoiser: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Qualified name -> diffusers attention module (``Attention``, ``FluxAttention``, ...)."""
    from diffusers.models.attention_processor import Attention

    kinds: tuple[type, ...] = (Attention,)
    try:
        from diffusers.models.attention import AttentionModuleMixin

        kinds += (AttentionModuleMixin,)
    except ImportError:  # diffusers before the attention-module refactor
        pass
    return {
        name: module
        for name, module in unwrap(denoiser).named_modules()
        if isinstance(module, kinds)
    }


def _unet_inputs(config, height: int, width: int, text_tokens: int) -> dict:
    meta = {"device": "meta"}
    cross_dim = config.get("encoder_hid_dim") or config.get("cross_attention_dim")
    if not isinstance(cross_dim, int):
        raise NotImplementedError(
            f"token probe: per-block cross_attention_dim {cross_dim!r} is not supported"
        )
    inputs = {
        "sample": torch.empty(1, config["in_channels"], height, width, **meta),
        "timestep": torch.ones(1, **meta),
        "encoder_hidden_states": torch.empty(1, text_tokens, cross_dim, **meta),
    }
    addition = config.get("addition_embed_type")
    if addition == "text_time":  # SDXL: pooled text embedding + 6 size/crop conditioning ids
        time_dim = config["addition_time_embed_dim"]
        text_dim = config["projection_class_embeddings_input_dim"] - 6 * time_dim
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.empty(1, text_dim, **meta),
            "time_ids": torch.empty(1, 6, **meta),
        }
    elif addition is not None:
        raise NotImplementedError(f"token probe: addition_embed_type {addition!r} is not supported")
    if config.get("class_embed_type") is not None:
        raise NotImplementedError(
            f"token probe: class_embed_type {config['class_embed_type']!r} is not supported"
        )
    if config.get("num_class_embeds") is not None:
        inputs["class_labels"] = torch.zeros(1, dtype=torch.long, **meta)
    return inputs


def _unet2d_inputs(config, height: int, width: int, text_tokens: int) -> dict:
    # UNet2DModel: no text; self-attention only (LDM super-resolution, unconditional DDPM/LDM).
    meta = {"device": "meta"}
    inputs = {
        "sample": torch.empty(1, config["in_channels"], height, width, **meta),
        "timestep": torch.ones(1, **meta),
    }
    # Class labels only where UNet2DModel builds a class embedding (it ignores other types).
    if config.get("class_embed_type") in ("timestep", "identity") or config.get("num_class_embeds"):
        inputs["class_labels"] = torch.zeros(1, dtype=torch.long, **meta)
    return inputs


def _sd3_inputs(config, height: int, width: int, text_tokens: int) -> dict:
    meta = {"device": "meta"}
    return {
        "hidden_states": torch.empty(1, config["in_channels"], height, width, **meta),
        "encoder_hidden_states": torch.empty(1, text_tokens, config["joint_attention_dim"], **meta),
        "pooled_projections": torch.empty(1, config["pooled_projection_dim"], **meta),
        "timestep": torch.ones(1, **meta),
    }


def _flux_inputs(config, height: int, width: int, text_tokens: int) -> dict:
    # FLUX packs 2x2 latent patches into one token: (h/2) * (w/2) image tokens.
    meta = {"device": "meta"}
    tokens = (height // 2) * (width // 2)
    inputs = {
        "hidden_states": torch.empty(1, tokens, config["in_channels"], **meta),
        "encoder_hidden_states": torch.empty(1, text_tokens, config["joint_attention_dim"], **meta),
        "pooled_projections": torch.empty(1, config["pooled_projection_dim"], **meta),
        "timestep": torch.ones(1, **meta),
        "img_ids": torch.empty(tokens, 3, **meta),
        "txt_ids": torch.empty(text_tokens, 3, **meta),
    }
    if config.get("guidance_embeds"):
        inputs["guidance"] = torch.ones(1, **meta)
    return inputs


def _pixart_inputs(config, height: int, width: int, text_tokens: int) -> dict:
    meta = {"device": "meta"}
    return {
        "hidden_states": torch.empty(1, config["in_channels"], height, width, **meta),
        "encoder_hidden_states": torch.empty(1, text_tokens, config["caption_channels"], **meta),
        "timestep": torch.ones(1, **meta),
        "added_cond_kwargs": {
            "resolution": torch.empty(1, 2, **meta),
            "aspect_ratio": torch.empty(1, 1, **meta),
        },
    }


def _controlnet_inputs(config, height: int, width: int, text_tokens: int) -> dict:
    # A ControlNet takes the UNet's inputs plus its condition image in pixels: its condition
    # embedding halves the size once per entry of conditioning_embedding_out_channels after the
    # first (8x for the default (16, 32, 96, 256)), back to the latent size.
    channels = config.get("conditioning_embedding_out_channels") or (16, 32, 96, 256)
    factor = 2 ** (len(channels) - 1)
    inputs = _unet_inputs(config, height, width, text_tokens)
    inputs["controlnet_cond"] = torch.empty(
        1, config.get("conditioning_channels", 3), height * factor, width * factor, device="meta"
    )
    return inputs


_INPUT_BUILDERS = {
    "UNet2DConditionModel": _unet_inputs,
    "UNet2DModel": _unet2d_inputs,
    "ControlNetModel": _controlnet_inputs,
    "SD3Transformer2DModel": _sd3_inputs,
    "FluxTransformer2DModel": _flux_inputs,
    "PixArtTransformer2DModel": _pixart_inputs,
}
# Text tokens each family's pipelines feed the denoiser by default.
_TEXT_TOKENS = {
    "UNet2DConditionModel": 77,  # CLIP / LDMBert
    "ControlNetModel": 77,  # the UNet's text encoder
    "SD3Transformer2DModel": 333,  # 77 CLIP + 256 T5 (max_sequence_length)
    "FluxTransformer2DModel": 512,  # T5, FLUX.1-dev's max_sequence_length
    "PixArtTransformer2DModel": 120,  # PixArt-alpha; PixArt-Sigma pipelines use 300
}


def default_text_tokens(denoiser: torch.nn.Module, pipe=None) -> int:
    """Text tokens the denoiser sees by default in its pipeline.

    In order: the pipeline's own ``text_tokens`` attribute (the digits pipelines: one label
    token); PixArt-Sigma (300); for UNets, the pipeline tokenizer's ``model_max_length`` (prompts
    are padded to it: 77 for CLIP and LDMBert); else the family's default in ``_TEXT_TOKENS``.
    """
    own = getattr(pipe, "text_tokens", None)
    if isinstance(own, int) and not isinstance(own, bool) and own >= 1:
        return own
    if type(pipe).__name__ == "PixArtSigmaPipeline":
        return 300
    family = type(unwrap(denoiser)).__name__
    if family in ("UNet2DConditionModel", "ControlNetModel"):
        length = getattr(getattr(pipe, "tokenizer", None), "model_max_length", None)
        # Tokenizers without a limit report a huge sentinel (int(1e30)): not a length.
        if isinstance(length, int) and 1 <= length <= 4096:
            return length
    return _TEXT_TOKENS.get(family, 77)


@functools.lru_cache(maxsize=256)
def _probe(cls_name: str, config_json: str, height: int, width: int, text_tokens: int):
    import diffusers

    config = json.loads(config_json)
    if cls_name not in _INPUT_BUILDERS:
        raise NotImplementedError(
            f"entropy-attn cannot count tokens for {cls_name} yet (the token probe rebuilds "
            f"diffusers' own classes by name, and a subclass is none of them); supported "
            f"denoisers: {sorted(_INPUT_BUILDERS)}"
        )
    with torch.device("meta"):
        model = getattr(diffusers, cls_name).from_config(config)
    seen: dict[str, LayerTokens] = {}

    def record(name):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            context = kwargs.get("encoder_hidden_states")
            if context is None and len(args) > 1:
                context = args[1]
            queries = hidden.shape[1] if hidden.dim() == 3 else hidden.shape[2] * hidden.shape[3]
            if context is None:
                keys = queries
            elif getattr(module, "add_k_proj", None) is not None:
                # Joint attention (SD3, FLUX double blocks): image and text tokens attend together.
                queries = keys = queries + context.shape[1]
            else:
                keys = context.shape[1]
            seen.setdefault(name, LayerTokens(int(queries), int(keys)))

        return hook

    for name, module in attention_modules(model).items():
        module.register_forward_pre_hook(record(name), with_kwargs=True)
        if hasattr(module.processor, "_attention_backend"):
            # Not diffusers' process-wide active backend, which set_attention_backend sets (flex,
            # flash, ... cannot run on meta tensors): PyTorch SDPA, which can.
            module.processor._attention_backend = "native"
    with torch.no_grad():
        model(**_INPUT_BUILDERS[cls_name](config, height, width, text_tokens))
    return seen


def probe_tokens(
    denoiser: torch.nn.Module, latent_size: tuple[int, int], *, text_tokens: int = 77
) -> dict[str, LayerTokens]:
    """Tokens seen by each attention layer when the denoiser runs on a latent of this size.

    Args:
        denoiser: a diffusers denoiser (e.g. ``UNet2DConditionModel``); only its config is used.
        latent_size: ``(height, width)`` of the latent, in latent pixels.
        text_tokens: length of the text-encoder sequence (77 for CLIP and LDMBert; see
            :func:`default_text_tokens`).

    Returns:
        qualified module name -> :class:`LayerTokens`, for every attention module that runs.
    """
    height, width = (int(v) for v in latent_size)
    if height < 1 or width < 1:
        raise ValueError(f"latent_size must be positive, got {latent_size}")
    model = unwrap(denoiser)
    config_json = json.dumps(dict(model.config), sort_keys=True, default=str)
    try:
        return dict(_probe(type(model).__name__, config_json, height, width, int(text_tokens)))
    except NotImplementedError:
        raise  # a refusal that names the unsupported feature (a RuntimeError subclass)
    except RuntimeError as error:  # e.g. UNet2DModel's skip connections at an odd size
        raise ValueError(
            f"a latent of height {height} and width {width} cannot run through "
            f"{type(model).__name__} ({error}); "
            "choose a size its down- and upsampling round-trips (e.g. a multiple of "
            "2 ** (levels - 1) latent pixels)"
        ) from None


__all__ = ["LayerTokens", "attention_modules", "default_text_tokens", "probe_tokens", "unwrap"]
