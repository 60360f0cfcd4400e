"""Image sizes as users type them (``WIDTHxHEIGHT``) and as the Python API takes them
(``(height, width)``): one parser and one printer, so that every table, file name and title shows
a size in the form the user typed it."""

from __future__ import annotations


def parse_size(text: str | int) -> tuple[int, int]:
    """``"512"`` -> ``(512, 512)``; ``"768x512"`` (width x height) -> ``(512, 768)``.

    Returns ``(height, width)`` in pixels.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str):
        raise ValueError(f"size must be 'S' or 'WxH' (pixels), got {text!r}")
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"size must be 'S' or 'WxH' with integer pixels, got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise ValueError(f"size must be 'S' or 'WxH' with positive pixels, got {text!r}")
    width, height = values
    return height, width


def format_size(size: tuple[int, int]) -> str:
    """``(height, width)`` -> ``"WxH"``, the form :func:`parse_size` reads."""
    height, width = size
    return f"{width}x{height}"
