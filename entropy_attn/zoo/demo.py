"""One picture: a zoo model at its training size and off-size, stock vs entropy-attn."""

from __future__ import annotations

from pathlib import Path

import torch

from ..sizes import format_size

DEFAULT_SIZES = ((8, 8), (4, 4), (12, 12), (16, 16), (8, 16))
# The combination of size fix and scale with the highest accuracy at 2x in docs/zoo/fixes.csv
# (python -m entropy_attn.zoo.fixes; tests/test_zoo.py checks this against the file):
# label, entropy_attn.enable options.
BEST = {
    "digits-unet": ("re-dilation + scale", {"redilate": True}),
}


def demo_grid(
    name: str = "digits-unet",
    out_dir: str | Path = ".",
    *,
    sizes=DEFAULT_SIZES,
    seed: int = 0,
    steps: int = 10,
    positions: str = "interpolate",
    pipe=None,
    best: bool = True,
) -> Path:
    """Write ``demo-<name>.png`` to ``out_dir`` and return its path.

    Columns: the sizes (default training size 8x8, 0.5x, 1.5x, 2x and 16x8, width x height),
    each a 2x5 tile of the digits 0-9. Rows: stock, entropy-attn (same noise per sample), and
    ``|difference|`` on one colour scale from 0 to the largest difference in the picture (each
    panel's maximum in its label; images span [-1, 1], so differences can reach 2). ``pipe``
    overrides the loaded model (e.g. a DiT with ``positions="extend"``). With ``best`` and a
    model in :data:`BEST`, a third row shows the combination of size fix and scale that measured
    best at 2x. Takes a few seconds on 2 CPU cores.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import integration
    from .load import load_pipeline
    from .metrics import size_pair
    from .models import own_positions

    sizes = [size_pair(s) for s in sizes]
    pipe = load_pipeline(name) if pipe is None else pipe
    pipe.set_progress_bar_config(disable=True)
    labels = torch.arange(10)
    rows = {"stock": [], "entropy-attn": []}
    best_label, best_options = BEST.get(name, (None, None)) if best else (None, None)
    if best_label is not None:
        rows[best_label] = []
    for height, width in sizes:
        noise = torch.randn(
            (10, 1, height, width),
            generator=torch.Generator().manual_seed(seed + height * 1000 + width),
        )
        for method in rows:
            kwargs = dict(height=height, width=width, num_inference_steps=steps, latents=noise)
            kwargs["positions"] = own_positions(pipe, positions)
            if method == "stock":
                rows[method].append(pipe(labels, **kwargs))
                continue
            options = {} if method == "entropy-attn" else best_options
            with integration.enabled(pipe, **options):
                rows[method].append(pipe(labels, **kwargs))

    def tile(images):  # (10, 1, h, w) -> (2h+1, 5w+4) with 1-pixel gaps
        h, w = images.shape[-2:]
        canvas = torch.full((2 * h + 1, 5 * w + 4), float("nan"))
        for i, image in enumerate(images[:, 0]):
            r, c = divmod(i, 5)
            canvas[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = image
        return canvas.numpy()

    train = pipe.train_size
    widths = [5 * w + 4 for _, w in sizes]
    shown = [(method, method) for method in rows]
    fig, axes = plt.subplots(
        len(shown) + 1,
        len(sizes),
        figsize=(2.2 * len(sizes) + 1, 1.75 * (len(shown) + 1) + 0.0),
        gridspec_kw={"width_ratios": widths},
        squeeze=False,
    )
    # One colour scale for every difference panel: the largest difference anywhere (at least
    # 0.01, so that a bit-identical panel stays black rather than amplifying rounding).
    pairs = zip(rows["entropy-attn"], rows["stock"], strict=True)
    top = max(0.01, *((ours - stock).abs().max().item() for ours, stock in pairs))
    for col, (height, width) in enumerate(sizes):
        stock, ours = rows["stock"][col], rows["entropy-attn"][col]
        diff = (ours - stock).abs()
        tag = " (train)" if (height, width) == tuple(train) else ""
        panels = [(rows[method][col], label) for method, label in shown]
        panels.append((diff, f"|entropy-attn - stock|\n(0 to {top:.2f})"))
        for row, (data, label) in enumerate(panels):
            ax = axes[row, col]
            if row < len(shown):
                ax.imshow(tile(data), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
            else:
                ax.imshow(tile(data), cmap="magma", vmin=0, vmax=top, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"{format_size((height, width))}{tag}", fontsize=9)
            if row == len(shown):
                ax.set_xlabel(f"max {diff.max().item():.2f}", fontsize=8)
            if col == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.suptitle(
        f"{name}: digits 0-9, DDIM {steps} steps, seed {seed}, same noise per column, "
        "sizes width x height" + ("" if positions == "interpolate" else f", positions={positions}"),
        fontsize=10,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "" if positions == "interpolate" else f"-{positions}"
    path = out_dir / f"demo-{name}{suffix}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
