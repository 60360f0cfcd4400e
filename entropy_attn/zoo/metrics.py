"""Quality of generated digits at any size, stock vs entropy-attn on the same noise.

- **Accuracy**: an RBF SVC trained on 70% of the real 8x8 digits (stratified, seed 0; held-out
  accuracy in :func:`classifier`) labels each generated image after it is area-averaged to 8x8
  (:func:`entropy_attn.zoo.data.to_digit_range`; a non-square image is squeezed to a square).
  Intervals are 95% Wilson score intervals.
- **Paired test**: stock and entropy-attn start from the same noise per sample; the exact
  two-sided McNemar test on the discordant pairs (b: stock right, entropy-attn wrong; c: the
  reverse) says whether the accuracies differ.
- **Repetition**: connected components (8-connectivity) of the image thresholded at half
  intensity, at the size it was generated, ignoring specks below 2% of the image area; the
  share of samples with two or more blobs flags broken or repeated digits.
- **Frechet distance** between Gaussians fitted to the classifier's 45 one-vs-one decision
  values of generated and real digits; real digits go through the same resize (bilinear to the
  generated size, then area-averaged back to 8x8).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..sizes import format_size
from .data import load_digits, to_digit_range, to_model_range

Z_95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion ``successes / trials``."""
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes}/{trials}")
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts ``b`` and ``c``:
    ``min(1, 2 * P(X <= min(b, c)))`` for ``X ~ Binomial(b + c, 1/2)``; 1.0 when ``b + c == 0``."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def count_blobs(image, threshold: float = 0.0, min_fraction: float = 0.02) -> int:
    """Connected components (8-connectivity) of ``image > threshold`` (an ``(h, w)`` array in
    [-1, 1]) with at least ``max(1, min_fraction * h * w)`` pixels."""
    from scipy import ndimage

    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D (h, w), got shape {image.shape}")
    labels, count = ndimage.label(image > threshold, structure=np.ones((3, 3)))
    if count == 0:
        return 0
    sizes = np.bincount(labels.ravel())[1:]
    return int((sizes >= max(1.0, min_fraction * image.size)).sum())


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature rows ``a (n, k)`` and ``b (m, k)``."""
    from scipy import linalg

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    if np.iscomplexobj(root):
        root = root.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


@functools.lru_cache(maxsize=1)
def classifier():
    """``(svc, held_out_accuracy, train_digits, test_digits, test_labels)``: an RBF SVC on 70%
    of the real digits (flattened 0..16 pixels / 16), deterministic."""
    from sklearn.model_selection import train_test_split
    from sklearn.svm import SVC

    images, labels = load_digits()
    x = images.reshape(len(images), -1).numpy() / 16.0
    y = labels.numpy()
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.3, random_state=0, stratify=y
    )
    svc = SVC(kernel="rbf", C=10.0, gamma="scale", decision_function_shape="ovo")
    svc.fit(x_train, y_train)
    return svc, float((svc.predict(x_test) == y_test).mean()), x_train, x_test, y_test


def classify(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(predicted labels, 45 decision values)`` for [-1, 1] images ``(n, 1, h, w)``."""
    svc = classifier()[0]
    x = to_digit_range(images).reshape(len(images), -1).numpy() / 16.0
    return svc.predict(x), svc.decision_function(x)


def real_reference(size: tuple[int, int]) -> dict:
    """Held-out real digits resized to ``size`` and back: accuracy, blob rate, features."""
    _, _, _, x_test, y_test = classifier()
    images = torch.tensor(x_test.reshape(-1, 8, 8) * 16.0, dtype=torch.float32)
    resized = to_model_range(images, size)
    predicted, features = classify(resized)
    blobs = np.array([count_blobs(im[0].numpy()) for im in resized])
    return {
        "accuracy": float((predicted == y_test).mean()),
        "multi_blob": float((blobs >= 2).mean()),
        "features": features,
    }


@dataclass
class CellResult:
    """One (size, method, positions) cell of the quality table."""

    model: str
    height: int
    width: int
    method: str
    positions: str
    n: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    mcnemar_b: int | None
    mcnemar_c: int | None
    mcnemar_p: float | None
    multi_blob: float
    mean_blobs: float
    frechet: float
    real_accuracy: float
    real_multi_blob: float


def size_pair(value) -> tuple[int, int]:
    """``(height, width)`` from one int or a pair of ints (the ``sizes`` argument of
    :func:`evaluate` and :func:`~entropy_attn.zoo.demo.demo_grid`)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if (
        isinstance(value, tuple | list)
        and len(value) == 2
        and all(isinstance(v, int) for v in value)
    ):
        return int(value[0]), int(value[1])
    raise ValueError(f"sizes must hold ints or (height, width) pairs, got {value!r}")


def evaluate(
    model,
    sizes: Sequence = ((8, 8), (4, 4), (12, 12), (16, 16), (8, 16)),
    *,
    n_per_cell: int = 300,
    steps: int = 10,
    seed: int = 0,
    positions: Sequence[str] = ("interpolate",),
    out_dir: str | Path | None = None,
    name: str | None = None,
    progress: bool = True,
) -> list[CellResult]:
    """Accuracy, paired McNemar, blob rate and Frechet distance per size, stock vs entropy-attn.

    Args:
        model: a zoo name (``"digits-unet"``, ``"digits-dit"``) or a pipeline from
            :func:`entropy_attn.zoo.load_pipeline`.
        sizes: image sizes, ints or ``(height, width)``; the default is the training size 8x8,
            0.5x, 1.5x, 2x and 16x8 (width x height).
        n_per_cell: samples per size and method (labels 0..9 in turn); the same noise (seeded
            by ``seed`` and the size) for both methods.
        steps: DDIM steps.
        positions: for the DiT, ``"interpolate"`` and/or ``"extend"`` (see ``DigitsPipeline``).
        out_dir: when given, writes ``quality-<name>.csv`` and ``quality-<name>.md`` there.
        name: label for the rows and files (default: the model name).
        progress: show a tqdm bar over the cells.

    Returns:
        One :class:`CellResult` per (size, positions, method).
    """
    from .. import integration
    from .load import load_pipeline
    from .models import own_positions

    if isinstance(model, str):
        name = name or model
        pipe = load_pipeline(model)
    else:
        pipe = model
        name = name or "model"
    if isinstance(n_per_cell, bool) or not isinstance(n_per_cell, int) or n_per_cell < 2:
        raise ValueError(f"n_per_cell must be an int >= 2, got {n_per_cell!r}")
    sizes = [size_pair(s) for s in sizes]
    if not sizes:
        raise ValueError("sizes must not be empty")
    pipe.set_progress_bar_config(disable=True)
    labels = torch.arange(n_per_cell) % 10
    cells = [(size, pos) for size in sizes for pos in positions]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=2 * len(cells), desc=f"eval {name}")
    results = []
    for (height, width), pos in cells:
        reference = real_reference((height, width))
        noise = torch.randn(
            (n_per_cell, 1, height, width),
            generator=torch.Generator().manual_seed(seed * 1_000_003 + height * 1000 + width),
        )
        own = own_positions(pipe, pos)
        outcomes = {}
        for method in ("stock", "entropy-attn"):
            enabled = method == "entropy-attn"
            context = integration.enabled(pipe) if enabled else contextlib.nullcontext()
            with context:
                images = pipe(
                    labels,
                    height=height,
                    width=width,
                    num_inference_steps=steps,
                    latents=noise,
                    positions=own,
                )
            predicted, features = classify(images)
            right = predicted == labels.numpy()
            blobs = np.array([count_blobs(im[0].numpy()) for im in images])
            outcomes[method] = (right, blobs, features)
            if bar is not None:
                bar.update(1)
        stock_right = outcomes["stock"][0]
        for method, (right, blobs, features) in outcomes.items():
            low, high = wilson_interval(int(right.sum()), n_per_cell)
            b = c = p = None
            if method != "stock":
                b = int((stock_right & ~right).sum())
                c = int((~stock_right & right).sum())
                p = mcnemar_exact(b, c)
            results.append(
                CellResult(
                    model=name,
                    height=height,
                    width=width,
                    method=method,
                    # FLUX's own RoPE positions are not PixArt's interpolated ones: "stock".
                    # (The UNet has none; its tables keep the tools' default label.)
                    positions="stock" if hasattr(pipe, "transformer") and own is None else pos,
                    n=n_per_cell,
                    correct=int(right.sum()),
                    accuracy=float(right.mean()),
                    ci_low=low,
                    ci_high=high,
                    mcnemar_b=b,
                    mcnemar_c=c,
                    mcnemar_p=p,
                    multi_blob=float((blobs >= 2).mean()),
                    mean_blobs=float(blobs.mean()),
                    frechet=frechet_distance(features, reference["features"]),
                    real_accuracy=reference["accuracy"],
                    real_multi_blob=reference["multi_blob"],
                )
            )
    if bar is not None:
        bar.close()
    if out_dir is not None:
        write_results(results, out_dir, name, steps=steps, seed=seed)
    return results


def write_results(
    results: Sequence[CellResult], out_dir: str | Path, name: str, *, steps: int, seed: int
) -> tuple[Path, Path]:
    """Write ``quality-<name>.csv`` and ``quality-<name>.md``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [asdict(r) for r in results]
    csv_path = out_dir / f"quality-{name}.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    svc_acc = classifier()[1]
    lines = [
        f"# Quality of `{name}` across sizes (CPU, written by `entropy_attn.zoo.evaluate`)",
        "",
        f"{results[0].n} samples per cell (labels 0-9 in turn), DDIM {steps} steps, seed {seed}; "
        "stock and entropy-attn start from the same noise. Accuracy: RBF SVC on real digits "
        f"(held-out accuracy {svc_acc:.1%}) after area-averaging to 8x8, 95% Wilson interval. "
        "McNemar: exact two-sided test on discordant pairs (b: stock right / entropy-attn "
        "wrong, c: the reverse). Blobs: share of samples with >= 2 connected components. "
        "Frechet: on the SVC's 45 decision values vs held-out real digits put through the same "
        "resize. Real: held-out real digits resized to the size and classified the same way.",
        "",
        "| size (W x H) | positions | method | accuracy [95% CI] | McNemar b/c, p | >=2 blobs | "
        "Frechet | real acc | real >=2 blobs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        test = "" if r.mcnemar_p is None else f"{r.mcnemar_b}/{r.mcnemar_c}, p={r.mcnemar_p:.3g}"
        lines.append(
            f"| {format_size((r.height, r.width))} | {r.positions} | {r.method} | {r.accuracy:.1%} "
            f"[{r.ci_low:.1%}, {r.ci_high:.1%}] | {test} | {r.multi_blob:.1%} | "
            f"{r.frechet:.1f} | {r.real_accuracy:.1%} | {r.real_multi_blob:.1%} |"
        )
    md_path = out_dir / f"quality-{name}.md"
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path
