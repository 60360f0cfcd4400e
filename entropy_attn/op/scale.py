"""The entropy-preserving attention scale of Jin et al. (NeurIPS 2023, arXiv 2306.08645)."""

from __future__ import annotations

import math
import numbers
import sys

_MAX_FLOAT_INT = int(sys.float_info.max)  # the largest int that converts to a float


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def log_scale(n_tokens: int, train_tokens: int, head_dim: int) -> float:
    """Softmax scale ``lambda = sqrt(log_T(N) / d) = sqrt(ln N / (d ln T))``.

    Args:
        n_tokens: ``N``, the number of key tokens the attention layer sees now (>= 1).
        train_tokens: ``T``, the number of key tokens the same layer saw at the training size
            (> 1, since ``ln T`` divides).
        head_dim: ``d``, the head dimension (>= 1, and convertible to a float).

    Returns:
        ``lambda`` as a float. It equals ``1 / sqrt(head_dim)`` when ``n_tokens == train_tokens``,
        is smaller when ``n_tokens < train_tokens`` (flatter attention) and larger when
        ``n_tokens > train_tokens`` (sharper attention). ``n_tokens == 1`` gives ``0.0``: with one
        key the softmax is 1 whatever the scale (``entropy_attn.attention`` accepts scale 0).
    """
    n_tokens = _check_count("n_tokens", n_tokens, 1)
    train_tokens = _check_count("train_tokens", train_tokens, 2)
    head_dim = _check_count("head_dim", head_dim, 1)
    if head_dim > _MAX_FLOAT_INT:  # math.sqrt / float() of it would raise OverflowError
        raise ValueError(
            f"head_dim must be at most {sys.float_info.max:.3g} (a float), "
            f"got an int of {head_dim.bit_length()} bits"
        )
    if n_tokens == train_tokens:
        return 1.0 / math.sqrt(head_dim)
    # math.log takes Python ints of any size, so huge token counts are fine.
    return math.sqrt(math.log(n_tokens) / (math.log(train_tokens) * head_dim))


__all__ = ["log_scale"]
