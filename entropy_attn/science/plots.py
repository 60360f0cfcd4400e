"""The figures of the entropy measurements (need matplotlib): paper Fig. 5
(:func:`plot_entropy_vs_log_n`, entropy against ``ln N`` per level) and Fig. 6
(:func:`plot_layer_entropy`, entropy per layer)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from .analysis import LayerEntropy, LevelFit


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
    "plot_entropy_vs_log_n",
    "plot_layer_entropy",
    "short_layer_name",
]
