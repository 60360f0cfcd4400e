"""Importing ``entropy_attn`` from a source checkout that was not installed.

``kernels/`` is a top-level folder of the repository that installs as ``entropy_attn.kernels``
(``[tool.setuptools.package-dir]`` in pyproject.toml). With ``PYTHONPATH`` pointing at a checkout
instead, nothing maps it; :func:`install_kernels_finder` adds a finder that does.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path


class _SourceKernelsFinder(importlib.abc.MetaPathFinder):
    """Finds ``entropy_attn.kernels`` in a source checkout's top-level ``kernels/`` folder.

    An installed package (wheel or ``pip install -e .``) maps ``kernels/`` to
    ``entropy_attn.kernels`` itself; this finder, last on ``sys.meta_path``, only answers when
    nothing else does, e.g. ``PYTHONPATH=/path/to/entropy-attn python ...`` without installing.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "entropy_attn.kernels":
            return None
        return importlib.util.spec_from_file_location(
            fullname, self.folder / "__init__.py", submodule_search_locations=[str(self.folder)]
        )


def install_kernels_finder() -> None:
    """Put a :class:`_SourceKernelsFinder` last on ``sys.meta_path`` when in a source checkout."""
    folder = Path(__file__).resolve().parent.parent / "kernels"
    # attention_fwd.py tells this project's kernels/ apart from any other folder of that name.
    if (folder / "attention_fwd.py").is_file() and not any(
        isinstance(finder, _SourceKernelsFinder) for finder in sys.meta_path
    ):
        sys.meta_path.append(_SourceKernelsFinder(folder))
