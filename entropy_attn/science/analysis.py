"""Science checks of the paper's claims, usable from Python and behind ``entropy-attn entropy``.

Two kinds of measurement:

1. **Gaussian curves** (:func:`gaussian_entropy_curve`): the attention op's own per-row entropy
   (``entropy_attn.attention(..., return_entropy=True)``, the fused kernel with
   ``backend="triton"``) for Gaussian queries and keys as the number of keys ``N`` grows, with a
   least-squares line of entropy against ``ln N``. Jin et al. (NeurIPS 2023, arXiv 2306.08645),
   Eq. 5: for Gaussian-like logits ``s_ij = lambda q_i . k_j`` with per-row variance
   ``sigma_i^2 = lambda^2 |q_i|^2`` (unit keys),

       H_i ~ ln N - sigma_i^2 / 2.

   With the stock scale ``1/sqrt(d)`` and unit Gaussian queries, ``sigma_i^2 ~ 1`` does not depend
   on ``N``: entropy grows like ``ln N`` (slope 1, intercept ``-sigma^2/2``). With the
   entropy-preserving scale ``lambda^2 = ln N / (d ln T)`` and queries of standard deviation
   ``c``, ``sigma^2 = c^2 ln N / ln T`` grows with ``ln N`` too, and the slope drops to
   ``1 - c^2 / (2 ln T)``.

2. **Per-layer entropy of a real denoiser** (:func:`layer_entropy`,
   :func:`compare_layer_entropy`): the mean self-attention entropy each layer of a pipeline (or
   a bare UNet) records at an image size, stock vs entropy-attn (paper Figs. 5 and 6).
   "Stock" runs the same entropy-attn processors with every layer's scale unchanged
   (``layers=lambda name, module: False``), which is stock math.

Plots (:func:`plot_entropy_vs_log_n`, :func:`plot_layer_entropy`) need matplotlib.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..integration import enabled
from ..integration.denoiser import (
    find_denoiser,
    pixel_size,
    training_latent_size,
    vae_scale_factor_of,
)
from ..op.api import BACKENDS, attention
from ..op.scale import log_scale

ScaleFn = Callable[[int, int], float]
METHODS = ("stock", "entropy-attn")


# ---------------------------------------------------------------------------------------------
# Least squares


@dataclass(frozen=True)
class LineFit:
    """``y ~ slope * x + intercept`` by least squares; ``rms`` is the root-mean-square residual."""

    slope: float
    intercept: float
    rms: float

    def __call__(self, x: float) -> float:
        """The line's value at ``x``."""
        return self.slope * x + self.intercept


def fit_line(x: Sequence[float], y: Sequence[float]) -> LineFit:
    """Ordinary least-squares line through ``(x, y)`` points (at least two distinct ``x``)."""
    xs = [float(v) for v in x]
    ys = [float(v) for v in y]
    if len(xs) != len(ys):
        raise ValueError(f"x and y must have the same length, got {len(xs)} and {len(ys)}")
    if len(set(xs)) < 2:
        raise ValueError(f"x needs at least two distinct values to fit a line, got {xs}")
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((a - mean_x) ** 2 for a in xs)
    sxy = sum((a - mean_x) * (b - mean_y) for a, b in zip(xs, ys, strict=True))
    slope = sxy / sxx
    intercept = mean_y - slope * mean_x
    rms = math.sqrt(sum((b - slope * a - intercept) ** 2 for a, b in zip(xs, ys, strict=True)))
    return LineFit(slope, intercept, rms / math.sqrt(len(xs)))


def fit_entropy_vs_log_n(n_values: Sequence[int], entropy: Sequence[float]) -> LineFit:
    """Least-squares line of entropy (nats) against ``ln N``."""
    return fit_line([math.log(n) for n in n_values], entropy)


# ---------------------------------------------------------------------------------------------
# Gaussian curves (Eq. 5)


def stock_scale(n_tokens: int, head_dim: int) -> float:
    """The stock softmax scale ``1/sqrt(d)`` (ignores ``n_tokens``); a ``scale_fn``."""
    return 1.0 / math.sqrt(head_dim)


def entropy_preserving_scale(train_tokens: int) -> ScaleFn:
    """The ``scale_fn`` ``(N, d) -> log_scale(N, train_tokens, d) = sqrt(ln N / (d ln T))``."""
    log_scale(train_tokens, train_tokens, 1)  # validates train_tokens

    def scale_fn(n_tokens: int, head_dim: int) -> float:
        return log_scale(n_tokens, train_tokens, head_dim)

    return scale_fn


def eq5_entropy(n_tokens: int, logit_variance: float) -> float:
    """Paper Eq. 5, the large-``N`` entropy of a row with Gaussian logits: ``ln N - sigma^2/2``."""
    return math.log(n_tokens) - logit_variance / 2


def finite_n_bias(n_tokens: int, logit_variance: float) -> float:
    """First-order ``1/N`` correction to Eq. 5 for i.i.d. Gaussian logits of variance ``s2``.

    ``H = ln S - Y/S`` with ``S = sum_j e^{s_j}`` and ``Y = sum_j s_j e^{s_j}``. The delta method
    on both terms (lognormal moments ``E e^s = e^{s2/2}``, ``Var e^s / (E e^s)^2 = e^{s2} - 1``,
    ``Cov(s e^s, e^s) / (E[s e^s] E[e^s]) = 2 e^{s2} - 1``) gives

        E[H] = ln N - s2/2 + (s2 e^{s2} - (e^{s2} - 1)/2) / N + O(1/N^2):

    ``-(e^{s2}-1)/(2N)`` from the concavity of ``ln S`` and ``+s2 e^{s2}/N`` from the ratio
    ``Y/S``. For ``s2 = 1``: ``+1.86/N`` (measured with 20000 rows at N = 64: +0.026, formula
    +0.029; the next order grows like ``e^{2 s2}/N^2``).
    """
    grow = math.exp(logit_variance)
    return (logit_variance * grow - (grow - 1) / 2) / n_tokens


def eq5_log_scale_slope(train_tokens: int, query_std: float = 1.0, key_std: float = 1.0) -> float:
    """Eq. 5's slope of entropy vs ``ln N`` under ``log_scale(N, T, d)`` for Gaussian q and k.

    ``lambda^2 = ln N / (d ln T)`` and ``E|q_i|^2 = c_q^2 d`` give ``sigma^2 = c^2 ln N / ln T``
    with ``c = c_q c_k``, so ``H ~ ln N (1 - c^2 / (2 ln T))``.
    """
    c2 = (query_std * key_std) ** 2
    return 1.0 - c2 / (2.0 * math.log(train_tokens))


@dataclass(frozen=True)
class GaussianEntropyCurve:
    """Mean attention entropy of Gaussian q, k at each key count ``N``, and Eq. 5 next to it.

    Attributes:
        n_values: key counts ``N``.
        head_dim: ``d``.
        scales: the softmax scale used at each ``N``.
        entropy: measured mean row entropy (nats) at each ``N``, from ``entropy_attn.attention``.
        logit_variance: mean over rows of ``sigma_i^2 = scale^2 key_std^2 |q_i|^2``, the exact
            variance of row ``i``'s logits over random keys given ``q_i``.
        eq5: mean over rows of ``ln N - sigma_i^2 / 2`` (Eq. 5).
        eq5_corrected: Eq. 5 plus :func:`finite_n_bias`, mean over rows.
        fit: least-squares line of ``entropy`` against ``ln N``.
        eq5_fit: the same line fitted to ``eq5`` (Eq. 5's prediction for these very queries).
        backend: the attention backend that computed ``entropy``.
    """

    n_values: tuple[int, ...]
    head_dim: int
    scales: tuple[float, ...]
    entropy: tuple[float, ...]
    logit_variance: tuple[float, ...]
    eq5: tuple[float, ...]
    eq5_corrected: tuple[float, ...]
    fit: LineFit
    eq5_fit: LineFit
    backend: str

    @property
    def log_n(self) -> tuple[float, ...]:
        """``ln N`` for each ``N``."""
        return tuple(math.log(n) for n in self.n_values)

    def rows(self) -> list[dict]:
        """One dict per ``N``: n_tokens, ln_n, scale, entropy, logit_variance, eq5, and
        eq5_corrected."""
        return [
            {
                "n_tokens": n,
                "ln_n": math.log(n),
                "scale": s,
                "entropy": h,
                "logit_variance": v,
                "eq5": e,
                "eq5_corrected": c,
            }
            for n, s, h, v, e, c in zip(
                self.n_values,
                self.scales,
                self.entropy,
                self.logit_variance,
                self.eq5,
                self.eq5_corrected,
                strict=True,
            )
        ]


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _positive_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def gaussian_entropy_curve(
    n_values: Iterable[int],
    head_dim: int = 64,
    *,
    query_std: float = 1.0,
    key_std: float = 1.0,
    scale_fn: ScaleFn | None = None,
    query_tokens: int = 64,
    heads: int = 1,
    backend: str = "auto",
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> GaussianEntropyCurve:
    """Mean attention entropy for Gaussian queries and keys at each key count ``N``.

    Queries ``q ~ N(0, query_std^2)`` of shape ``(1, heads, query_tokens, head_dim)`` are drawn
    once and reused at every ``N``; keys ``k ~ N(0, key_std^2)`` are drawn per ``N`` from a
    generator seeded with ``(seed, N)``, so two curves with the same seed see the same keys
    (their difference is not blurred by sampling). The entropy is the op's own:
    ``entropy_attn.attention(q, k, k, scale_fn(N, d), return_entropy=True, backend=backend)``,
    fp32. ``backend="triton"`` runs the fused kernel (on CPU only under ``TRITON_INTERPRET=1``,
    where a sweep up to ``N = 16384`` with 64 query rows takes a few seconds).

    Args:
        n_values: key counts ``N`` (each >= 1; at least two distinct ones for the line fit).
        head_dim: ``d``.
        query_std, key_std: standard deviations of the query and key entries.
        scale_fn: ``(N, d) -> scale``; default :func:`stock_scale` (``1/sqrt(d)``). Use
            :func:`entropy_preserving_scale` for ``log_scale(N, T, d)``.
        query_tokens, heads: query rows averaged over (batch 1).
        backend: ``"auto"``, ``"triton"`` or ``"torch"``, as for :func:`entropy_attn.attention`.
        seed: seeds the queries and keys.
        device: where the tensors live.

    Returns:
        A :class:`GaussianEntropyCurve` with the measurements, Eq. 5 for the same queries and
        the least-squares fits of both against ``ln N``.
    """
    n_values = tuple(_positive_int("n_values entries", n) for n in n_values)
    if len(set(n_values)) < 2:
        raise ValueError(f"n_values needs at least two distinct key counts, got {n_values}")
    head_dim = _positive_int("head_dim", head_dim)
    query_tokens = _positive_int("query_tokens", query_tokens)
    heads = _positive_int("heads", heads)
    query_std = _positive_float("query_std", query_std)
    key_std = _positive_float("key_std", key_std)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    scale_fn = stock_scale if scale_fn is None else scale_fn
    if not callable(scale_fn):
        raise TypeError(
            f"scale_fn must be a callable (n_tokens, head_dim) -> float, got {scale_fn!r}"
        )

    generator = torch.Generator().manual_seed(seed)
    shape = (1, heads, query_tokens, head_dim)
    query = (torch.randn(shape, generator=generator, dtype=torch.float64) * query_std).to(device)
    query_sq_norm = query.square().sum(-1).flatten().double().cpu()
    query = query.float()
    scales, entropy, variance, eq5, corrected = [], [], [], [], []
    for n_tokens in n_values:
        scale = float(scale_fn(n_tokens, head_dim))
        keys_gen = torch.Generator().manual_seed(seed * 1_000_003 + n_tokens)
        key = torch.randn((1, heads, n_tokens, head_dim), generator=keys_gen) * key_std
        key = key.to(device)
        with torch.no_grad():
            _, row_entropy = attention(query, key, key, scale, return_entropy=True, backend=backend)
        row_variance = (scale * key_std) ** 2 * query_sq_norm
        scales.append(scale)
        entropy.append(row_entropy.double().mean().item())
        variance.append(row_variance.mean().item())
        eq5.append(sum(eq5_entropy(n_tokens, v) for v in row_variance.tolist()) / len(row_variance))
        corrected.append(
            sum(
                eq5_entropy(n_tokens, v) + finite_n_bias(n_tokens, v) for v in row_variance.tolist()
            )
            / len(row_variance)
        )
    return GaussianEntropyCurve(
        n_values=n_values,
        head_dim=head_dim,
        scales=tuple(scales),
        entropy=tuple(entropy),
        logit_variance=tuple(variance),
        eq5=tuple(eq5),
        eq5_corrected=tuple(corrected),
        fit=fit_entropy_vs_log_n(n_values, entropy),
        eq5_fit=fit_entropy_vs_log_n(n_values, eq5),
        backend=backend,
    )


# ---------------------------------------------------------------------------------------------
# Per-layer entropy of a denoiser


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
    steps = _positive_int("steps", steps)
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


# ---------------------------------------------------------------------------------------------
# Plots


def _pyplot():
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install matplotlib") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def short_layer_name(name: str) -> str:
    """``down_blocks.1.attentions.0.transformer_blocks.0.attn1`` -> ``down1.a0.t0.attn1``."""
    replacements = (
        ("down_blocks.", "down"),
        ("up_blocks.", "up"),
        ("mid_block", "mid"),
        (".attentions.", ".a"),
        (".transformer_blocks.", ".t"),
    )
    for old, new in replacements:
        name = name.replace(old, new)
    return name


def plot_entropy_vs_log_n(
    fits: Sequence[LevelFit], path: str | Path, *, title: str | None = None
) -> Path:
    """Paper Fig. 5: mean self-attention entropy vs ``ln N`` per level, with fitted lines.

    Stock is drawn with filled markers and solid lines, entropy-attn with open markers and
    dashed lines; the legend gives each fitted slope (nats per unit ``ln N``).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    levels = sorted({f.train_tokens for f in fits}, reverse=True)
    colors = {t: plt.cm.viridis(i / max(1, len(levels) - 1) * 0.85) for i, t in enumerate(levels)}
    for level_fit in fits:
        xs = [math.log(n) for n in level_fit.n_values]
        stock = level_fit.method == "stock"
        color = colors[level_fit.train_tokens]
        ax.plot(
            xs,
            level_fit.entropy,
            "o" if stock else "s",
            color=color,
            markerfacecolor=color if stock else "none",
        )
        line_x = [min(xs), max(xs)]
        ax.plot(
            line_x,
            [level_fit.fit(x) for x in line_x],
            "-" if stock else "--",
            color=color,
            label=f"T={level_fit.train_tokens} {level_fit.method}: slope {level_fit.fit.slope:.3f}",
        )
    ax.set_xlabel("ln N (key tokens)")
    ax.set_ylabel("mean self-attention entropy (nats)")
    ax.set_title(title or "Attention entropy vs ln N (paper Fig. 5)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_layer_entropy(
    series: Mapping[str, Sequence[LayerEntropy]],
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """Paper Fig. 6: per-layer mean self-attention entropy, one line per labelled series.

    ``series`` maps a label ``"<size> <method>"`` (e.g. ``"224x224 stock"``) to rows from
    :func:`layer_entropy`; only self-attention layers are drawn, in call order. Stock is solid
    with filled markers, entropy-attn dashed with open markers; one colour per size. When a size
    has both methods, a lower panel shows ``entropy-attn - stock`` per layer (with random or
    near-uniform attention the two curves nearly overlap, and the sign is the point).
    """
    plt = _pyplot()
    groups = list(dict.fromkeys(label.rsplit(" ", 1)[0] for label in series))
    by_group: dict[str, dict[str, Sequence[LayerEntropy]]] = {}
    for label, rows in series.items():
        group, method = label.rsplit(" ", 1) if " " in label else (label, label)
        by_group.setdefault(group, {})[method] = rows
    paired = [g for g in groups if {"stock", "entropy-attn"} <= set(by_group[g])]
    fig, axes = plt.subplots(
        2 if paired else 1,
        1,
        figsize=(7.2, 6.4 if paired else 4.4),
        dpi=100,
        sharex=True,
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 2]} if paired else None,
    )
    ax = axes[0][0]
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names: list[str] = []
    for label, rows in series.items():
        selfs = [r for r in rows if r.kind != "cross"]
        if not names:
            names = [short_layer_name(r.layer) for r in selfs]
        color = palette[groups.index(label.rsplit(" ", 1)[0]) % len(palette)]
        stock = label.endswith("stock")
        ax.plot(
            range(len(selfs)),
            [r.entropy for r in selfs],
            "-o" if stock else "--s",
            color=color,
            markerfacecolor=color if stock else "none",
            markersize=4,
            label=label,
        )
    ax.set_ylabel("self-attention entropy (nats)")
    ax.set_title(title or "Per-layer self-attention entropy (paper Fig. 6)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    bottom = ax
    if paired:
        bottom = axes[1][0]
        for group in paired:
            stock = [r.entropy for r in by_group[group]["stock"] if r.kind != "cross"]
            ours = [r.entropy for r in by_group[group]["entropy-attn"] if r.kind != "cross"]
            bottom.plot(
                range(len(stock)),
                [b - a for a, b in zip(stock, ours, strict=True)],
                "-o",
                color=palette[groups.index(group) % len(palette)],
                markersize=4,
                label=group,
            )
        bottom.axhline(0.0, color="black", linewidth=0.8)
        bottom.set_ylabel("entropy-attn - stock (nats)")
        bottom.grid(alpha=0.3)
        bottom.legend(fontsize=7, loc="best")
    bottom.set_xticks(range(len(names)))
    bottom.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = [
    "METHODS",
    "EntropyRecording",
    "GaussianEntropyCurve",
    "LayerEntropy",
    "LevelFit",
    "LineFit",
    "compare_layer_entropy",
    "denoiser_inputs",
    "entropy_preserving_scale",
    "eq5_entropy",
    "eq5_log_scale_slope",
    "finite_n_bias",
    "fit_entropy_vs_log_n",
    "fit_levels",
    "fit_line",
    "gaussian_entropy_curve",
    "layer_entropy",
    "mean_self_entropy",
    "plot_entropy_vs_log_n",
    "plot_layer_entropy",
    "recording",
    "short_layer_name",
    "stock_scale",
    "training_size",
]
