"""The training data: scikit-learn's 1,797 real 8x8 handwritten digits (``load_digits``, shipped
inside the scikit-learn wheel, so nothing is downloaded).

Pixel values there are integers 0..16. The zoo models work on ``[-1, 1]`` images and are
trained at the digits' native 8x8; other sizes resize bilinearly (real references in the metrics).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._extras import require

DIGIT_SIZE = 8
MAX_VALUE = 16.0


def _need_sklearn():
    require("sklearn", what="the digits testbed (scikit-learn's load_digits)")
    import sklearn.datasets

    return sklearn.datasets


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits: images float32 ``(n, 8, 8)`` in 0..16 and labels int64 ``(n,)``."""
    data = _need_sklearn().load_digits()
    images = torch.tensor(data.images, dtype=torch.float32)
    labels = torch.tensor(data.target, dtype=torch.int64)
    return images, labels


def to_model_range(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """0..16 digits ``(n, 8, 8)`` -> ``(n, 1, h, w)`` in [-1, 1], resized bilinearly."""
    x = images[:, None] / MAX_VALUE * 2.0 - 1.0
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x.clamp(-1.0, 1.0)


def to_digit_range(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images ``(n, 1, h, w)`` -> 8x8 digits ``(n, 8, 8)`` in 0..16, by area averaging.

    This is how generated images of any size meet the classifier: a 32x32 sample is averaged
    over 4x4 blocks, a 16x32 one over 2x4 blocks (a non-square image is squeezed to a square).
    """
    x = F.adaptive_avg_pool2d(images.float().clamp(-1.0, 1.0), (DIGIT_SIZE, DIGIT_SIZE))
    return ((x[:, 0] + 1.0) / 2.0 * MAX_VALUE).clamp(0.0, MAX_VALUE)
