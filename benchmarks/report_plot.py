"""The report's figure: TFLOP/s vs N per (device, dtype, head dim), from one result file."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from benchmarks.report_results import Entry, ResultFile, ShapeRow, shape_rows


def _series_label(row: ShapeRow) -> str:
    e = row.sample
    return f"{e.get('suite')} H{e.get('heads')}"


def plot_tflops(result: ResultFile, path: Path) -> bool:
    """TFLOP/s vs N (self-attention), one panel per (device, dtype, head dim); ``False`` if
    there is nothing to plot."""
    rows = [r for r in shape_rows(result) if r.sample.get("seq_q") == r.sample.get("seq_k")]
    panels: dict[tuple, list[ShapeRow]] = defaultdict(list)
    for row in rows:
        e = row.sample
        panels[(e.get("device"), e.get("dtype"), e.get("head_dim"))].append(row)
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, Callable[[ShapeRow], Entry | None]] = {
        "entropy-attn": lambda r: r.off,
        "entropy-attn + entropy": lambda r: r.on,
        "fastest SDPA": lambda r: r.fastest_sdpa[1] if r.fastest_sdpa else None,
        "materialising entropy": lambda r: r.materialise,
    }
    keys = sorted(panels, key=lambda k: (str(k[0]), str(k[1]), k[2] or 0))
    columns = min(3, len(keys))
    grid_rows = math.ceil(len(keys) / columns)
    fig, axes = plt.subplots(
        grid_rows, columns, figsize=(5.5 * columns, 4 * grid_rows), squeeze=False
    )
    markers = "osd^v<>p*h"
    for ax, key in zip(axes.flat, keys, strict=False):
        by_series: dict[str, list[ShapeRow]] = defaultdict(list)
        for row in panels[key]:
            by_series[f"{_series_label(row)} [{row.candidate_variant}]"].append(row)
        for color_index, (line_name, pick) in enumerate(lines.items()):
            for marker_index, (series, series_rows) in enumerate(sorted(by_series.items())):
                points = sorted(
                    (entry.get("seq_q"), entry.tflops)
                    for entry in map(pick, series_rows)
                    if entry is not None and entry.tflops is not None
                )
                if not points:
                    continue
                xs, ys = zip(*points, strict=True)
                ax.plot(
                    xs,
                    ys,
                    marker=markers[marker_index % len(markers)],
                    color=f"C{color_index}",
                    label=f"{line_name} · {series}",
                )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("N (tokens)")
        ax.set_ylabel("TFLOP/s")
        ax.set_title(f"{key[0]} {key[1]}, head dim {key[2]}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    fig.suptitle(f"{result.device_name} ({result.path.name})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
