"""Per-layer attention entropy of a real denoiser (paper Figs. 5 and 6; ``entropy-attn entropy``).

:func:`layer_entropy` and :func:`compare_layer_entropy` record the mean self-attention entropy
each layer of a pipeline (or a bare UNet) sees at an image size, stock vs entropy-attn;
:func:`fit_levels` fits entropy against ``ln N`` per UNet level. "Stock" runs the same
entropy-attn processors with every layer's scale unchanged (``layers=lambda name, module:
False``), which is stock math. The Gaussian curves of Eq. 5 are in
:mod:`entropy_attn.science.theory`, the figures in :mod:`entropy_attn.science.plots`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ..integration import enabled
from ..integration.denoiser import (
    find_denoiser,
    pixel_size,
    training_latent_size,
    vae_scale_factor_of,
)
from .theory import LineFit, fit_entropy_vs_log_n, positive_int

METHODS = ("stock", "entropy-attn")


@dataclass(frozen=True)
class LayerEntropy:
    """Mean attention entropy of one attention layer at one image size, for one method.

    ``entropy`` is the mean over the recorded calls (denoising steps x prompts) of the per-call
    mean over batch, heads and query rows, in nats. ``calls`` counts those calls.
    """

    method: str
    height: int
    width: int
    layer: str
    kind: str
    heads: int
    head_dim: int
    query_tokens: int
    n_tokens: int
    train_tokens: int
    scale: float
    entropy: float
    calls: int

    @property
    def ln_n(self) -> float:
        """``ln N`` of this layer's key count."""
        return math.log(self.n_tokens)

    def as_dict(self) -> dict:
        """The fields plus ``ln_n``, for CSV writers."""
        row = {name: getattr(self, name) for name in self.__dataclass_fields__}
        row["ln_n"] = self.ln_n
        return row


def _layers_for(method: str):
    if method == "stock":
        return lambda name, module: False
    if method == "entropy-attn":
        return "self"
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _is_pipeline(model) -> bool:
    return not isinstance(model, torch.nn.Module) and callable(model)


def denoiser_inputs(
    denoiser: torch.nn.Module,
    latent_size: tuple[int, int],
    *,
    batch: int = 1,
    text_tokens: int = 77,
    generator: torch.Generator | None = None,
) -> dict:
    """Gaussian inputs for one ``UNet2DConditionModel`` forward at a latent size (SD, SDXL, LDM).

    ``sample`` and ``encoder_hidden_states`` are standard normal; SDXL's pooled text embedding is
    normal and its size/crop ids describe an uncropped image of the latent size times 8.
    """
    config = find_denoiser(denoiser).config
    parameter = next(find_denoiser(denoiser).parameters())
    device, dtype = parameter.device, parameter.dtype
    height, width = latent_size
    cross_dim = config.get("encoder_hid_dim") or config.get("cross_attention_dim")
    if not isinstance(cross_dim, int):
        raise NotImplementedError(f"per-block cross_attention_dim {cross_dim!r} is not supported")

    def normal(*shape):
        return torch.randn(shape, generator=generator).to(device=device, dtype=dtype)

    inputs = {
        "sample": normal(batch, config["in_channels"], height, width),
        "timestep": torch.tensor(500, device=device),
        "encoder_hidden_states": normal(batch, text_tokens, cross_dim),
    }
    if config.get("addition_embed_type") == "text_time":
        time_dim = config["addition_time_embed_dim"]
        text_dim = config["projection_class_embeddings_input_dim"] - 6 * time_dim
        ids = torch.tensor([height * 8, width * 8, 0, 0, height * 8, width * 8], dtype=dtype)
        inputs["added_cond_kwargs"] = {
            "text_embeds": normal(batch, text_dim),
            "time_ids": ids.to(device).repeat(batch, 1),
        }
    elif config.get("addition_embed_type") is not None:
        raise NotImplementedError(
            f"addition_embed_type {config['addition_embed_type']!r} is not supported"
        )
    return inputs


def _aggregate(method: str, size: tuple[int, int], rows: list[dict]) -> list[LayerEntropy]:
    by_layer: dict[str, list[dict]] = {}
    for row in rows:
        by_layer.setdefault(row["layer"], []).append(row)
    result = []
    for layer, calls in by_layer.items():
        first = calls[0]
        result.append(
            LayerEntropy(
                method=method,
                height=size[0],
                width=size[1],
                layer=layer,
                kind=first["kind"],
                heads=first["heads"],
                head_dim=first["head_dim"],
                query_tokens=first["query_tokens"],
                n_tokens=first["n_tokens"],
                train_tokens=first["train_tokens"],
                scale=first["scale"],
                entropy=sum(c["entropy"] for c in calls) / len(calls),
                calls=len(calls),
            )
        )
    return result


class EntropyRecording:
    """What :func:`recording` yields: call :meth:`layers` after running the model."""

    def __init__(self, handle, method: str, size: tuple[int, int]) -> None:
        self.handle = handle
        self.method = method
        self.size = size

    def layers(self) -> list[LayerEntropy]:
        """The entropy recorded so far, averaged per layer over all calls."""
        return _aggregate(self.method, self.size, self.handle.entropy_rows())


@contextlib.contextmanager
def recording(
    model,
    size: int | tuple[int, int],
    *,
    method: str = "entropy-attn",
    backend: str = "auto",
    **enable_options,
) -> Iterator[EntropyRecording]:
    """``with recording(pipe, (h, w), method="stock") as rec: pipe(...); rows = rec.layers()``.

    Installs entropy-attn processors with entropy recording: for ``method="stock"`` every layer
    keeps its scale (``layers=lambda name, module: False``, stock math), for
    ``"entropy-attn"`` self-attention is rescaled. ``size`` (pixels) labels the rows; the
    caller runs the model at that size. The processors are removed on exit.
    """
    height, width = pixel_size(size)
    if "layers" in enable_options or "record_entropy" in enable_options:
        raise ValueError("recording sets layers= and record_entropy= itself (see method=)")
    with enabled(
        model, layers=_layers_for(method), record_entropy=True, backend=backend, **enable_options
    ) as handle:
        yield EntropyRecording(handle, method, (height, width))


def layer_entropy(
    model,
    size: int | tuple[int, int],
    *,
    method: str = "entropy-attn",
    prompts: Sequence[str] | None = None,
    steps: int = 2,
    seed: int = 0,
    guidance_scale: float | None = None,
    backend: str = "auto",
    vae_scale_factor: int | None = None,
    **enable_options,
) -> list[LayerEntropy]:
    """Mean attention entropy of every attention layer at one image size (paper Figs. 5-6).

    Args:
        model: a diffusers pipeline (runs ``pipe(prompt, height, width, ...)`` once per prompt
            with ``steps`` denoising steps and a generator seeded with ``seed + prompt index``),
            or a bare denoiser (runs ``steps`` forwards on seeded Gaussian inputs from
            :func:`denoiser_inputs`; passing ``prompts`` there is an error).
        size: image size in pixels, ``(height, width)`` or one int.
        method: ``"stock"`` (every scale unchanged) or ``"entropy-attn"`` (self-attention
            rescaled, as ``enable(pipe)``).
        prompts: prompts averaged over (pipelines only; default ``("a photo of a cat",)``).
        steps: denoising steps per prompt (pipelines) or forwards (denoisers).
        seed: base seed.
        guidance_scale: passed to the pipeline when given (pipelines only).
        backend: attention backend, as for :func:`entropy_attn.enable`.
        vae_scale_factor: pixels per latent pixel; default the pipeline's, or 8 for a denoiser.
        **enable_options: further options for :func:`entropy_attn.enable` (``train_size``,
            ``text_tokens``).

    Returns:
        One :class:`LayerEntropy` per attention layer (self and cross), in call order.
    """
    height, width = pixel_size(size)
    steps = positive_int("steps", steps)
    _layers_for(method)
    pipeline = _is_pipeline(model)
    if prompts is not None and not pipeline:
        raise ValueError("prompts= applies to pipelines only; a bare denoiser gets random inputs")
    if guidance_scale is not None and not pipeline:
        raise ValueError("guidance_scale= applies to pipelines only, not to a bare denoiser")
    prompts = ("a photo of a cat",) if prompts is None else prompts
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a non-empty sequence of strings, got {prompts!r}")
    factor = vae_scale_factor or (getattr(model, "vae_scale_factor", None) if pipeline else None)
    factor = int(factor) if factor else 8
    if height % factor or width % factor:
        raise ValueError(f"size {(height, width)} must be a multiple of the VAE factor {factor}")
    with (
        recording(
            model,
            (height, width),
            method=method,
            backend=backend,
            vae_scale_factor=vae_scale_factor,
            **enable_options,
        ) as rec,
        torch.no_grad(),
    ):
        if pipeline:
            kwargs = {} if guidance_scale is None else {"guidance_scale": guidance_scale}
            for index, prompt in enumerate(prompts):
                model(
                    prompt,
                    height=height,
                    width=width,
                    num_inference_steps=steps,
                    generator=torch.Generator().manual_seed(seed + index),
                    output_type="np",
                    **kwargs,
                )
        else:
            inputs = denoiser_inputs(
                model,
                (height // factor, width // factor),
                generator=torch.Generator().manual_seed(seed),
            )
            for _ in range(steps):
                model(**inputs)
        return rec.layers()


def compare_layer_entropy(
    model, size: int | tuple[int, int], **options
) -> dict[str, list[LayerEntropy]]:
    """:func:`layer_entropy` for ``"stock"`` and ``"entropy-attn"`` with the same inputs/seeds."""
    if "method" in options:
        raise ValueError("compare_layer_entropy runs both methods; do not pass method=")
    return {method: layer_entropy(model, size, method=method, **options) for method in METHODS}


def mean_self_entropy(rows: Iterable[LayerEntropy]) -> float:
    """Mean entropy over the layers in ``rows`` whose keys are image tokens (self- and joint
    attention; each layer weighted equally)."""
    values = [row.entropy for row in rows if row.kind != "cross"]
    if not values:
        raise ValueError("no self-attention layers among the rows")
    return sum(values) / len(values)


@dataclass(frozen=True)
class LevelFit:
    """Entropy vs ``ln N`` for the self-attention layers of one UNet level and one method.

    A level is identified by its training token count ``T`` (``train_tokens``); ``n_values`` and
    ``entropy`` are the level's mean entropy at each measured size.
    """

    method: str
    train_tokens: int
    n_values: tuple[int, ...]
    entropy: tuple[float, ...]
    fit: LineFit = field(compare=False)


def fit_levels(rows: Iterable[LayerEntropy]) -> list[LevelFit]:
    """Group self-attention rows by (method, level ``T``), average per ``N``, fit vs ``ln N``.

    Levels with fewer than two distinct ``N`` are skipped (no line through one point); the
    result is sorted by method, then by ``T`` from the largest (the full-resolution level) down.
    """
    groups: dict[tuple[str, int], dict[int, list[float]]] = {}
    for row in rows:
        if row.kind == "cross":
            continue
        groups.setdefault((row.method, row.train_tokens), {}).setdefault(row.n_tokens, []).append(
            row.entropy
        )
    fits = []
    for (method, train_tokens), by_n in groups.items():
        if len(by_n) < 2:
            continue
        n_values = tuple(sorted(by_n))
        entropy = tuple(sum(by_n[n]) / len(by_n[n]) for n in n_values)
        fits.append(
            LevelFit(
                method, train_tokens, n_values, entropy, fit_entropy_vs_log_n(n_values, entropy)
            )
        )
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(fits, key=lambda f: (order.get(f.method, len(order)), -f.train_tokens))


def training_size(model, vae_scale_factor: int | None = None) -> tuple[int, int]:
    """A pipeline's or denoiser's training image size in pixels, ``(height, width)``."""
    factor = vae_scale_factor_of(model, vae_scale_factor)
    height, width = training_latent_size(find_denoiser(model), model)
    return height * factor, width * factor


__all__ = [
    "METHODS",
    "EntropyRecording",
    "LayerEntropy",
    "LevelFit",
    "compare_layer_entropy",
    "denoiser_inputs",
    "fit_levels",
    "layer_entropy",
    "mean_self_entropy",
    "recording",
    "training_size",
]
