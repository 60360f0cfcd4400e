"""The package imports the same way installed and from a bare source checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from entropy_attn._source_tree import _SourceKernelsFinder

REPO = Path(__file__).resolve().parent.parent


def test_source_finder_maps_only_the_kernels_package() -> None:
    finder = _SourceKernelsFinder(REPO / "kernels")
    spec = finder.find_spec("entropy_attn.kernels")
    assert spec is not None
    assert spec.loader is None  # a namespace package: the folder has no __init__.py
    assert spec.submodule_search_locations == [str(REPO / "kernels")]
    assert finder.find_spec("kernels") is None
    assert finder.find_spec("entropy_attn.other") is None


def test_kernels_import_from_a_checkout_that_was_not_installed(tmp_path: Path) -> None:
    """What the GPU machine does: PYTHONPATH=checkout, no ``pip install``. Every finder that an
    editable install put on ``sys.meta_path`` (setuptools puts the class itself there) is dropped
    first, so only the checkout can answer, wherever the package is installed from."""
    code = (
        "import sys\n"
        "def name(f): return getattr(f, '__name__', type(f).__name__)\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'Editable' not in name(f)]\n"
        "import entropy_attn\n"
        "import entropy_attn.kernels.attention_fwd as k\n"
        "from entropy_attn.kernels.attention_fwd import head_dim_split\n"
        "print(entropy_attn.__file__)\n"
        "print(k.__file__)\n"
        "print(head_dim_split(80))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "TRITON_INTERPRET": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    package, kernels, split = result.stdout.split("\n")[:3]
    assert Path(package) == REPO / "entropy_attn" / "__init__.py"
    assert Path(kernels) == REPO / "kernels" / "attention_fwd.py"
    assert split == "(64, 16)"


def test_repository_root_does_not_shadow_hugging_face_kernels() -> None:
    """transformers 5.x imports Hugging Face's ``kernels`` package (``from kernels import
    CUDAProperties``). ``python -m pytest``, scripts saved in the root and ``python -m ...`` from
    the root put the repository root first on ``sys.path``, where this project's ``kernels/``
    folder lives: it must not be found as ``kernels`` before the installed package."""
    pytest.importorskip("kernels")
    code = (
        "import kernels\n"
        "from kernels import CUDAProperties\n"
        "import transformers.integrations.hub_kernels\n"
        "import diffusers.loaders.peft\n"
        "import entropy_attn.kernels.attention_fwd\n"
        "print(kernels.__file__)\n"
    )
    # `python -c` from the root puts '' (the working directory) first on sys.path, as `python -m`.
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip().splitlines()[-1]).parent != REPO / "kernels"


def test_every_subpackage_is_in_the_wheel_list() -> None:
    """pyproject lists the packages a wheel holds (setuptools finds none by itself here): every
    folder of entropy_attn/ with an ``__init__.py`` must be listed, and nothing else."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = set(project["tool"]["setuptools"]["packages"])
    folders = {
        ".".join(path.parent.relative_to(REPO).parts)
        for path in (REPO / "entropy_attn").rglob("__init__.py")
    }
    assert listed == folders | {"entropy_attn.kernels"}, sorted(listed ^ folders)
