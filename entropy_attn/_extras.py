"""Optional libraries and the extra that installs each: one line saying what to install.

``pip install entropy-attn`` brings only torch and numpy (the attention op); diffusers
pipelines, the digits testbed, the metrics and the fused kernel's Triton come with extras.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from collections.abc import Callable

# module -> the extra of pyproject.toml that installs it.
EXTRA_OF = {
    "diffusers": "diffusers",
    "transformers": "diffusers",
    "matplotlib": "diffusers",
    "PIL": "diffusers",
    "pandas": "diffusers",
    "sklearn": "zoo",
    "scipy": "zoo",
    "tqdm": "zoo",
    "torchmetrics": "eval",
    "torch_fidelity": "eval",
    "triton": "triton",
    "pytest": "dev",
    "pytest_benchmark": "dev",
}


class MissingExtra(ImportError):
    """An optional library is not installed; the message names it and the install line."""


def missing(modules: tuple[str, ...]) -> list[str]:
    """The modules of ``modules`` that cannot be imported (``sys.modules[name] = None`` counts)."""
    absent = []
    for name in modules:
        if name in sys.modules:
            if sys.modules[name] is None:
                absent.append(name)
        elif importlib.util.find_spec(name) is None:
            absent.append(name)
    return absent


def install_line(modules: list[str]) -> str:
    """``pip install "entropy-attn[a,b]"`` for the extras that install ``modules``."""
    extras = sorted({EXTRA_OF.get(name, "dev") for name in modules})
    return f'pip install "entropy-attn[{",".join(extras)}]"'


def needs_line(absent: list[str]) -> str:
    """``needs a, b, which are not installed: pip install "entropy-attn[...]"``."""
    verb = "is" if len(absent) == 1 else "are"
    return f"needs {', '.join(absent)}, which {verb} not installed: {install_line(absent)}"


def require(*modules: str, what: str) -> None:
    """Raise :class:`MissingExtra` (one line) if any of ``modules`` is not installed."""
    absent = missing(modules)
    if absent:
        raise MissingExtra(f"{what} {needs_line(absent)}")


def needs(*modules: str) -> Callable:
    """Decorator: :func:`require` ``modules`` before the function runs (named after it)."""

    def decorate(function: Callable) -> Callable:
        what = f"{function.__module__}.{function.__qualname__}"

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            require(*modules, what=what)
            return function(*args, **kwargs)

        return wrapper

    return decorate
