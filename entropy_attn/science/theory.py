"""The paper's Eq. 5 and the Gaussian curves that test it (``entropy-attn entropy --gaussian``).

Jin et al. (NeurIPS 2023, arXiv 2306.08645), Eq. 5: for Gaussian-like logits
``s_ij = lambda q_i . k_j`` with per-row variance ``sigma_i^2 = lambda^2 |q_i|^2`` (unit keys),

    H_i ~ ln N - sigma_i^2 / 2.

With the stock scale ``1/sqrt(d)`` and unit Gaussian queries, ``sigma_i^2 ~ 1`` does not depend
on ``N``: entropy grows like ``ln N`` (slope 1, intercept ``-sigma^2/2``). With the
entropy-preserving scale ``lambda^2 = ln N / (d ln T)`` and queries of standard deviation ``c``,
``sigma^2 = c^2 ln N / ln T`` grows with ``ln N`` too, and the slope drops to
``1 - c^2 / (2 ln T)``.

:func:`gaussian_entropy_curve` measures the attention op's own per-row entropy
(``entropy_attn.attention(..., return_entropy=True)``, the fused kernel with
``backend="triton"``) for Gaussian queries and keys as ``N`` grows, with a least-squares line of
entropy against ``ln N`` (:func:`fit_line`, also used for the per-layer fits of
:mod:`entropy_attn.science.analysis`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from ..op.api import BACKENDS, attention
from ..op.scale import log_scale

ScaleFn = Callable[[int, int], float]


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


def positive_int(name: str, value) -> int:
    """``value`` if it is a positive int; else a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def positive_float(name: str, value) -> float:
    """``value`` as a float if it is a finite positive number; else a ``ValueError`` naming
    ``name``."""
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
    n_values = tuple(positive_int("n_values entries", n) for n in n_values)
    if len(set(n_values)) < 2:
        raise ValueError(f"n_values needs at least two distinct key counts, got {n_values}")
    head_dim = positive_int("head_dim", head_dim)
    query_tokens = positive_int("query_tokens", query_tokens)
    heads = positive_int("heads", heads)
    query_std = positive_float("query_std", query_std)
    key_std = positive_float("key_std", key_std)
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


__all__ = [
    "GaussianEntropyCurve",
    "LineFit",
    "entropy_preserving_scale",
    "eq5_entropy",
    "eq5_log_scale_slope",
    "finite_n_bias",
    "fit_entropy_vs_log_n",
    "fit_line",
    "gaussian_entropy_curve",
    "positive_float",
    "positive_int",
    "stock_scale",
]
