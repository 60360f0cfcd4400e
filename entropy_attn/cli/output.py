"""What the commands write: labelled image grids, tables (text, Markdown, CSV) and CSV files."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from pathlib import Path

# entropy.csv of demo and entropy: one row per method, size and attention layer.
ENTROPY_COLUMNS = (
    "method",
    "height",
    "width",
    "layer",
    "kind",
    "heads",
    "head_dim",
    "query_tokens",
    "n_tokens",
    "ln_n",
    "train_tokens",
    "scale",
    "entropy",
    "calls",
)
LAYER_COLUMNS = ("name", "kind", "heads", "head_dim", "N", "T", "lambda", "changed")
# Image grid layout (pixels): row labels on the left, column labels on top.
GRID_PAD = 8
GRID_LABEL_WIDTH = 120
GRID_HEADER_HEIGHT = 24


# ---------------------------------------------------------------------------------------------
# Images


def _font(size: int = 14):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def grid_size(column_widths: Sequence[int], row_heights: Sequence[int]) -> tuple[int, int]:
    """``(width, height)`` of :func:`image_grid` for these column widths and row heights."""
    width = GRID_LABEL_WIDTH + sum(column_widths) + GRID_PAD * (len(column_widths) + 1)
    height = GRID_HEADER_HEIGHT + sum(row_heights) + GRID_PAD * (len(row_heights) + 1)
    return width, height


def image_grid(rows: Sequence[tuple[str, Sequence]], column_labels: Sequence[str]):
    """A labelled grid of PIL images: ``rows`` is ``[(row label, [image per column]), ...]``.

    Each image keeps its own size (so sizes compare at a glance), centred in its cell; a column
    is as wide as its widest image and a row as tall as its tallest.
    """
    from PIL import Image, ImageDraw

    if not rows or any(len(images) != len(column_labels) for _, images in rows):
        raise ValueError("every row needs one image per column label")
    column_widths = [max(images[c].width for _, images in rows) for c in range(len(column_labels))]
    row_heights = [max(image.height for image in images) for _, images in rows]
    canvas = Image.new("RGB", grid_size(column_widths, row_heights), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font()
    x = GRID_LABEL_WIDTH + GRID_PAD
    for label, width in zip(column_labels, column_widths, strict=True):
        draw.text(
            (x + width / 2, GRID_HEADER_HEIGHT / 2 + 2), label, fill="black", font=font, anchor="mm"
        )
        x += width + GRID_PAD
    y = GRID_HEADER_HEIGHT + GRID_PAD
    for (label, images), height in zip(rows, row_heights, strict=True):
        draw.text((GRID_PAD, y + height / 2), label, fill="black", font=font, anchor="lm")
        x = GRID_LABEL_WIDTH + GRID_PAD
        for image, width in zip(images, column_widths, strict=True):
            canvas.paste(image, (x + (width - image.width) // 2, y + (height - image.height) // 2))
            x += width + GRID_PAD
        y += height + GRID_PAD
    return canvas


def slug(text: str, limit: int = 40) -> str:
    """A file-name stem from a prompt."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "image"


# ---------------------------------------------------------------------------------------------
# Tables


def layer_rows(infos) -> list[dict]:
    """:class:`~entropy_attn.LayerInfo` list -> dicts with :data:`LAYER_COLUMNS` keys."""
    return [
        {
            "name": info.name,
            "kind": info.kind,
            "heads": info.heads,
            "head_dim": info.head_dim,
            "N": info.n_tokens,
            "T": info.train_tokens,
            "lambda": info.scale,
            "changed": info.changed,
        }
        for info in infos
    ]


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def format_table(rows: Sequence[dict], columns: Sequence[str], fmt: str) -> str:
    """Rows as ``text`` (aligned columns), ``markdown`` or ``csv`` (full float precision)."""
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {c: repr(row[c]) if isinstance(row[c], float) else row[c] for c in columns}
            )
        return buffer.getvalue()
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    if fmt == "markdown":
        numeric = [all(_is_number(r[c]) for r in rows) for c in columns]
        lines = ["| " + " | ".join(columns) + " |"]
        lines.append("| " + " | ".join("---:" if n else "---" for n in numeric) + " |")
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines) + "\n"
    if fmt == "text":
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
        lines.append("  ".join("-" * w for w in widths))
        lines += [
            "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
            for row in cells
        ]
        return "\n".join(lines) + "\n"
    raise ValueError(f"format must be text, markdown or csv, got {fmt!r}")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """``rows`` (dicts) to ``path`` with ``columns`` in that order."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows({c: row[c] for c in columns} for row in rows)
