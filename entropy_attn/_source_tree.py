"""Importing ``entropy_attn.kernels`` from a source checkout.

``kernels/`` is a top-level folder of the repository that installs as ``entropy_attn.kernels``
(``[tool.setuptools.package-dir]`` in pyproject.toml). It has no ``__init__.py`` on purpose:
``python -m pytest`` and scripts run from the repository root put the root first on ``sys.path``,
and a regular package named ``kernels`` there would shadow Hugging Face's ``kernels`` package,
which transformers 5.x imports. A folder without ``__init__.py`` is only a namespace candidate,
so the installed ``kernels`` wins. Wheels carry ``entropy_attn/kernels/`` as a namespace
subpackage, which Python finds by itself; a source checkout on ``PYTHONPATH`` and an editable
install (whose finder maps only regular packages) need :func:`install_kernels_finder`.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from pathlib import Path

KERNEL_MODULE = "attention_fwd.py"


class _SourceKernelsFinder(importlib.abc.MetaPathFinder):
    """Finds ``entropy_attn.kernels`` in a source checkout's top-level ``kernels/`` folder.

    Last on ``sys.meta_path``, so it answers only when nothing else does (a wheel's
    ``entropy_attn/kernels/`` is found first). The spec is a namespace package: its modules are
    the files in the folder.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "entropy_attn.kernels":
            return None
        spec = importlib.machinery.ModuleSpec(fullname, None, is_package=True)
        spec.submodule_search_locations = [str(self.folder)]
        return spec


def install_kernels_finder() -> None:
    """Put a :class:`_SourceKernelsFinder` last on ``sys.meta_path`` when in a source checkout."""
    folder = Path(__file__).resolve().parent.parent / "kernels"
    # attention_fwd.py tells this project's kernels/ apart from any other folder of that name.
    if (folder / KERNEL_MODULE).is_file() and not any(
        isinstance(finder, _SourceKernelsFinder) for finder in sys.meta_path
    ):
        sys.meta_path.append(_SourceKernelsFinder(folder))
