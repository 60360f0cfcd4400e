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
    """Qualified name -> diffusers ``Attention`` module, in module order."""
    from diffusers.models.attention_processor import Attention

    return {
        name: module
        for name, module in unwrap(denoiser).named_modules()
        if isinstance(module, Attention)
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


_INPUT_BUILDERS = {"UNet2DConditionModel": _unet_inputs}


@functools.lru_cache(maxsize=256)
def _probe(cls_name: str, config_json: str, height: int, width: int, text_tokens: int):
    import diffusers

    config = json.loads(config_json)
    if cls_name not in _INPUT_BUILDERS:
        raise NotImplementedError(
            f"entropy-attn cannot count tokens for {cls_name} yet; "
            f"supported denoisers: {sorted(_INPUT_BUILDERS)}"
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
            keys = queries if context is None else context.shape[1]
            seen.setdefault(name, LayerTokens(int(queries), int(keys)))

        return hook

    for name, module in attention_modules(model).items():
        module.register_forward_pre_hook(record(name), with_kwargs=True)
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
        text_tokens: length of the text-encoder sequence (77 for CLIP and LDMBert).

    Returns:
        qualified module name -> :class:`LayerTokens`, for every attention module that runs.
    """
    height, width = (int(v) for v in latent_size)
    if height < 1 or width < 1:
        raise ValueError(f"latent_size must be positive, got {latent_size}")
    model = unwrap(denoiser)
    config_json = json.dumps(dict(model.config), sort_keys=True, default=str)
    return dict(_probe(type(model).__name__, config_json, height, width, int(text_tokens)))


__all__ = ["LayerTokens", "attention_modules", "probe_tokens", "unwrap"]
