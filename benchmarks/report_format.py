"""Cell formatting and Markdown tables shared by the sections of the benchmark report."""

from __future__ import annotations

MIB = 2**20


def fmt_time(seconds: float | None) -> str:
    """``12.3 µs``, ``4.567 ms`` or ``1.234 s``."""
    if seconds is None:
        return "—"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds:.3f} s"


def fmt_ratio(ratio: float | None) -> str:
    """``1.04x``; two significant digits below 0.1 (``0.0031x``)."""
    if ratio is None:
        return "—"
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.2g}x"


def fmt_tflops(value: float | None) -> str:
    """Three significant digits, ``—`` for none."""
    return "—" if value is None else f"{value:.3g}"


def fmt_mib(value: int | float | None) -> str:
    """Bytes as MiB with one decimal, ``—`` for none."""
    return "—" if value is None else f"{value / MIB:.1f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines; ``|`` inside a cell is escaped."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def mark(ok: bool) -> str:
    """``met`` or ``not met``."""
    return "met" if ok else "not met"
